// A tiny model's config, its tokenizer and some data in a scratch folder: the fixture of the CLI
// training tests (test_cli_train.cpp, test_cli_faults.cpp), which run the real `lamina` binary
// on it (cli_runner.h).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

namespace lamina::testing {

// A random byte-level model (seed, weights drawn with `initializer_range`) saved with its
// tokenizer.json in `folder`: the starting model of the CLI tests that fine-tune or align one.
inline void save_byte_level_model(const std::string& folder, uint64_t seed, double initializer_range) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.initializer_range = initializer_range;
  save_byte_level_model(folder, seed, config);
}

// config.json (the byte-level preset), tokenizer.json, text.jsonl (30 lines) and chat.jsonl
// (12 one-turn conversations).
struct Workspace : ScratchDir {
  explicit Workspace(const std::string& name = "cli-train") : ScratchDir(name) {
    std::ofstream(path / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
    std::ofstream(path / "config.json") << byte_level_llama_config().to_json().dump();
    std::ofstream text(path / "text.jsonl");
    for (int i = 0; i < 30; ++i) text << R"({"text": "the number )" << i << R"( comes after )" << i - 1 << R"(."})" << "\n";
    std::ofstream chat(path / "chat.jsonl");
    for (int i = 0; i < 12; ++i)
      chat << R"({"messages": [{"role": "user", "content": "next after )" << i << R"("}, {"role": "assistant", "content": ")" << i + 1
           << R"("}]})" << "\n";
  }
  // The start of a `lamina train pretrain` on this folder's config and tokenizer; the caller adds
  // the data, the output folder and the rest.
  std::string pretrain_command() const {
    return "train pretrain --config " + (*this / "config.json") + " --tokenizer " + (*this / "tokenizer.json");
  }
};

}  // namespace lamina::testing
