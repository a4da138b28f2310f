// Writing files so that a crash or an error never leaves a half-written file behind: the
// bytes go to a temporary file in the same folder, which is flushed and renamed over the
// target only when complete.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace lamina::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // opens "<path>.tmp-<pid>" for writing
  ~AtomicFile();                          // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view text) { write(text.data(), text.size()); }
  // Flushes, syncs and renames the temporary file to the target path.
  void commit();

 private:
  std::string path_, temporary_path_;
  std::FILE* file_ = nullptr;
  bool committed_ = false;
};

// Writes a whole text file atomically.
void write_file_atomically(const std::string& path, std::string_view contents);

}  // namespace lamina::io
