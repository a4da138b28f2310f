// Preference data in TRL's dataset formats, read from JSONL and tokenised the way TRL's trainers
// do, for `lamina train preference|dpo|kto|...` and the online loops.
//
// Line layouts (TRL's names), detected from each line's keys; one file holds one layout:
//   paired           {"prompt", "chosen", "rejected"}    DPO and the other pairwise losses
//   implicit prompt  {"chosen", "rejected"}              the prompt is their shared beginning
//   unpaired         {"prompt", "completion", "label"}   KTO, BCO (label: true = desirable)
//   prompt-only      {"prompt"}                          online methods (GRPO, Online DPO, ...)
// Each part is text ("standard") or a list of {"role", "content"} messages ("conversational");
// the prompt is the conversation so far, a completion the message(s) answering it, starting with
// an assistant turn. Other keys on a line (ids, scores, sources) are ignored. As TRL's
// maybe_extract_prompt does, a text "prompt" beside conversational "chosen"/"rejected" (the
// layout of UltraFeedback-binarized, whose chosen/rejected hold the whole conversation) is
// ignored and the prompt extracted from them.
//
// Tokenisation follows TRL 1.x (v1.9, DPOTrainer/KTOTrainer._prepare_dataset):
//   conversational: prompt ids = the prompt rendered with the chat format and its generation
//     prompt; the whole conversation (prompt + completion, no generation prompt) is rendered,
//     and the completion is what follows the prompt's length in it: the assistant turn(s) with
//     their end-of-turn token (ChatML: also the newline after <|im_end|>, as in TRL).
//   text: prompt ids = BOS (when the tokenizer adds one) + the prompt; the whole is BOS + the
//     prompt and completion encoded together + EOS (TRL appends the EOS token's text unless the
//     completion already ends with it), and the completion is what follows the prompt's length.
// So prompt + completion is the whole conversation's rendering whenever the prompt's ids are a
// prefix of it. When they are not (a token spanning the boundary, e.g. a completion that starts
// with whitespace a BPE merge joins to the prompt's last word), TRL warns and keeps the same
// slice; so does lamina, counting those lines in PreferenceDataStats::boundary_mismatches.
// Deviation, deliberate: lamina never reads special-token text inside user text as a control
// token (a completion cannot forge <|eot_id|>); only a trailing EOS text is recognised, as
// TRL's "already ends with EOS" check does.
//
// Truncation. TRL 1.x has one limit, max_length, applied per row (prompt + completion) when the
// batch is made, keeping the start (default) or, with the deprecated "keep_end", the end; with
// keep_start it drops, at reading, every example whose prompt alone has max_length tokens or
// more (it would train nothing). TRL <= 0.28 also had max_prompt_length (default 512; 0.28 keeps
// the prompt's end, 0.11 followed truncation_mode: prompt_mode) and max_completion_length (keeps
// the start), applied to the tokenised parts before max_length; both are here too, off by
// default as in TRL 1.x.
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "models/tokenizer/chat.h"
#include "tensor/io/json.h"
#include "tensor/tensor.h"

