// What the paired losses share: the four summed log-probs S_θ(y_w), S_θ(y_l), S_ref(y_w),
// S_ref(y_l), the log-ratios r_w, r_l built from them, the margin h = r_w - r_l (or its
// f-divergence form), optional WPO pair weights, and TRL's standard reward metrics (§1.4).
#pragma once

#include "train/losses/common.h"

namespace lamina::train {

// Inputs of preference-losses.md §2, in TRL's names.
InputSpec policy_chosen_logps();
InputSpec policy_rejected_logps();
InputSpec reference_chosen_logps(bool required = true);
InputSpec reference_rejected_logps(bool required = true);
InputSpec chosen_lengths(bool required = true);
InputSpec rejected_lengths(bool required = true);
InputSpec pair_weights();  // optional WPO weights (§2.20), applied to per-example losses
// The four log-prob inputs (references optional when the loss offers reference_free) plus
// pair_weights.
std::vector<InputSpec> paired_inputs(bool reference_optional);

// Hyperparameters shared across families.
ParamSpec beta_param(double default_value = 0.1, const std::string& help = "inverse temperature of the implicit reward");
ParamSpec reference_free_param();  // TRL v0.19 `reference_free`: S_ref ≡ 0
std::vector<ParamSpec> f_divergence_params();  // `f_divergence_type` and `f_alpha_divergence_coef` (§2.19)

struct PairTerms {
  Tensor policy_chosen, policy_rejected;  // S_θ(y_w), S_θ(y_l)
  Tensor chosen_ratios, rejected_ratios;  // r_w = S_θ(y_w) - S_ref(y_w), r_l likewise
};

// Reads the four log-prob inputs; with reference_free set (when the loss has that
// hyperparameter) the reference terms are zero and may be absent.
PairTerms pair_terms(const LossInputs& inputs, const Hyperparameters& params);
// h = g(r_w) - g(r_l) with g the f-divergence score (§2.19): r (reverse KL, the default),
// -e^{-r} (forward KL), log σ(r) (Jensen-Shannon), e^{(α-1) r} / (α - 1) (α-divergence).
// Exponents are capped at 80 as in TRL. Without f_divergence hyperparameters, h = r_w - r_l.
Tensor pair_margin(const PairTerms& terms, const Hyperparameters& params);
// r / max(1, |y|): the per-token averaged log-ratio of TRL's IPO and sigmoid_norm.
Tensor length_averaged(const Tensor& value, const Tensor& lengths);

// loss_i <- W_i loss_i when the pair_weights input is present (§2.20).
Tensor apply_pair_weights(const Tensor& per_example, const LossInputs& inputs);

// rewards/chosen|rejected|margins|accuracies from the per-example rewards c and d (already
// scaled, e.g. β r_w and β r_l) and logps/chosen|rejected from S_θ (§1.4).
void add_reward_metrics(Metrics& metrics, const Tensor& chosen_rewards, const Tensor& rejected_rewards,
                        const Tensor& policy_chosen, const Tensor& policy_rejected);
// The usual ending of a §2 loss: pair weights applied, the mean taken, and the standard
// metrics with rewards β r_w and β r_l (sums, even for losses that average, as TRL logs them).
LossResult standard_pair_result(const Tensor& per_example, const PairTerms& terms, double beta,
                                const LossInputs& inputs);
// The same with the names of SPIN (rewards/real, rewards/generated) or any other prefix pair.
void add_reward_metrics(Metrics& metrics, const Tensor& chosen_rewards, const Tensor& rejected_rewards,
                        const std::string& chosen_name, const std::string& rejected_name);

}  // namespace lamina::train
