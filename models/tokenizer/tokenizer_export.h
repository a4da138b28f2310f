// Moving a byte-level BPE tokenizer between Hugging Face files and GGUF metadata, for
// `lamina convert`:
//   HF -> GGUF: tokenizer.json (+ tokenizer_config.json) to tokenizer.ggml.* and
//               tokenizer.chat_template, as llama.cpp's converter writes them;
//   GGUF -> HF: tokenizer.ggml.* to a tokenizer.json that lamina's Tokenizer::load and HF
//               `tokenizers` both read, and a tokenizer_config.json.
// Both directions keep the ids: a text encodes to the same ids before and after (bytes the
// vocabulary lacks are dropped on both sides, as HF's BPE does without an unknown token).
//
// Token types (llama.cpp's): vocabulary entries are 1 (normal), special added tokens 3
// (control), other added tokens 4 (user-defined), ids the tokenizer does not fill up to the
// model's vocabulary "[PAD<id>]" with 5 (unused). The pre-tokenizer is named by
// tokenizer.ggml.pre: "llama-bpe" (Llama-3's split), "gpt2", "smollm" (digits one by one, then
// GPT-2's split). tokenizer.json's ignore_merges has no GGUF key; the tokenizer.json written
// from GGUF says false, which is how lamina's GGUF reader encodes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/io/gguf.h"
#include "tensor/io/json.h"

namespace lamina::tokenizer {

// Ids from the model's config.json, used when tokenizer_config.json does not name the token.
struct ConfigTokenIds {
  std::optional<int64_t> bos, pad;
  std::vector<int64_t> eos;  // the first is eos_token_id; another one becomes eot_token_id
};

// The tokenizer.* metadata for the tokenizer.json in `folder` (and its tokenizer_config.json,
// when there is one), with token ids up to `vocab_size` (the model's embedding rows). The file
// is checked by Tokenizer::from_json first, so a tokenizer lamina cannot encode with is an
// error, not a file that encodes differently.
std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_metadata(const std::string& folder, int64_t vocab_size,
                                                                         const ConfigTokenIds& config_ids);

// Whether the file has a tokenizer (tokenizer.ggml.tokens).
bool gguf_has_tokenizer(const gguf::File& file);
// The tokenizer.json of a GGUF file's tokenizer ("gpt2" model only; errors name the key).
json::Value tokenizer_json_from_gguf(const gguf::File& file);
// Its tokenizer_config.json: bos/eos/pad/unk tokens by content, add_bos_token, chat_template.
json::Value tokenizer_config_from_gguf(const gguf::File& file);

}  // namespace lamina::tokenizer
