// Byte-level tokenizers built in code, for small models that do not use Llama-3's 128K
// vocabulary (the demo, tests): ids 0..255 are the 256 bytes, then one token per merge (in
// merge order), then the added tokens (by default the Llama-3 chat's special tokens). The
// pre-tokenizer is Llama-3's, so encoding, decoding and the chat format work unchanged.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "models/tokenizer/tokenizer.h"
#include "tensor/io/json.h"

namespace lamina::tokenizer {

// The special tokens the Llama-3 chat format needs.
std::vector<std::string> llama3_chat_special_tokens();

// A tokenizer.json document: merges are raw-byte pairs in rank order (each adds the token
// left + right); `special_tokens` are added tokens marked special.
json::Value byte_level_tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges = {},
                                      const std::vector<std::string>& special_tokens = llama3_chat_special_tokens());

Tokenizer byte_level_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges = {},
                               const std::vector<std::string>& special_tokens = llama3_chat_special_tokens());

}  // namespace lamina::tokenizer
