// Training data: examples from JSONL files or token shards, and the loader that batches them.
//
// An Example is token ids plus a loss mask: mask[i] = 1 when the model should learn to
// predict ids[i] from what comes before it (completion and assistant tokens; every token of
// plain text). Batches shift by one: row position t holds ids[t] as input and ids[t + 1] as
// target (or -100 where the mask is 0).
//
// Packing puts several examples back to back in one row; each keeps its own positions
// (restarting at 0) and attends only to itself (an additive block-diagonal mask), so a packed
// batch computes exactly the per-example losses of running them one by one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/tokenizer/chat.h"
#include "tensor/io/json.h"
#include "tensor/tensor.h"

namespace lamina::train {

struct Example {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // same length as ids
};

enum class DataFormat { auto_detect, text, prompt_completion, chat };
DataFormat data_format_from_name(const std::string& name);  // "auto", "text", "prompt-completion", "chat"

struct JsonlOptions {
  DataFormat format = DataFormat::auto_detect;
  bool skip_malformed = false;  // count and skip bad lines instead of failing on the first
  bool add_bos = true;          // text / prompt-completion: start with <|begin_of_text|>
  bool add_eos = true;          // text / prompt-completion: end with <|end_of_text|> (learned)
  tokenizer::ChatOptions chat;  // chat: the format (add_generation_prompt is ignored)
};

struct JsonlStats {
  int64_t lines = 0;     // non-empty lines read
  int64_t examples = 0;
  int64_t skipped = 0;
  std::string first_skipped;  // the error of the first skipped line
};

// Reads `path` (one JSON object per line: {"text"}, {"prompt", "completion"} or {"messages"}).
// A malformed line is an error naming the file and line, unless skip_malformed.
std::vector<Example> read_jsonl(const std::string& path, const tokenizer::Tokenizer& tokenizer,
                                const JsonlOptions& options = {}, JsonlStats* stats = nullptr);
// One line's example (exposed for tests and for callers with their own sources).
Example example_from_json(const json::Value& record, const tokenizer::Tokenizer& tokenizer, const JsonlOptions& options);

// Token shards for large pretraining corpora: an 16-byte header ("LMTOKENS", u32 bytes per
// token (2 or 4), u32 reserved) then little-endian token ids. Documents are separated by the
// caller's EOS id. The reader cuts the stream into examples of at most `max_tokens` tokens.
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int bytes_per_token = 4);
std::vector<Example> read_token_shard(const std::string& path, int64_t max_tokens);

// Splits long examples into pieces of at most `max_tokens` (consecutive, non-overlapping).
std::vector<Example> chunk_examples(std::vector<Example> examples, int64_t max_tokens);

// Moves a seeded random `fraction` of the examples (at least one when fraction > 0 and there
// are two or more) into the returned validation set.
std::vector<Example> split_validation(std::vector<Example>& examples, double fraction, uint64_t seed);

struct Batch {
  Tensor ids;        // [B, T] i64
  Tensor targets;    // [B, T] i64, -100 where nothing is predicted
  Tensor positions;  // [B, T] i64, restarting at each packed example
  Tensor mask;       // [B, 1, T, T] additive (packed rows), else undefined (plain causal)
  int64_t target_tokens = 0;
};

struct LoaderOptions {
  int64_t batch_size = 8;  // rows per batch
  int64_t seq_len = 256;   // tokens per row
  bool pack = true;
  bool shuffle = true;
  uint64_t seed = 0;
  int32_t pad_id = 0;  // any id: padding is masked out of the loss
};

// Cycles through the examples epoch after epoch (reshuffled per epoch from the seed), so the
// stream of batches depends only on the seed and the cursor, which checkpoints save.
class DataLoader {
 public:
  DataLoader(std::vector<Example> examples, LoaderOptions options);

  Batch next();
  int64_t epoch() const { return epoch_; }
  int64_t examples_per_epoch() const { return int64_t(examples_.size()); }
  const LoaderOptions& options() const { return options_; }

  json::Value cursor() const;  // epoch and position within it
  void restore(const json::Value& cursor);

  // Every example once, in order, as batches (validation): nothing is shuffled or cycled.
  std::vector<Batch> all_batches() const;

 private:
  void start_epoch();
  Batch assemble(const std::vector<const Example*>& rows_content) const;
  std::vector<std::vector<const Example*>> plan_rows(size_t& position, int64_t rows) const;

  std::vector<Example> examples_;
  LoaderOptions options_;
  std::vector<size_t> order_;
  int64_t epoch_ = 0;
  size_t position_ = 0;
};

// Builds a batch from explicit rows (each row: the examples packed into it, in order).
Batch make_batch(const std::vector<std::vector<const Example*>>& rows, int64_t seq_len, int32_t pad_id);

}  // namespace lamina::train
