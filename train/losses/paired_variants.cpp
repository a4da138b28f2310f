// Paired DPO variants, preference-losses.md §2.13-2.18, and SLiC's reference-free hinge (§2.4).
// The f-DPO scores (§2.19) and WPO weights (§2.20) are not losses of their own: they are the
// f_divergence_type hyperparameter of the margin-based losses and the pair_weights input of
// every per-example §2 loss. sDPO and TR-DPO (§2.21) are reference-model schedules for the
// trainer, and reference_free is a hyperparameter of the §2 losses.
#include "train/losses/families.h"
#include "train/losses/logprobs.h"
#include "train/losses/pairs.h"

namespace lamina::train {
namespace {

// The token-mean NLL of the chosen responses over the whole batch, Σ_i -S_θ(y_w,i) / Σ_i |y_w,i|
// (TRL's `sft` loss type, §2.14); 0 when the batch has no chosen tokens.
Tensor batch_token_nll(const Tensor& policy_chosen, const Tensor& lengths) {
  const double tokens = sum(lengths).item<double>();
  return tokens > 0 ? sum(-policy_chosen) / tokens : sum(policy_chosen) * 0.0;
}

// The paper's per-sequence form of RPO's NLL: mean_i -S_θ(y_w,i) / |y_w,i|.
Tensor sequence_mean_nll(const Tensor& policy_chosen, const Tensor& lengths) {
  return mean(-length_averaged(policy_chosen, lengths));
}

// ---- §2.13 sigmoid_norm: sp(-β h_avg), h_avg = r_w/|y_w| - r_l/|y_l|
LossResult sigmoid_norm_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor margin = length_averaged(terms.chosen_ratios, inputs.get("chosen_lengths")) -
                        length_averaged(terms.rejected_ratios, inputs.get("rejected_lengths"));
  return standard_pair_result(softplus(margin * -beta), terms, beta, inputs);
}

// ---- §2.14 sft: one batch scalar, broadcast to every example
LossResult sft_loss(const LossInputs& inputs, const Hyperparameters&, LossState*) {
  const Tensor& policy_chosen = inputs.get("policy_chosen_logps");
  const Tensor nll = batch_token_nll(policy_chosen, inputs.get("chosen_lengths"));
  Metrics metrics;
  metrics.add("nll_loss", nll.item<double>());
  metrics.add("logps/chosen", mean_of(values_of(policy_chosen)));
  return batch_result(nll, std::move(metrics));
}

// ---- §2.15 RPO: sp(-β h) + α NLL, the NLL as TRL (batch token mean) or the paper (per sequence)
LossResult rpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor& lengths = inputs.get("chosen_lengths");
  const Tensor nll = params.choice("rpo_nll") == "batch_tokens" ? batch_token_nll(terms.policy_chosen, lengths)
                                                                 : sequence_mean_nll(terms.policy_chosen, lengths);
  const Tensor dpo = apply_pair_weights(softplus(pair_margin(terms, params) * -beta), inputs);
  Metrics metrics;
  add_reward_metrics(metrics, terms.chosen_ratios * beta, terms.rejected_ratios * beta, terms.policy_chosen,
                     terms.policy_rejected);
  metrics.add("nll_loss", nll.item<double>());
  metrics.add("loss/dpo", mean(dpo).item<double>());
  return batch_result(mean(dpo) + nll * params.real("rpo_alpha"), std::move(metrics));
}

// ---- §2.16 DPOP: sp(-β [h - λ max(0, S_ref(y_w) - S_θ(y_w))])
LossResult dpop_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  // S_ref(y_w) - S_θ(y_w) = -r_w: the penalty is active when the chosen likelihood fell below π_ref.
  const Tensor penalty = relu(-terms.chosen_ratios) * params.real("dpop_lambda");
  LossResult result = standard_pair_result(softplus((pair_margin(terms, params) - penalty) * -beta), terms, beta, inputs);
  result.metrics.add("dpop/penalty", mean_of(values_of(penalty)));
  return result;
}

