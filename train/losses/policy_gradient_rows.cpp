// Registry rows of the §7 losses. One function serves several rows that differ only in their
// defaults: dr_grpo, dapo and simplerl_zoo are GRPO settings, reinforce_pp_baseline is
// REINFORCE++ with a group baseline.
#include "train/losses/families.h"
#include "train/losses/policy_gradient.h"

namespace lamina::train {
namespace {

// The aliases are TRL 1.x GRPOTrainer's names (per_token_logps, old_per_token_logps,
// ref_per_token_logps, entropies).
InputSpec policy_token_logps() {
  return also_named(
      policy_tokens("policy_token_logps", "completion_mask", "lp_t: current policy log-probs of the completion tokens"),
      {"per_token_logps"});
}

InputSpec old_token_logps() {
  return also_named(
      frozen_tokens("old_token_logps", "completion_mask",
                    "lo_t: log-probs of the policy that sampled the rollout (absent: lo = sg(lp), one step per batch)",
                    false),
      {"old_per_token_logps"});
}

InputSpec reference_token_logps(bool required, const std::string& needed_when = "") {
  return also_named(frozen_tokens("reference_token_logps", "completion_mask",
                                  "lr_t: reference log-probs of the same tokens" + needed_when, required),
                    {"ref_per_token_logps"});
}

InputSpec rewards() { return data_sequence("rewards", ValueKind::real, "R_i: scalar reward of each completion"); }

const char* const kTrlGrpo = "TRL 1.16 GRPOConfig";

std::vector<ParamSpec> grpo_params() {
  return all_sourced(
      {
          integer_param("num_generations", 8, at_least(1), "G: completions per prompt (consecutive rows form a group)"),
          real_param("beta", 0.0, at_least(0), "weight of the k3 KL to π_ref in the loss (DeepSeekMath 0.04)"),
          flag_param("use_bias_correction_kl", true,
                     "multiply k3 by the importance ratio ρ (DeepSeek-V3.2's unbiased KL gradient; TRL 1.0-1.10: false)"),
          real_param("epsilon", 0.2, between(0, 1, true, true), "ε_low: lower clip range of ρ"),
          optional_real_param("epsilon_high", above(0), "= epsilon",
                              "ε_high: upper clip range of ρ (DAPO 0.28); cispo: the cap ε_max on ρ (ScaleRL 5)"),
          optional_real_param("delta", above(1), "no cap", "upper cap on ρ in the unclipped term (two-sided clipping)"),
          choice_param("scale_rewards", "group", {"group", "batch", "none"},
                       "divide R - mean_g R by the group std, the batch std, or nothing (Dr. GRPO)"),
          choice_param("loss_type", "dapo", {"grpo", "bnpo", "dapo", "dr_grpo", "cispo", "sapo"},
                       "grpo: per-sequence mean (paper); bnpo: local token mean; dapo: global token mean; dr_grpo: "
                       "/ (B x max length); cispo: -sg(min(ρ, ε_high)) A lp, global token mean; sapo: soft gate "
                       "(4/τ) σ(τ(ρ-1)), per-sequence mean"),
          real_param("sapo_temperature_pos", 1.0, above(0), "sapo: τ for completions with A > 0"),
          real_param("sapo_temperature_neg", 1.05, above(0), "sapo: τ for completions with A <= 0"),
          integer_param("max_completion_length", 512, at_least(1), "dr_grpo's constant normaliser per sequence"),
          sourced(integer_param("gradient_accumulation_steps", 1, at_least(1),
                                "every loss_type but dapo/cispo, and the entropy bonus, divide by it (as TRL)"),
                  "TRL 1.16 TrainingArguments"),
          choice_param("importance_sampling_level", "token", {"token", "sequence"},
                       "token: ρ per token; sequence (GSPO): ρ = exp(mean_t(lp - lo)) per completion"),
          sourced(real_param("advantage_std_epsilon", 1e-4, at_least(0),
                             "added to the std before dividing (SimpleRL-Zoo 1e-6)"),
                  "lamina: TRL's constant"),
          sourced(optional_real_param("kl_clamp", above(0), "no clamp", "clamp k3 to [-c, c] (verl's low_var_kl: 10)"),
                  "lamina (not in TRL)"),
          real_param("entropy_coef", 0.0, at_least(0),
                     "entropy bonus: subtracts coef x token-mean token_entropies / gradient_accumulation_steps"),
          sourced(flag_param("overlong_shaping", false, "add DAPO's soft overlong penalty to the rewards"),
                  "lamina (TRL: a reward function)"),
          sourced(integer_param("overlong_max_length", 20480, at_least(1), "L_max of the overlong penalty"), "spec §7.3"),
          sourced(integer_param("overlong_buffer_length", 4096, at_least(0), "L_c: the soft band before L_max"),
                  "spec §7.3"),
      },
      kTrlGrpo);
}

std::vector<InputSpec> grpo_inputs() {
  return {policy_token_logps(), old_token_logps(), reference_token_logps(false, " (needed when beta > 0)"), rewards(),
          data_scalar("token_normalizer", ValueKind::count,
                      "dapo, cispo: completion tokens of the whole accumulated global batch / ranks (default: this "
                      "batch's)",
                      false),
          also_named({"token_entropies", InputShape::token, InputRole::policy, ValueKind::real, false,
                      "per-token entropies of the policy (for entropy_coef > 0)", "completion_mask", {}},
                     {"entropies"})};
}

std::vector<ParamSpec> reinforce_params() {
  return all_sourced({real_param("kl_coef", 0.01, at_least(0), "c_KL: weight of the per-token k1 penalty in the reward"),
          real_param("epsilon", 0.2, between(0, 1, true, true), "clip range of ρ"),
          real_param("gamma", 1.0, between(0, 1), "γ of the return-to-go"),
          choice_param("baseline", "none", {"none", "group_mean"},
                       "group_mean: subtract the per-prompt mean outcome first (REINFORCE++-baseline)"),
          integer_param("num_generations", 8, at_least(1), "samples per prompt (for baseline=group_mean)"),
          real_param("kl_loss_coef", 0.0, at_least(0), "weight of a KL term in the loss instead of the reward"),
          choice_param("kl_loss_estimator", "k2", {"k1", "k2", "k3"}, "estimator of that KL term")},
                     "spec §7.5 (OpenRLHF; REINFORCE++ is not in TRL)");
}

std::vector<LossDefinition> rows() {
  std::vector<LossDefinition> rows;
  rows.push_back({"ppo_clip", "7.1", "PPO-clip with GAE advantages and a clipped value loss",
                  {policy_token_logps(), old_token_logps(), reference_token_logps(true),
                   {"values", InputShape::token, InputRole::policy, ValueKind::real, true,
                    "V_new: the value head's current estimates per token", "completion_mask"},
                   {"old_values", InputShape::token, InputRole::frozen, ValueKind::real, true,
                    "V_old: value estimates at rollout time (for GAE and the value clip)", "completion_mask"},
                   data_sequence("scores", ValueKind::real, "sequence score, added at the last completion token")},
                  all_sourced({real_param("epsilon", 0.2, between(0, 1, true, true), "ε: clip range of ρ (TRL cliprange)"),
                               real_param("value_epsilon", 0.2, above(0), "ε_v: clip range of V_new around V_old (TRL cliprange_value)"),
                               real_param("vf_coef", 0.1, at_least(0), "c_v: weight of the value loss"),
                               real_param("gamma", 1.0, between(0, 1), "γ: discount"), real_param("lam", 0.95, between(0, 1), "λ of GAE"),
                               real_param("kl_coef", 0.05, at_least(0), "c_KL: per-token KL penalty in the reward"),
                               choice_param("kl_estimator", "k1", {"k1", "k3"}, "KL estimator of the behaviour policy vs π_ref"),
                               sourced(flag_param("whiten_advantages", true, "whiten A over the batch's tokens (off: the spec's example)"),
                                       "lamina: TRL's behaviour")},
                              "TRL 1.0 PPOConfig"),
                  ppo_clip_loss});
  rows.push_back({"grpo", "7.2", "GRPO: group-normalised advantages, clipped ρ, + β k3; loss_type picks the policy term and aggregation",
                  grpo_inputs(), grpo_params(), grpo_loss});
  rows.push_back({"dr_grpo", "7.3", "Dr. GRPO: GRPO without the std division, summed tokens / (B x max length)",
                  grpo_inputs(), with_defaults(grpo_params(), {{"scale_rewards", "none"}, {"loss_type", "dr_grpo"}}, "spec §7.3 (Dr. GRPO)"),
                  grpo_loss});
  rows.push_back({"dapo", "7.3", "DAPO: token-level mean, clip-higher ε_high 0.28, β 0, overlong reward shaping",
                  grpo_inputs(),
                  with_defaults(grpo_params(),
                                {{"loss_type", "dapo"}, {"epsilon_high", "0.28"}, {"overlong_shaping", "true"}},
                                "spec §7.3 (DAPO)"),
                  grpo_loss});
  rows.push_back({"simplerl_zoo", "7.6", "SimpleRL-Zoo: GRPO with token mean, k3 clamped ±10 (β 1e-3), entropy bonus",
                  grpo_inputs(),
                  with_defaults(grpo_params(), {{"loss_type", "bnpo"},
                                                {"beta", "0.001"},
                                                {"kl_clamp", "10"},
                                                {"advantage_std_epsilon", "1e-6"},
                                                {"entropy_coef", "0.001"},
                                                {"use_bias_correction_kl", "false"}},
                                "spec §7.6 (verl's KL loss has no importance weight)"),
                  grpo_loss});
  rows.push_back({"rloo", "7.4", "RLOO: leave-one-out advantages on sequence log-probs, PPO clip (TRL) or REINFORCE",
                  {also_named(policy_sequence("policy_logps", "S_θ(y_i): summed policy log-prob of each completion"), {"logps"}),
                   frozen_sequence("old_logps", "S_old(y_i) of the sampling policy (absent: sg(S_θ))", false),
                   also_named(frozen_sequence("reference_logps", "S_ref(y_i) (for beta > 0)", false), {"ref_logps"}),
                   rewards(),
                   data_sequence("completion_lengths", ValueKind::length,
                                 "|y_i|: tokens of each completion (for TRL's token-mean kl metric)", false)},
                  all_sourced({integer_param("num_generations", 2, at_least(2), "k: completions per prompt"),
                               real_param("beta", 0.05, at_least(0), "weight of the sequence KL (S_old - S_ref) in the reward"),
                               real_param("epsilon", 0.2, between(0, 1, true, true), "ε_low: lower clip range of the sequence ratio"),
                               optional_real_param("epsilon_high", above(0), "= epsilon",
                                                   "ε_high: upper clip range of the sequence ratio (DAPO 0.28)"),
                               optional_interval_param("reward_clip_range", "no clipping",
                                                       "low,high: clamp the rewards before the KL penalty"),
                               sourced(choice_param("objective", "clip", {"clip", "reinforce"},
                                                    "clip: sequence-level PPO clip (TRL); reinforce: -A S_θ (paper)"),
                                       "lamina: TRL's behaviour"),
                               flag_param("normalize_advantages", false, "standardise A over the batch")},
                              "TRL 1.16 RLOOConfig"),
                  rloo_loss});
  rows.push_back({"reinforce_pp", "7.5", "REINFORCE++: KL-shaped token rewards, returns normalised over the batch",
                  {policy_token_logps(), old_token_logps(),
                   reference_token_logps(false, " (needed when kl_coef or kl_loss_coef > 0)"), rewards()}, reinforce_params(),
                  reinforce_pp_loss});
  rows.push_back({"reinforce_pp_baseline", "7.5",
                  "REINFORCE++-baseline: group-mean outcome baseline, k2 KL in the loss (1e-5) instead of the reward",
                  {policy_token_logps(), old_token_logps(),
                   reference_token_logps(false, " (needed when kl_coef or kl_loss_coef > 0)"), rewards()},
                  with_defaults(reinforce_params(),
                                {{"baseline", "group_mean"}, {"kl_coef", "0"}, {"kl_loss_coef", "1e-5"}},
                                "spec §7.5 (OpenRLHF's example script)"),
                  reinforce_pp_loss});
  return rows;
}

}  // namespace

std::vector<LossDefinition> policy_gradient_losses() { return rows(); }

}  // namespace lamina::train