namespace lamina::train {

enum class PreferenceLayout { paired, implicit_prompt, unpaired, prompt_only };
// "paired {"prompt", "chosen", "rejected"}" and so on, for messages.
std::string preference_layout_name(PreferenceLayout layout);

enum class TruncationMode { keep_start, keep_end };
// "keep_start" or "keep_end" (TRL's truncation_mode values); anything else is an error.
TruncationMode truncation_mode_from_name(const std::string& name);

struct PreferenceTruncation {
  int64_t max_length = 1024;  // tokens per row, prompt + completion (TRL's default); 0: no limit
  TruncationMode mode = TruncationMode::keep_start;
  int64_t max_prompt_length = 0;  // 0: no limit (TRL <= 0.28)
  TruncationMode prompt_mode = TruncationMode::keep_end;
  int64_t max_completion_length = 0;  // 0: no limit; keeps the start (TRL <= 0.28)
};

// One part of a line: text, or a list of messages.
struct PreferencePart {
  bool conversational = false;
  std::string text;
  std::vector<tokenizer::Message> messages;
};

// A line, checked and with its prompt extracted where it was implicit, before tokenisation.
struct PreferenceRecord {
  PreferenceLayout layout = PreferenceLayout::paired;
  bool conversational = false;
  bool prompt_extracted = false;  // from chosen/rejected (implicit, or a text prompt beside conversations)
  PreferencePart prompt;
  PreferencePart chosen, rejected;  // paired, implicit_prompt
  PreferencePart completion;        // unpaired
  bool label = false;               // unpaired
};

// TRL's extract_prompt: the longest common beginning of chosen and rejected becomes the prompt
// and the rest the completions. Conversations compare whole messages; text compares characters,
// and a space just before the first difference goes to the completions (" blue" / " green").
// When one is a prefix of the other (or they are equal), TRL's loop ends one element short of
// the shorter, so that element starts both completions: kept, so that the pairs equal TRL's.
// Text is split at character (code point) boundaries, as Python's strings are. Deviation: where
// TRL, on a difference at the very first character of text ending in a space, splits at the
// last character (an indexing accident), the prompt here is empty.
struct ExtractedPrompt {
  PreferencePart prompt, chosen, rejected;
};
ExtractedPrompt extract_prompt(const PreferencePart& chosen, const PreferencePart& rejected);

// Reads one line's JSON object (errors say what is wrong and where in the line; the reader adds
// file:line). `format` decides which chat roles a message may have (tokenizer::chat_roles; HF's
// "tool" is Llama-3.1's ipython).
PreferenceRecord parse_preference_record(const json::Value& record, tokenizer::ChatFormat format);

struct PreferenceDataOptions {
  tokenizer::ChatOptions chat;  // the chat format of conversational lines (add_generation_prompt is set per part)
  bool add_bos = true;          // text lines: start with BOS when the tokenizer adds one (TRL's tokenizer(text))
  // Text lines: the id ending each completion; unset: the tokenizer's EOS (a GGUF's role, else
  // <|end_of_text|>, else <|endoftext|>); a tokenizer with none is an error for text lines.
  std::optional<int32_t> eos_id;
  PreferenceTruncation truncation;
  bool skip_malformed = false;  // count and skip bad lines instead of failing on the first
};

// The ids of a prompt and of one completion of it (see the tokenisation rules above), with
// max_prompt_length and max_completion_length applied.
struct PromptCompletionIds {
  std::vector<int32_t> prompt, completion;
  bool prompt_is_prefix = true;  // the prompt's ids begin the whole's (else TRL's slice, counted)
  bool prompt_truncated = false, completion_truncated = false;
};
PromptCompletionIds tokenize_prompt_completion(const tokenizer::Tokenizer& tokenizer, const PreferencePart& prompt,
                                               const PreferencePart& completion, const PreferenceDataOptions& options);
// A prompt alone (prompt-only lines, generation): rendered with the generation prompt, or BOS +
// text; max_prompt_length applied.
std::vector<int32_t> tokenize_prompt(const tokenizer::Tokenizer& tokenizer, const PreferencePart& prompt,
                                     const PreferenceDataOptions& options);

struct PreferencePair {
  std::vector<int32_t> prompt, chosen, rejected;
  int64_t line = 0;  // 1-based line of the file
};
struct UnpairedExample {
  std::vector<int32_t> prompt, completion;
  bool label = false;  // true: desirable
  int64_t line = 0;
};
struct PromptOnly {
  std::vector<int32_t> prompt;                // ready to generate from (max_prompt_length applied)
  std::vector<tokenizer::Message> messages;  // conversational lines, whole (empty for text lines)
  std::string text;                           // text lines, whole
  json::Value prompt_value;                   // the line's "prompt" as written (text or messages)
  json::Value fields = json::Object{};        // the line's other fields ("answer", ...), for rewards
  int64_t line = 0;
};

struct PreferenceDataStats {
  int64_t lines = 0;  // non-empty lines read
  int64_t records = 0;
  int64_t conversational = 0, text = 0;
  int64_t prompts_extracted = 0;
  int64_t boundary_mismatches = 0;  // parts whose prompt ids are not a prefix of the whole's
  int64_t prompts_truncated = 0;    // by max_prompt_length
  int64_t completions_truncated = 0;  // by max_completion_length (each of a pair counts)
  int64_t dropped = 0;  // keep_start: the prompt alone fills max_length
  int64_t skipped = 0;  // malformed, with skip_malformed
  std::string first_skipped;