// ---- §2.17 R-DPO: sp(-[β h + α (|y_w| - |y_l|)]), the length term outside β
LossResult rdpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor length_term = (inputs.get("chosen_lengths") - inputs.get("rejected_lengths")) * params.real("rdpo_alpha");
  return standard_pair_result(softplus(-(pair_margin(terms, params) * beta + length_term)), terms, beta, inputs);
}

// ---- §2.18 LD-DPO: DPO on S^LD, the tail past the shared length ℓ weighted by α
LossResult ld_dpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const double beta = params.real("beta"), alpha = params.real("ld_alpha");
  const Tensor& chosen_mask = inputs.get("chosen_mask");
  const Tensor& rejected_mask = inputs.get("rejected_mask");
  const std::vector<double> shared = shared_lengths(chosen_mask, rejected_mask);
  const auto ld = [&](const char* name, const Tensor& mask) {
    return length_desensitized_logps(inputs.get(name), mask, shared, alpha);
  };
  PairTerms terms{ld("policy_chosen_token_logps", chosen_mask), ld("policy_rejected_token_logps", rejected_mask), {}, {}};
  terms.chosen_ratios = terms.policy_chosen - ld("reference_chosen_token_logps", chosen_mask);
  terms.rejected_ratios = terms.policy_rejected - ld("reference_rejected_token_logps", rejected_mask);
  return standard_pair_result(softplus(pair_margin(terms, params) * -beta), terms, beta, inputs);
}

// ---- §2.4 SLiC-HF calibration (no reference): max(0, δ - S_θ(y_w) + S_θ(y_l)) + λ_reg (-S_θ(y_sft))
LossResult slic_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor& chosen = inputs.get("policy_chosen_logps");
  const Tensor& rejected = inputs.get("policy_rejected_logps");
  Tensor losses = relu(params.real("margin") - chosen + rejected);
  const double weight = params.real("regularization");
  if (weight > 0) {
    require(inputs.has("policy_sft_logps"), params, "regularization > 0 needs policy_sft_logps");
    losses = losses - inputs.get("policy_sft_logps") * weight;
  }
  Metrics metrics;
  add_reward_metrics(metrics, chosen, rejected, chosen, rejected);
  return mean_result(losses, std::move(metrics));
}

InputSpec chosen_tokens(const char* name, bool policy, const char* help) {
  return policy ? policy_tokens(name, "chosen_mask", help) : frozen_tokens(name, "chosen_mask", help);
}

InputSpec rejected_tokens(const char* name, bool policy, const char* help) {
  return policy ? policy_tokens(name, "rejected_mask", help) : frozen_tokens(name, "rejected_mask", help);
}

const char* const kTrlDpo = "TRL 1.16 DPOConfig";

// β, reference_free and the f-divergence: TRL DPOConfig's options wherever they appear.
std::vector<ParamSpec> margin_params() {
  std::vector<ParamSpec> params{beta_param(), reference_free_param()};
  for (ParamSpec& spec : f_divergence_params()) params.push_back(std::move(spec));
  return all_sourced(std::move(params), kTrlDpo);
}

std::vector<ParamSpec> plus(std::vector<ParamSpec> params, const std::vector<ParamSpec>& extra) {
  params.insert(params.end(), extra.begin(), extra.end());
  return params;
}

std::vector<InputSpec> plus(std::vector<InputSpec> inputs, const std::vector<InputSpec>& extra) {
  inputs.insert(inputs.end(), extra.begin(), extra.end());
  return inputs;
}

}  // namespace

