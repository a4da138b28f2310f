// The reward model of RLHF: the Llama trunk of model.h with a linear head of num_labels outputs
// (one for a reward model), named and stored as Hugging Face's LlamaForSequenceClassification,
// plus the Bradley–Terry pairwise loss it is trained with (TRL's RewardTrainer).
//
//   h      = model(ids)                          [B, T, d]  (the shared LlamaModel, final norm applied)
//   reward = score(h[b, pooled(b)])              [B, num_labels]   score.weight: [num_labels, d], no bias
//
// Which token is pooled (Hugging Face's rule): the rightmost token of the row whose id is not
// config.pad_token_id. lamina applies it inside each row's real tokens [start, end) (given as
// lengths or an attention mask), so padding never moves it; on a right-padded batch whose pads
// are pad_token_id this is exactly transformers' choice, which looks at the ids alone. Two
// consequences of following HF, kept on purpose so that a reward model trained with TRL scores
// the same here:
// - when pad_token_id is the EOS id (TRL's fallback when a tokenizer has no pad token) and a row
//   ends with EOS, the reward is read at the token before the trailing EOS run, not at the EOS;
// - with no pad_token_id the reward is read at end - 1; transformers then refuses batches > 1
//   (it cannot find the ends), and so does forward(ids) without lengths.
// A row whose real tokens are all pad_token_id is read at `start` (HF's argmax of zeros).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/llama/model.h"

namespace lamina::llama {

// How a fresh score head is made for a causal LM's trunk (how `lamina train reward` starts).
struct ScoreHeadOptions {
  int64_t num_labels = 1;               // 1: a scalar reward
  std::optional<int64_t> pad_token_id;  // replaces the config's when given (TRL sets the tokenizer's)
};

class LlamaForSequenceClassification : public LlamaWithHead {
 public:
  // A new model: trunk and head as `init` says (zeros, or uninitialised for loading).
  explicit LlamaForSequenceClassification(LlamaConfig config, int64_t num_labels = 1, DType dtype = DType::f32,
                                          nn::ParameterInit init = nn::ParameterInit::zeros);
  // Over an existing trunk, shared and not copied (the causal LM it came from sees every update);
  // the head is new (zeros) in the trunk's dtype.
  LlamaForSequenceClassification(LlamaConfig config, std::shared_ptr<LlamaModel> trunk, int64_t num_labels, DType dtype);

  // ids [B, T] (i32/i64), right-padded; lengths [B] (integers in [1, T]): each row's real tokens
  // are [0, length). -> [B, num_labels], f32 for f32/bf16/f16 models (f64 for f64), differentiable.
  // Tokens past the longest length are not computed (causal attention: they cannot matter).
  Tensor forward(const Tensor& ids, const Tensor& lengths) const;
  // attention_mask [B, T] of 0/1 (any numeric dtype), each row's ones contiguous: right or left
  // padding. Left-padded rows hide their pads from attention and count positions from their first
  // real token, as a row alone would. (transformers counts them from slot 0 unless given
  // position_ids; RoPE sees only position differences, so that changes its rewards by rounding only.)
  Tensor forward_with_attention_mask(const Tensor& ids, const Tensor& attention_mask) const;
  // transformers' call without a mask: every token is real; a batch > 1 needs pad_token_id.
  Tensor forward(const Tensor& ids) const;

