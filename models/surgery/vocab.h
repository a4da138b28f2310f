// Vocabulary extension: new tokens added to a Hugging Face Llama folder's tokenizer.json as added
// tokens (special or not), with rows for them appended to the embedding and, when untied, to the
// head. Existing tokens keep their ids and their rows bit for bit, so every old token's logit is
// unchanged; the new rows are the mean of the old ones (HF's default for resized embeddings:
// with a mean head row a new token's logit is the mean of the old logits) or zeros.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tensor/io/json.h"
#include "tensor/tensor.h"

namespace lamina::surgery {

enum class RowInit { mean, zeros };
RowInit row_init_from_name(const std::string& name);  // "mean" or "zeros"; anything else is an error

struct VocabularyOptions {
  bool special = false;           // the new tokens are special (skipped when decoding with skip_special)
  RowInit init = RowInit::mean;
  int64_t pad_to_multiple = 1;    // config.json's vocab_size rounded up to a multiple of this
  uint64_t max_shard_bytes = uint64_t(5) << 30;
};

// The tokenizer.json document with `tokens` added. Each new token gets the next free id: ids
// count on from the model's vocabulary (its largest id + 1), skipping ids that added tokens
// already hold. A token already in the vocabulary or among the added tokens is skipped (its id
// is kept, as transformers' add_tokens does) and listed in `skipped`; an empty token or one
// given twice is an error. `ids` gets the new tokens' ids, in order.
json::Value add_tokens_to_tokenizer_json(const json::Value& tokenizer, const std::vector<std::string>& tokens,
                                         bool special, std::vector<int32_t>& ids, std::vector<std::string>& skipped,
                                         const std::string& source = "tokenizer.json");

// `matrix` [V, d] grown to [rows, d] (rows >= V): the first V rows copied byte for byte, the
// others `init` (the mean of the old rows, computed in f64, rounded once to the matrix's dtype;
// or zeros). Old rows listed in `reinitialised` (padding rows that new tokens take) get `init`
// too and are left out of the mean.
Tensor grow_rows(const Tensor& matrix, int64_t rows, RowInit init, const std::vector<int64_t>& reinitialised = {});

struct VocabularySummary {
  int64_t old_vocab_size = 0, new_vocab_size = 0;  // config.json's
  std::vector<std::string> added;                  // the tokens added, in id order
  std::vector<int32_t> added_ids;
  std::vector<std::string> skipped;                // already there
  std::vector<std::string> resized;                // the tensors grown
};

// Reads the full-precision Llama folder `model_directory` and writes into `out_directory` (which
// must exist): tokenizer.json with the new tokens, tokenizer_config.json (when the source has
// one) with them in added_tokens_decoder, config.json with vocab_size updated (every other field
// kept), and the weights with model.embed_tokens.weight and lm_head.weight (when present) grown
// to the new vocab_size. Other companion files are the caller's to copy. Adding no new token at
// all (every one skipped) is an error, so that nothing is written for nothing.
VocabularySummary extend_vocabulary(const std::string& model_directory, const std::string& out_directory,
                                    const std::vector<std::string>& tokens, const VocabularyOptions& options = {});

}  // namespace lamina::surgery