std::vector<LossDefinition> paired_variant_losses() {
  const std::vector<InputSpec> paired = paired_inputs(/*reference_optional=*/true);
  std::vector<LossDefinition> rows;
  rows.push_back({"sigmoid_norm", "2.13", "length-normalised DPO: sp(-β (r_w/|y_w| - r_l/|y_l|))",
                  plus(paired, {chosen_lengths(), rejected_lengths()}),
                  all_sourced({beta_param(), reference_free_param()}, kTrlDpo), sigmoid_norm_loss});
  rows.push_back({"sft", "2.14", "token-mean NLL of the chosen responses: Σ -S_θ(y_w) / Σ |y_w|",
                  {policy_chosen_logps(), chosen_lengths()}, {}, sft_loss});
  rows.push_back({"rpo", "2.15", "RPO: sp(-β h) + α NLL(chosen)", plus(paired, {chosen_lengths()}),
                  plus(margin_params(),
                       {sourced(real_param("rpo_alpha", 1.0, at_least(0), "α: weight of the chosen NLL"),
                                "spec §2.15 (the paper's α; TRL <= 0.28's rpo_alpha was unset = off)"),
                        sourced(choice_param("rpo_nll", "batch_tokens", {"batch_tokens", "per_sequence"},
                                             "batch_tokens: Σ -S_θ(y_w) / Σ |y_w| (TRL); per_sequence: mean -S_θ(y_w)/|y_w| (paper)"),
                                "lamina: TRL's behaviour")}),
                  rpo_loss});
  rows.push_back({"dpop", "2.16", "DPO-Positive: sp(-β [h - λ max(0, S_ref(y_w) - S_θ(y_w))])",
                  paired_inputs(/*reference_optional=*/false),
                  all_sourced({beta_param(), real_param("dpop_lambda", 50.0, at_least(0),
                                                        "λ: weight of the chosen-likelihood penalty")},
                              "spec §2.16 (DPOP is not in TRL)"),
                  dpop_loss});
  rows.push_back({"rdpo", "2.17", "R-DPO: sp(-[β h + α (|y_w| - |y_l|)])",
                  plus(paired, {chosen_lengths(), rejected_lengths()}),
                  plus(margin_params(),
                       {sourced(real_param("rdpo_alpha", 0.01, any_real(),
                                           "α of the length term (outside β); negative α flips the sign convention"),
                                "lamina: the paper's HH range (R-DPO is not in TRL)")}),
                  rdpo_loss});
  rows.push_back({"ld_dpo", "2.18", "LD-DPO: DPO on Σ_{t<=ℓ} lp_t + α Σ_{t>ℓ} lp_t, ℓ = min(|y_w|, |y_l|)",
                  {chosen_tokens("policy_chosen_token_logps", true, "per-token policy log-probs of y_w"),
                   rejected_tokens("policy_rejected_token_logps", true, "per-token policy log-probs of y_l"),
                   chosen_tokens("reference_chosen_token_logps", false, "per-token reference log-probs of y_w"),
                   rejected_tokens("reference_rejected_token_logps", false, "per-token reference log-probs of y_l"),
                   pair_weights()},
                  {sourced(beta_param(), kTrlDpo),
                   sourced(real_param("ld_alpha", 0.5, between(0, 1), "α: weight of the tokens past ℓ (1 = DPO)"),
                           "spec §2.18's example (TRL's ld_alpha is unset = off, i.e. plain DPO)")},
                  ld_dpo_loss});
  rows.push_back({"slic", "2.4", "SLiC-HF calibration: max(0, δ - S_θ(y_w) + S_θ(y_l)) + λ_reg (-S_θ(y_sft))",
                  {policy_chosen_logps(), policy_rejected_logps(),
                   {"policy_sft_logps", InputShape::sequence, InputRole::policy, ValueKind::log_prob, false,
                    "S_θ(y_sft): summed log-prob of the SFT target (for regularization > 0)", ""}},
                  all_sourced({real_param("margin", 1.0, at_least(0), "δ: the margin on S_θ(y_w) - S_θ(y_l)"),
                               real_param("regularization", 0.0, at_least(0), "λ_reg: weight of the SFT NLL term")},
                              "lamina (the SLiC-HF calibration loss is not in TRL)"),
                  slic_loss});
  return rows;
}

}  // namespace lamina::train