  // Loads a Hugging Face LlamaForSequenceClassification folder: config.json ("architectures",
  // num_labels from "id2label" or "num_labels", pad_token_id) and model.safetensors (model.* and
  // score.weight). A causal-LM folder, a missing or misshapen score.weight, or any other tensor
  // is an error naming the file and tensor, found from the headers before anything is allocated.
  static std::shared_ptr<LlamaForSequenceClassification> load(const std::string& directory, DType dtype = DType::f32);
  // The trunk of a LlamaForCausalLM folder (LlamaForCausalLM::load: its lm_head is dropped) and
  // a fresh head drawn as transformers initialises a missing one: normal(0, initializer_range).
  static std::shared_ptr<LlamaForSequenceClassification> from_causal_lm(const std::string& directory,
                                                                        const ScoreHeadOptions& options,
                                                                        Generator& generator, DType dtype = DType::f32);
  // The same from a causal LM in memory, sharing its trunk (e.g. one read from a GGUF file).
  static std::shared_ptr<LlamaForSequenceClassification> from_causal_lm(const LlamaForCausalLM& causal_lm,
                                                                        const ScoreHeadOptions& options,
                                                                        Generator& generator);
  // Writes config.json (architectures ["LlamaForSequenceClassification"], id2label/label2id
  // as transformers writes them, pad_token_id when set) and model.safetensors (sharded above
  // max_shard_bytes), the weights in `dtype` (default: the model's own).
  void save(const std::string& directory, std::optional<DType> dtype = std::nullopt,
            uint64_t max_shard_bytes = uint64_t(5) << 30) const override;
  std::shared_ptr<LlamaWithHead> load_like(const std::string& directory, DType dtype) const override {
    return load(directory, dtype);
  }

  // Fresh weights as transformers initialises them: normal(0, initializer_range), norms at 1.
  void init_parameters(Generator& generator);
  // The head alone, normal(0, initializer_range): a new head on a pretrained trunk.
  void init_score(Generator& generator);
  void set_gradient_checkpointing(bool on) override { model->gradient_checkpointing = on; }
  LlamaModel& trunk() override { return *model; }
  // Every weight converted to `dtype` on `device`, in place (handles stay valid), as LlamaForCausalLM::to.
  void to(Device device, DType dtype) override;
  Device device() const override { return score->weight().device(); }

  const LlamaConfig& config() const override { return config_; }
  int64_t num_labels() const { return num_labels_; }
  DType dtype() const override { return dtype_; }

  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<nn::Linear> score;

 private:
  // The trunk over ids[:, :tokens], the head at row b's token pooled[b].
  Tensor pooled_scores(const Tensor& ids, const Tensor& positions, const Tensor& mask,
                       const std::vector<int64_t>& pooled) const;

  LlamaConfig config_;
  int64_t num_labels_;
  DType dtype_;
};

// The token each row's reward is read at (the rule at the top of this file): the rightmost
// position p in [starts[b], ends[b]) with ids[b, p] != pad_token_id, else starts[b]; end - 1
// without a pad_token_id. ids [B, T] on any device.
std::vector<int64_t> reward_positions(const Tensor& ids, const std::vector<int64_t>& starts,
                                      const std::vector<int64_t>& ends, std::optional<int64_t> pad_token_id);

// ---- the Bradley–Terry loss (TRL's RewardTrainer.compute_loss)
//
//   loss = mean_i -log sigmoid(c_i - r_i - m_i)  +  center_coefficient * mean_i (c_i + r_i)^2
//
// c, r: the rewards of the chosen and rejected completion of pair i; m: an optional per-pair
// margin (TRL's "margin" column, 0 without); the centring term (TRL's center_rewards_coefficient,
// off at 0) pulls the rewards toward zero mean. Gradient (N pairs, d = c - r - m):
//   dloss/dc_i = (-(1 - sigmoid(d_i)) + 2 coef (c_i + r_i)) / N,  dloss/dr_i = ((1 - sigmoid(d_i)) + 2 coef (c_i + r_i)) / N
struct BradleyTerryLoss {
  Tensor loss;  // scalar, differentiable with respect to chosen and rejected
  // TRL's metrics, from the rewards (margin not subtracted): the share of pairs with c > r (a tie
  // counts as wrong), mean(c - r), and min/mean/max over all 2N rewards.
  double accuracy = 0, margin = 0;
  double min_reward = 0, mean_reward = 0, max_reward = 0;
};
// chosen, rejected: [N] or [N, 1] (a reward model's output); margin: undefined or [N].
BradleyTerryLoss bradley_terry_loss(const Tensor& chosen, const Tensor& rejected, const Tensor& margin = Tensor(),
                                    double center_coefficient = 0.0);

}  // namespace lamina::llama
