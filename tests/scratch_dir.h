// A folder of a test's own under the system's temporary folder, empty at the start and removed
// at the end. The process id in its name keeps suites that run at the same time (a suite and its
// ASan twin under `ctest -j`) out of each other's folders.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

namespace lamina::testing {

struct ScratchDir {
  std::filesystem::path path;
  explicit ScratchDir(const std::string& name)
      : path(std::filesystem::temp_directory_path() / ("lamina-" + name + "-" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() { std::filesystem::remove_all(path); }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace lamina::testing