  // One line for the user ("3 lines dropped: ..."), empty when there is nothing to say.
  std::string summary() const;
};

struct PreferenceData {
  PreferenceLayout layout = PreferenceLayout::paired;
  std::vector<PreferencePair> pairs;       // paired, implicit_prompt
  std::vector<UnpairedExample> unpaired;  // unpaired
  std::vector<PromptOnly> prompts;        // prompt_only
  PreferenceDataStats stats;
};

// Reads a JSONL file of one layout. A malformed line (not an object, a missing key, a part of the
// wrong type, an empty chosen/rejected/completion, a label that is not true/false, chosen text
// beside rejected messages, a completion not starting with an assistant turn, conversations with
// no shared first message to extract a prompt from, a line of another layout than the first) is
// an error "file:line: what", unless skip_malformed. Empty lines and a UTF-8 byte-order mark are
// skipped; a file with no line is an error.
PreferenceData read_preference_jsonl(const std::string& path, const tokenizer::Tokenizer& tokenizer,
                                     const PreferenceDataOptions& options = {});
// The same from a stream; `name` stands for the file in errors.
PreferenceData read_preference_jsonl(std::istream& in, const std::string& name, const tokenizer::Tokenizer& tokenizer,
                                     const PreferenceDataOptions& options = {});

// TRL's unpair_preference_dataset, for KTO/BCO on pairs: every chosen as a desirable example,
// then every rejected as an undesirable one (TRL does this per map batch of 1000 lines).
std::vector<UnpairedExample> unpair_preferences(std::span<const PreferencePair> pairs);

// ---- batches for the policy (and the reference): one row per prompt + completion

// A row: prompt + completion cut to max_length (keep_start: the first tokens; keep_end: the
// last), and its completion mask (1 on completion tokens).
struct PreferenceRow {
  std::vector<int32_t> ids;
  std::vector<uint8_t> completion_mask;
};
PreferenceRow preference_row(std::span<const int32_t> prompt, std::span<const int32_t> completion,
                             const PreferenceTruncation& truncation);

// TRL's DataCollatorForPreference: rows 0..B-1 are prompt + chosen, rows B..2B-1 prompt +
// rejected, right-padded with pad_id to the longest row; completion_mask is false on prompt and
// padding (the layout train/losses/logprobs.h's completion_logprobs and split_pairs read).
struct PreferenceBatch {
  Tensor input_ids;        // [2B, T] i64
  Tensor completion_mask;  // [2B, T] bool
  std::vector<int64_t> lengths;  // [2B] tokens of each row before padding
  int64_t pairs = 0;             // B
};
PreferenceBatch make_preference_batch(std::span<const PreferencePair* const> pairs,
                                      const PreferenceTruncation& truncation, int32_t pad_id);
PreferenceBatch make_preference_batch(std::span<const PreferencePair> pairs, const PreferenceTruncation& truncation,
                                      int32_t pad_id);

// TRL's KTO collator: one row per example; with kl_rows, also KTO's mismatched rows for the KL
// estimate, prompt i with the completion of example i - 1 (the first takes the last's).
struct UnpairedBatch {
  Tensor input_ids;        // [B, T] i64
  Tensor completion_mask;  // [B, T] bool
  Tensor labels;           // [B] bool, true: desirable
  Tensor kl_input_ids;        // [B, T'] i64, defined with kl_rows
  Tensor kl_completion_mask;  // [B, T'] bool
};
UnpairedBatch make_unpaired_batch(std::span<const UnpairedExample* const> examples,
                                  const PreferenceTruncation& truncation, int32_t pad_id, bool kl_rows = false);
UnpairedBatch make_unpaired_batch(std::span<const UnpairedExample> examples, const PreferenceTruncation& truncation,
                                  int32_t pad_id, bool kl_rows = false);

}  // namespace lamina::train
