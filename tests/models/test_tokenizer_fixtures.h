// Tokenizers for the tests: the real Llama-3 one from the shared assets (loaded once; null
// with a visible skip message when the assets are absent), and the tiny synthetic ones of
// test_tokenizer_tiny.h.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "helpers.h"
#include "models/tokenizer/tokenizer.h"
#include "test_tokenizer_tiny.h"

namespace lamina::testing {

inline const tokenizer::Tokenizer* llama3_tokenizer() {
  const std::filesystem::path dir = assets_dir("llama3-tokenizer");
  if (dir.empty()) return nullptr;
  static const std::unique_ptr<tokenizer::Tokenizer> loaded =
      std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load((dir / "tokenizer.json").string()));
  return loaded.get();
}

inline std::string llama3_tokenizer_dir() { return (std::filesystem::path(LAMINA_ASSETS_DIR) / "llama3-tokenizer").string(); }

}  // namespace lamina::testing
