// Running the real `lamina` binary on a tiny model: the fixtures of the CLI training tests
// (test_cli_train.cpp, test_cli_faults.cpp). Training runs as a separate process, never a
// fork of the multithreaded test process.
#pragma once

#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "models/llama/config.h"
#include "models/tokenizer/builder.h"

namespace lamina::testing {

struct Run {
  int status = -1;     // the exit status; 128 + N when killed by signal N
  std::string output;  // stdout and stderr
};

// Runs `lamina <arguments>` through the shell; `environment` ("NAME=value ...") prefixes it.
inline Run run_lamina(const std::string& arguments, const std::string& environment = "") {
  const std::string command = environment + (environment.empty() ? "" : " ") + std::string(LAMINA_CLI_PATH) + " " +
                              arguments + " 2>&1";
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
  return run;
}

// A folder with a tiny model config, the byte-level tokenizer and some data.
struct Workspace {
  std::filesystem::path path;
  explicit Workspace(const std::string& name = "lamina-cli-train")
      : path(std::filesystem::temp_directory_path() / (name + "-" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
    const json::Value tokenizer = tokenizer::byte_level_tokenizer_json();
    std::ofstream(path / "tokenizer.json") << tokenizer.dump();
    llama::LlamaConfig config;
    config.vocab_size = tokenizer::byte_level_tokenizer().vocab_size();
    config.hidden_size = 16;
    config.intermediate_size = 32;
    config.num_hidden_layers = 1;
    config.num_attention_heads = 2;
    config.num_key_value_heads = 1;
    config.head_dim = 8;
    config.bos_token_id = 256;
    config.eos_token_ids = {257};
    config.dtype = DType::f32;
    std::ofstream(path / "config.json") << config.to_json().dump();
    std::ofstream text(path / "text.jsonl");
    for (int i = 0; i < 30; ++i) text << R"({"text": "the number )" << i << R"( comes after )" << i - 1 << R"(."})" << "\n";
    std::ofstream chat(path / "chat.jsonl");
    for (int i = 0; i < 12; ++i)
      chat << R"({"messages": [{"role": "user", "content": "next after )" << i << R"("}, {"role": "assistant", "content": ")" << i + 1
           << R"("}]})" << "\n";
  }
  ~Workspace() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace lamina::testing
