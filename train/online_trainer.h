// Online preference optimisation: the objective (train/objective.h) that samples completions
// with the policy being trained, scores them (train/rewards.h) and trains on them with an RL or
// online loss of the registry (train/losses/registry.h): GRPO and its settings (dr_grpo, dapo,
// simplerl_zoo), RLOO, REINFORCE++ (and its group-baseline form), Online DPO, INPO and REBEL.
//
// A step (TrainOptions::batch_size prompts P, each sampled num_generations G times):
//   1. takes the next P prompts of a seeded permutation of the prompt file (a new one each
//      epoch; the position is the checkpointed cursor);
//   2. samples G completions of each with the current policy (models/generate/batch.h, in eval
//      mode, without gradients), from a seed made of the run's seed and the step number, so
//      that a resumed run draws what the uninterrupted one drew; a completion that ended on a
//      stop token keeps it (the policy learns to stop);
//   3. scores them with the reward, one batch of P*G;
//   4. puts the P*G rows (prompt + completion, completion-masked) through the policy, in
//      micro-batches of TrainOptions::micro_batch_size prompts (whole groups), and builds the
//      loss's inputs: per-token log-probs with gradient (logits divided by the sampling
//      temperature, as TRL does), no old log-probs (one update per batch: ρ = 1, sg(lp)), the
//      reference's log-probs of the same rows when the loss's KL term needs them, the rewards
//      (G consecutive rows form a group; num_generations is set to G), the completion mask;
//      Online DPO, INPO and REBEL take each group's best and worst completion by reward as
//      chosen/rejected (first/second for REBEL; the first of equal rewards; G = 2 is TRL's);
//      INPO's and REBEL's iterate π_t is the policy that sampled the batch, so an iteration is
//      one step (iterations of several steps against a frozen π_t are not written yet);
//   5. backpropagates each micro-batch's loss weighted by its share of the step (rows; tokens
//      for bnpo; dapo and cispo divide by the step's tokens through token_normalizer).
// Metrics use TRL's names: reward, reward_std, frac_reward_zero_std, rewards/<term>/mean (the
// terms of a weighted reward), completions/mean_length, /min_length, /max_length,
// /clipped_ratio (the share stopped by max_new_tokens), the loss's own (kl, clip_ratio/...).
//
// With an output folder, each step appends one line per completion to <output>/samples.jsonl:
//   {"step", "prompt_index" (0-based, in the prompt file), "line" (1-based), "completion",
//    "tokens", "finish_reason", "reward", "rewards" (a weighted reward's terms), "advantage"}
// "advantage" is the one the loss uses for that completion (completion_advantages below);
// the pair losses write "chosen": true / false (null: neither) instead. A resumed run first drops
// the lines of steps after its checkpoint (the killed run wrote them; the resumed run writes
// them again, identically), so the file always holds each step once.
//
// Validation (TrainOptions::eval_every, and at the end): one greedy completion (temperature 0)
// of every validation prompt, scored by the reward: val_reward, val_reward_std,
// val_rewards/<term>/mean, val_completions/mean_length. There is no val_loss: the losses need
// sampled groups, which a held-out check does not draw.
//
// The reference (π_ref), when the loss needs one (grpo's beta > 0, rloo's beta > 0,
// reinforce_pp's kl_coef or kl_loss_coef > 0, online_dpo and inpo always): a frozen copy of the starting
// model, or with LoRA the policy with its adapters disabled (no second copy).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/losses/registry.h"
#include "train/objective.h"
#include "train/preference_trainer.h"
#include "train/rewards.h"

namespace lamina::train {

// A prompt to sample from.
struct OnlinePrompt {
  std::vector<int32_t> ids;             // what generation continues (rendered, with the generation prompt)
  json::Value prompt;                   // the line's "prompt" (text or messages), for the reward
  json::Value fields = json::Object{};  // the line's other fields ("answer", ...)
  std::vector<int64_t> stop_tokens;     // stop ids besides the model's EOS (a chat's end of turn)
  int64_t line = 0;                     // 1-based line of the file
};

struct OnlineOptions {
  std::string loss = "grpo";  // online_loss_names(): grpo, dr_grpo, dapo, ..., online_dpo, inpo, rebel
  std::vector<std::pair<std::string, std::string>> params;  // hyperparameter overrides, as text
  ReferenceKind reference = ReferenceKind::automatic;       // automatic, copy, adapters_off or none
  int64_t num_generations = 4;  // G: completions per prompt (at least 2)
  double temperature = 1.0;     // sampling (0 = greedy, which makes a group's completions equal)
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t max_new_tokens = 64;
  int32_t pad_id = 0;  // any id of the vocabulary: padding is masked out

  // What a resumed run must share: {"loss", "params", "reference", "num_generations", ...}.
  json::Value to_json() const;
};

// Turns a completion's ids into the text the reward reads.
using CompletionDecoder = std::function<std::string(const std::vector<int32_t>& ids)>;

// The losses this objective trains with, and whether `name` (or an alias) is one.
const std::vector<std::string>& online_loss_names();
bool is_online_loss(const std::string& name);

// The advantage each completion gets from `rewards` (groups of G consecutive rows) under the
// loss: GRPO's group-normalised one (the loss's scale_rewards and epsilon, DAPO's overlong
// shaping given the completions' `lengths`), RLOO's leave-one-out one of the rewards less β
// times the sequence KL (`sequence_kl`, empty when β = 0), REINFORCE++'s outcome (group-centred
// for baseline=group_mean) before its token-level shaping and normalisation. Empty for the pair
// losses (online_dpo, inpo, rebel).
std::vector<double> completion_advantages(const LossDefinition& loss, const Hyperparameters& params,
                                          const std::vector<double>& rewards, const std::vector<double>& lengths,
                                          const std::vector<double>& sequence_kl = {});

class OnlineObjective : public Objective {
 public:
  // Throws when the loss is not one of online_loss_names(), G does not fit the loss, or the
  // reference kind does not fit the loss or the model (the same rules as PreferenceObjective;
  // precomputed is refused: the completions are new each step).
  OnlineObjective(OnlineOptions options, const TrainOptions& train_options, std::vector<OnlinePrompt> prompts,
                  std::unique_ptr<Reward> reward, CompletionDecoder decode, std::vector<OnlinePrompt> validation = {});
  ~OnlineObjective() override;

  void prepare(llama::LlamaWithHead& model, const TrainOptions& options) override;
  StepResult step(llama::LlamaWithHead& model, int64_t step) override;
  bool has_validation() const override;
  json::Value validate(llama::LlamaWithHead& model) override;
  json::Value cursor() const override;
  void restore(const json::Value& cursor) override;
  DataFingerprint fingerprint() const override;
  json::Value settings() const override;

  ReferenceKind reference() const;  // resolved
  const LossDefinition& loss() const;
  const Hyperparameters& params() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lamina::train
