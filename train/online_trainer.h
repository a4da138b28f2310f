// Online preference optimisation: the objective (train/objective.h) that samples completions
// with the policy being trained, scores them (train/rewards.h) and trains on them with an RL or
// online loss of the registry (train/losses/registry.h): GRPO and its settings (dr_grpo, dapo,
// simplerl_zoo), RLOO, REINFORCE++ (and its group-baseline form), Online DPO, INPO, REBEL and
// SPIN.
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
//      with a pairwise judge (train/judges.h; online_dpo and inpo, G = 2) the judge's choice
//      of each group's two completions is the chosen one instead, and the reward is optional
//      (scored when given, for the metrics, samples and validation, but not deciding the pairs);
//      with one step per iteration (the default), INPO's and REBEL's iterate π_t is the policy
//      that sampled the batch;
//   5. backpropagates each micro-batch's loss weighted by its share of the step (rows; tokens
//      for bnpo; dapo and cispo divide by the step's tokens through token_normalizer).
//
// Iterations of several steps (OnlineOptions::iteration_steps K > 1, or iteration_prompts set;
// the pair losses online_dpo, inpo, rebel, and spin always), as INPO and SPIN run them: at the
// first step of each iteration (steps 1, K+1, 2K+1, ...) the objective builds its pool with the
// policy as it stands, π_t:
//   - it draws iteration_prompts M prompts (default P*K) from the prompt order, samples them
//     (seeded by that step's number), and makes one pair of each: the pair losses score G
//     completions and take the best and worst as above; SPIN pairs the data's own answer (real,
//     chosen) with one completion of π_t (generated, rejected; greedy at temperature 0);
//   - it computes once, without gradient and in eval mode, every pair's log-probs under π_t
//     (INPO's and REBEL's iterate, SPIN's opponent) and under the reference when the loss has
//     one, in micro-batches of P pairs (TrainOptions::micro_batch_size when set);
//   - it orders the pairs by a permutation seeded by the run's seed and the step.
// Each step of the iteration then trains on the next P pairs of that order (wrapping around when
// M < P*K; within a step they keep the pool's order), forwarding only the two rows of each pair,
// against the pool's fixed log-probs: no snapshot of π_t is kept. With K = 1 and M = P the pool
// is the step's batch and, for G = 2, the step computes exactly what the one-step path does.
// The pool (each pair's prompt, completion ids, rewards and fixed log-probs, the order, the
// pool's sample metrics) is the objective's state(), saved with every checkpoint, so that a run
// resumed in the middle of an iteration continues on the same pool. The reward and completion
// metrics of a step are its pool's (the same on every step of an iteration).
//
// Metrics use TRL's names: reward, reward_std, frac_reward_zero_std, rewards/<term>/mean (the
// terms of a weighted reward), completions/mean_length, /min_length, /max_length,
// /clipped_ratio (the share stopped by max_new_tokens), the loss's own (kl, clip_ratio/...;
// SPIN's rewards/real, rewards/generated, rewards/margins, rewards/accuracies, logps/real, ...).
//
// With an output folder, each step (each iteration's first step when iterating) appends one
// line per completion to <output>/samples.jsonl:
//   {"step", "prompt_index" (0-based, in the prompt file), "line" (1-based), "completion",
//    "tokens", "finish_reason", "reward", "rewards" (a weighted reward's terms), "advantage"}
// "advantage" is the one the loss uses for that completion (completion_advantages below);
// the pair losses write "chosen": true / false (null: neither) instead (with a judge: its
// choice; "reward" only when there is a reward besides the judge); SPIN writes its
// generated completions, without reward, with "chosen": false (the data's answer is the chosen).
// A resumed run first drops the lines of steps after its checkpoint (the killed run wrote them;
// the resumed run writes them again, identically), so the file always holds each step once.
//
// Validation (TrainOptions::eval_every, and at the end): one greedy completion (temperature 0)
// of every validation prompt, scored by the reward: val_reward, val_reward_std,
// val_rewards/<term>/mean, val_completions/mean_length. There is no val_loss: the losses need
// sampled groups, which a held-out check does not draw. SPIN, which has no reward, has none.
//
// The reference (π_ref), when the loss needs one (grpo's beta > 0, rloo's beta > 0,
// reinforce_pp's kl_coef or kl_loss_coef > 0, online_dpo and inpo always): a frozen copy of the starting
// model, or with LoRA the policy with its adapters disabled (no second copy). REBEL and SPIN
// read none (their only other policy is the iterate).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/losses/registry.h"
#include "train/objective.h"
#include "train/judges.h"
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
  std::vector<int32_t> answer;          // SPIN: the data's own answer (completion ids), the real response
};

