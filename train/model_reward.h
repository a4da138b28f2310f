// A lamina reward model (a LlamaForSequenceClassification folder, as `lamina train reward`
// saves it) as a scorer of prompts and completions: what `lamina score --reward-model` and the
// reward_model= reward term (train/rewards.h) and judge (train/judges.h) share, so that a
// completion scores the same in all three.
//
// Loading: DIR must hold a reward model (config.json's architectures name
// LlamaForSequenceClassification) and its tokenizer.json. With a LoRA adapter folder ADAPTER
// (`lamina train reward --lora` output): over a reward model the adapter is applied to it; over
// a causal LM it must carry the trained score head (PEFT's modules_to_save "score"), else the
// scores would come from an untrained head. Loaded once, in f32 on the CPU, in eval mode.
//
// Rendering: a prompt (text, or a list of {"role", "content"} messages) and a completion's text
// are tokenised as the preference reader (train/preference_data.h) tokenises a {"prompt",
// "completion"} line, with the reward model's tokenizer and the chat format its folder declares:
// a message-list prompt rendered by the chat template with the completion as the assistant's
// reply (and its end of turn); text as BOS + prompt + completion + EOS. No truncation: a row
// longer than the reward model's context is an error. The reward term and the judge first
// replace the bytes of a broken UTF-8 character in a completion with U+FFFD, as TRL's decoding
// does and as samples.jsonl and the external judges have it.
//
// Scoring: no gradient; rows right-padded in batches of batch_rows, each reward read at the
// row's own last real token (its length), so a row scores what it scores alone, up to rounding.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/llama/reward_model.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/io/json.h"
#include "train/preference_data.h"
#include "train/rewards.h"

namespace lamina::train {

class RewardModelScorer {
 public:
  // Errors: DIR is not a reward model folder (a causal LM without an adapter holding the score
  // head, a file, nothing), it has no tokenizer (and none is given), the adapter does not fit.
  explicit RewardModelScorer(const std::string& directory, const std::optional<std::string>& adapter = std::nullopt,
                             const std::optional<std::string>& tokenizer_path = std::nullopt);
  // The scorer of a reward_model= value, "DIR" or "DIR|adapter=ADAPTER_DIR" (the reward term's and
  // the pairwise judge's spelling; parse_reward_model_value below).
  static RewardModelScorer from_value(const std::string& value);

  // prompt + completion ids as the reward model reads them (rendering, above).
  std::vector<int32_t> render(const json::Value& prompt, const std::string& completion) const;
  // The rewards of rows of ids, [rows][num_labels]; `where` names the rows in errors (a token
  // outside the vocabulary, a row beyond the context, an empty row).
  std::vector<std::vector<double>> score_rows(const std::vector<std::vector<int32_t>>& rows,
                                              const std::string& where) const;
  // score_rows of render(prompt, completion) for each pair, the first label's reward.
  std::vector<double> score_texts(const std::vector<std::pair<json::Value, std::string>>& texts) const;

  const llama::LlamaForSequenceClassification& model() const { return *model_; }
  const tokenizer::Tokenizer& tokenizer() const { return tokenizer_; }
  const PreferenceDataOptions& data_options() const { return data_options_; }
  const std::string& directory() const { return directory_; }

  int64_t batch_rows = 8;  // rows per forward

 private:
  std::string directory_;
  std::shared_ptr<llama::LlamaForSequenceClassification> model_;
  tokenizer::Tokenizer tokenizer_;
  PreferenceDataOptions data_options_;
};

// Whether `path` is a folder whose config.json names LlamaForSequenceClassification.
bool is_reward_model_directory(const std::string& path);

// The folder and adapter of a reward_model= value: "DIR" or "DIR|adapter=ADAPTER_DIR".
struct RewardModelSpec {
  std::string directory;
  std::optional<std::string> adapter;
};
RewardModelSpec parse_reward_model_value(const std::string& value);

// The reward_model=VALUE reward term: the reward model's score (its only label) of each
// prompt + completion. A reward model with more than one label is an error.
std::unique_ptr<Reward> make_model_reward(const std::string& value);

}  // namespace lamina::train
