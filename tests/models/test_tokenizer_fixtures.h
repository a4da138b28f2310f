// Tokenizers for the tests: the real Llama-3 one from the shared assets (loaded once; only for
// cases of the "assets" suite, see testing::assets_dir), and the tiny synthetic ones of
// test_tokenizer_tiny.h.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "helpers.h"
#include "models/tokenizer/tokenizer.h"
#include "test_tokenizer_tiny.h"

namespace lamina::testing {

inline const tokenizer::Tokenizer& llama3_tokenizer() {
  static const std::unique_ptr<tokenizer::Tokenizer> loaded =
      std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load((assets_dir("llama3-tokenizer") / "tokenizer.json").string()));
  return *loaded;
}

// The merge loop's ids for one word: what the faster paths (word cache, long words) must equal.
inline std::vector<int32_t> merged(const tokenizer::BpeModel& bpe, std::string_view word) {
  std::vector<int32_t> ids;
  bpe.merge_word(word, ids);
  return ids;
}

}  // namespace lamina::testing
