// Running the real `lamina` binary, the way every CLI test does: as a separate process through
// the shell (never a fork of the multithreaded test process), collecting what it printed and
// how it ended.
#pragma once

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "tensor/io/json.h"

namespace lamina::testing {

struct Run {
  int status = -1;     // the exit status; 128 + N when killed by signal N, 124 when the timeout ended it
  std::string output;  // stdout and stderr together
};

struct RunOptions {
  std::string environment = "";                     // "NAME=value ..." set for the command
  std::optional<std::string> input = std::nullopt;  // its stdin; without it, the command shares the test's
  int timeout_seconds = 0;                          // when positive, the command is ended after this long
  int64_t address_space_kb = 0;                     // when positive, the command's address space limit (ulimit -v)
};

// Runs `lamina <arguments>` and waits for it to end.
inline Run run_lamina(const std::string& arguments, const RunOptions& options = {}) {
  std::string command;
  if (options.address_space_kb > 0) command += "ulimit -v " + std::to_string(options.address_space_kb) + "; ";
  if (!options.environment.empty()) command += options.environment + " ";
  if (options.timeout_seconds > 0) command += "timeout " + std::to_string(options.timeout_seconds) + " ";
  command += std::string(LAMINA_CLI_PATH) + " " + arguments + " 2>&1";
  // popen gives one direction only, so the input goes through a file.
  const std::filesystem::path input_path =
      std::filesystem::temp_directory_path() / ("lamina-cli-input-" + std::to_string(::getpid()));
  if (options.input) {
    std::ofstream(input_path, std::ios::binary) << *options.input;
    command += " < " + input_path.string();
  }
  Run run;
  std::FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  size_t read;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.output.append(buffer, read);
  const int status = pclose(pipe);
  // The shell reports a child killed by a signal as exit status 128 + signal (or dies of it
  // itself when it ran the command in its own place).
  if (WIFEXITED(status)) run.status = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) run.status = 128 + WTERMSIG(status);
  if (options.input) std::filesystem::remove(input_path);
  return run;
}

// The last non-empty line of a command's output (what `--output ids` and most reports print last).
inline std::string last_line(const std::string& output) {
  std::istringstream in(output);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

// The JSON report a command prints as its last line that starts with '{' (merge, mutate, expand,
// lora extract, ...).
inline json::Value report_of(const std::string& output) {
  const size_t start = output.rfind("\n{");
  const std::string line = output.substr(start == std::string::npos ? 0 : start + 1);
  return json::parse(line.substr(0, line.find('\n')), "lamina output");
}

// The token ids printed by `--output ids` (or the ids in any text of whitespace-separated
// integers), in order, up to the first thing that is not one.
inline std::vector<int64_t> ids_of(const std::string& text) {
  std::istringstream in(text);
  std::vector<int64_t> ids;
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

// A file's bytes (empty when it cannot be read): for comparing what two runs wrote.
inline std::string file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// The names in a folder, sorted: for checking that a command left nothing else behind.
inline std::vector<std::string> folder_entries(const std::filesystem::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace lamina::testing