struct OnlineOptions {
  std::string loss = "grpo";  // online_loss_names(): grpo, dr_grpo, dapo, ..., online_dpo, inpo, rebel, spin
  std::vector<std::pair<std::string, std::string>> params;  // hyperparameter overrides, as text
  ReferenceKind reference = ReferenceKind::automatic;       // automatic, copy, adapters_off or none
  int64_t num_generations = 4;  // G: completions per prompt (at least 2; SPIN: 1)
  double temperature = 1.0;     // sampling (0 = greedy, which makes a group's completions equal)
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t max_new_tokens = 64;
  int32_t pad_id = 0;  // any id of the vocabulary: padding is masked out
  // Iterations (the pair losses and SPIN): K steps train on one pool sampled by the policy at
  // the iteration's start, against its log-probs then. 1 (with iteration_prompts 0) is the
  // one-step path; SPIN always builds a pool.
  int64_t iteration_steps = 1;
  int64_t iteration_prompts = 0;  // M prompts in an iteration's pool; 0: prompts per step x K

  // Whether the run trains on iteration pools (see above).
  bool iterates() const;

  // What a resumed run must share: {"loss", "params", "reference", "num_generations", ...;
  // "iteration_steps", "iteration_prompts" when iterating}.
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
// losses (online_dpo, inpo, rebel, spin).
std::vector<double> completion_advantages(const LossDefinition& loss, const Hyperparameters& params,
                                          const std::vector<double>& rewards, const std::vector<double>& lengths,
                                          const std::vector<double>& sequence_kl = {});

class OnlineObjective : public Objective {
 public:
  // Throws when the loss is not one of online_loss_names(), G does not fit the loss, or the
  // reference kind does not fit the loss or the model (the same rules as PreferenceObjective;
  // precomputed is refused: the completions are new each step), the iteration settings do not
  // fit (K < 1, M < P, K > 1 with a GRPO-style loss), or SPIN's prompts lack answers. SPIN
  // needs no reward (null), nor does a run with a judge; every other loss does. A judge is for
  // online_dpo and inpo with G = 2 only.
  OnlineObjective(OnlineOptions options, const TrainOptions& train_options, std::vector<OnlinePrompt> prompts,
                  std::unique_ptr<Reward> reward, CompletionDecoder decode, std::vector<OnlinePrompt> validation = {},
                  std::unique_ptr<PairwiseJudge> judge = nullptr);
  ~OnlineObjective() override;

  void prepare(llama::LlamaWithHead& model, const TrainOptions& options) override;
  StepResult step(llama::LlamaWithHead& model, int64_t step) override;
  bool has_validation() const override;
  json::Value validate(llama::LlamaWithHead& model) override;
  json::Value cursor() const override;
  void restore(const json::Value& cursor) override;
  DataFingerprint fingerprint() const override;
  json::Value settings() const override;
  // The iteration pool (null when the run does not iterate or has not started): {"start_step",
  // "pairs": [{"prompt_index", "chosen", "rejected" (ids), "chosen_first", "chosen_reward",
  // "rejected_reward", "iterate_chosen_logp", "iterate_rejected_logp", and with a reference
  // "reference_chosen_logp", "reference_rejected_logp"}], "order", "metrics"}.
  json::Value state() const override;
  void restore_state(const json::Value& state) override;

  ReferenceKind reference() const;  // resolved
  const LossDefinition& loss() const;
  const Hyperparameters& params() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lamina::train
