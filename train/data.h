// Training data: examples from JSONL files or token shards, and the loader that batches them.
//
// An Example is token ids plus a loss mask: mask[i] = 1 when the model should learn to
// predict ids[i] from what comes before it (completion and assistant tokens; every token of
// plain text). Batches shift by one: row position t holds ids[t] as input and ids[t + 1] as
// target (or -100 where the mask is 0).
//
// Packing puts several examples back to back in one row; each keeps its own positions
// (restarting at 0) and attends only to itself (Batch::document_ids), so a packed
// batch computes exactly the per-example losses of running them one by one.
#pragma once

#include <cstdint>
#include <functional>
#include <istream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/chat.h"
#include "tensor/io/json.h"
#include "tensor/tensor.h"

namespace lamina::train {

struct Example {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;  // same length as ids
};

enum class DataFormat { auto_detect, text, prompt_completion, chat, sharegpt };
// "auto", "text", "prompt-completion", "chat" or "sharegpt".
DataFormat data_format_from_name(const std::string& name);

struct JsonlOptions {
  DataFormat format = DataFormat::auto_detect;
  bool skip_malformed = false;  // count and skip bad lines instead of failing on the first
  bool add_bos = true;          // text / prompt-completion: start with <|begin_of_text|>
  bool add_eos = true;          // text / prompt-completion: end with <|end_of_text|> (learned)
  tokenizer::ChatOptions chat;  // chat / sharegpt: the format (add_generation_prompt is ignored)
  // Called a few times a second while reading and once at the end; bytes_total is -1 when the
  // size is unknown (a pipe).
  std::function<void(int64_t bytes_done, int64_t bytes_total)> on_progress;
};

struct JsonlStats {
  int64_t lines = 0;     // non-empty lines read
  int64_t examples = 0;
  int64_t skipped = 0;
  std::string first_skipped;  // the error of the first skipped line
  // Examples read per layout, by --format's name ("chat", "text", ...): a file may mix
  // layouts (chats with plain text to keep a model from forgetting it), which the CLI reports.
  std::map<std::string, int64_t> layouts;
};

// Reads `path`, one JSON object per line, in one of these layouts (auto-detected per line by
// its keys unless options.format names one; a line with the keys of two layouts, "messages"
// and "text" say, is ambiguous, and malformed):
//   {"messages": [{"role", "content"}, ...]}         chat: the assistant's replies are learned
//   {"conversations": [{"from", "value"}, ...]}      ShareGPT: from human -> user, gpt ->
//                                                    assistant, system -> system
//   {"prompt", "completion"}                         the completion (and EOS) is learned
//   {"text"}                                         every token is learned (an empty or
//                                                    whitespace-only text is malformed)
// Chat roles are those of the chat format (chat_roles: system, user, assistant; Llama-3.1 adds
// ipython, and "tool" is read as ipython, like HF's template). Other roles (a misspelling,
// "Assistant", ShareGPT's tool-call turns "function_call"/"observation") are an error: a turn
// the format does not know would silently teach nothing. A line that gives no target token (a
// conversation without an assistant reply, an empty completion without EOS) is malformed too.
// A malformed line is an error naming the file and line, unless skip_malformed; when every
// line was skipped, reading fails and says why. A UTF-8 byte-order mark before the first line
// is skipped.
std::vector<Example> read_jsonl(const std::string& path, const tokenizer::Tokenizer& tokenizer,
                                const JsonlOptions& options = {}, JsonlStats* stats = nullptr);
// The same from a stream; `name` stands for the file in errors.
std::vector<Example> read_jsonl(std::istream& in, const std::string& name, const tokenizer::Tokenizer& tokenizer,
                                const JsonlOptions& options = {}, JsonlStats* stats = nullptr);
// One line's example (exposed for tests and for callers with their own sources).
Example example_from_json(const json::Value& record, const tokenizer::Tokenizer& tokenizer, const JsonlOptions& options);

// The tokens an example learns: mask[i] for i >= 1 (the first id is never a target).
int64_t target_count(const Example& example);

// Token shards for large pretraining corpora: an 16-byte header ("LMTOKENS", u32 bytes per
// token (2 or 4), u32 reserved) then little-endian token ids. Documents are separated by the
// caller's EOS id. The reader cuts the stream into examples of at most `max_tokens` tokens;
// with vocab_size > 0 an id outside [0, vocab_size) is an error naming the file and place.
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int bytes_per_token = 4);
// Whether the file at `path` starts with a token shard's LMTOKENS header (whatever its name).
bool starts_with_shard_header(const std::string& path);
std::vector<Example> read_token_shard(const std::string& path, int64_t max_tokens, int64_t vocab_size = 0);
// The same from the shard's bytes; `name` stands for the file in errors.
std::vector<Example> parse_token_shard(std::string_view bytes, const std::string& name, int64_t max_tokens,
                                       int64_t vocab_size = 0);

// Splits long examples into pieces of at most `max_tokens` (consecutive, non-overlapping).
std::vector<Example> chunk_examples(std::vector<Example> examples, int64_t max_tokens);

// What fit_examples did to the examples longer than its limit.
struct FitStats {
  int64_t max_tokens = 0;
  int64_t too_long = 0;           // examples longer than max_tokens
  int64_t chunked = 0;            // plain text, cut into pieces
  int64_t pieces = 0;             // the pieces those became
  int64_t truncated = 0;          // masked, cut to their first max_tokens
  int64_t targets_truncated = 0;  // target tokens the truncations removed
  int64_t dropped = 0;            // masked, no target within the first max_tokens

  // One line for the user ("12 examples longer than 257 tokens: 9 truncated ..."), empty
  // when nothing was too long.
  std::string summary() const;
};

// Fits every example into `max_tokens` (a row: seq_len + 1) while keeping it meaningful.
// Plain text (every token after the first learned) is cut into consecutive pieces, as
// pretraining does. An example with a loss mask (a prompt, a chat) would lose its question if
// cut: it keeps its head, up to max_tokens, when at least one target token remains there, and
// is dropped otherwise (its prompt alone fills the row). Counted in `stats`.
std::vector<Example> fit_examples(std::vector<Example> examples, int64_t max_tokens, FitStats* stats = nullptr);

// Moves a seeded random `fraction` of the examples (at least one when fraction > 0 and there
// are two or more) into the returned validation set.
std::vector<Example> split_validation(std::vector<Example>& examples, double fraction, uint64_t seed);

struct Batch {
  Tensor ids;           // [B, T] i64
  Tensor targets;       // [B, T] i64, -100 where nothing is predicted
  Tensor positions;     // [B, T] i64, restarting at each packed example
  Tensor document_ids;  // [B, T] i64: each slot's example in its row (packed rows; -1 padding), else undefined
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
// stream of batches depends only on the seed and the cursor, which checkpoints save. Every
// example must fit a row (seq_len + 1 ids; fit_examples does that): a longer one is an error
// rather than silently cut. Examples of fewer than two ids (nothing to predict) are left out.
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
