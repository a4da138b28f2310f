#include "tensor/io/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tensor/error.h"

namespace lamina::io {

AtomicFile::AtomicFile(std::string path)
    : path_(std::move(path)), temporary_path_(path_ + ".tmp-" + std::to_string(::getpid())) {
  file_ = std::fopen(temporary_path_.c_str(), "wb");
  LAMINA_CHECK(file_ != nullptr, "cannot write ", path_, ": ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (file_ != nullptr) std::fclose(file_);
  if (!committed_) std::remove(temporary_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  LAMINA_CHECK(file_ != nullptr && !committed_, "write to ", path_, " after it was committed");
  if (bytes == 0) return;
  LAMINA_CHECK(std::fwrite(data, 1, bytes, file_) == bytes, "cannot write ", path_, ": ", std::strerror(errno));
}

void AtomicFile::commit() {
  LAMINA_CHECK(std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0, "cannot write ", path_, ": ",
               std::strerror(errno));
  const int closed = std::fclose(file_);
  file_ = nullptr;
  LAMINA_CHECK(closed == 0, "cannot write ", path_, ": ", std::strerror(errno));
  LAMINA_CHECK(std::rename(temporary_path_.c_str(), path_.c_str()) == 0, "cannot rename ", temporary_path_, " to ",
               path_, ": ", std::strerror(errno));
  committed_ = true;
}

void write_file_atomically(const std::string& path, std::string_view contents) {
  AtomicFile file(path);
  file.write(contents);
  file.commit();
}

}  // namespace lamina::io
