// An output folder built beside its destination (OUT.partial-PID) and moved into place only when
// complete, so that a failed or killed command never leaves a half-written OUT: what `convert`,
// `quantize` and `lora merge` write through.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace lamina::cli {

class StagedFolder {
 public:
  explicit StagedFolder(const std::filesystem::path& destination)
      : destination_(destination), path_(destination.string() + ".partial-" + std::to_string(::getpid())) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~StagedFolder() {
    std::error_code ignored;
    if (!committed_) std::filesystem::remove_all(path_, ignored);
  }
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // Moves the folder to its destination. An existing destination (--overwrite) steps aside
  // first (OUT.old-PID) and is removed only once the new one is in place.
  void commit() {
    std::filesystem::path old;
    if (std::filesystem::exists(destination_)) {
      old = destination_.string() + ".old-" + std::to_string(::getpid());
      std::filesystem::remove_all(old);
      std::filesystem::rename(destination_, old);
    }
    std::filesystem::rename(path_, destination_);
    committed_ = true;
    if (!old.empty()) std::filesystem::remove_all(old);
  }

 private:
  std::filesystem::path destination_, path_;
  bool committed_ = false;
};

}  // namespace lamina::cli
