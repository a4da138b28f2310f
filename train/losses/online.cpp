// Iterative and online losses, preference-losses.md §6: the pairwise maths once responses are
// sampled and scored (the sample -> score -> pair loop belongs to the trainer). SPPO's soft
// loss (§6.3) is the `sppo` row of paired.cpp.
#include "train/losses/families.h"
#include "train/losses/pairs.h"

namespace lamina::train {
namespace {

// Per example: sp(-β h) for loss_type sigmoid, (h - 1/(2β))² (sum form) for ipo.
Tensor dpo_or_ipo(const Tensor& margin, double beta, const std::string& loss_type) {
  return loss_type == "ipo" ? square(margin - 1.0 / (2 * beta)) : softplus(margin * -beta);
}

// ---- §6.1 Online DPO: DPO or IPO on pairs labelled by a reward model or judge
LossResult online_dpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor losses = dpo_or_ipo(terms.chosen_ratios - terms.rejected_ratios, beta, params.choice("loss_type"));
  LossResult result = standard_pair_result(losses, terms, beta, inputs);
  if (inputs.has("chosen_scores") && inputs.has("rejected_scores")) {
    const std::vector<double> chosen = values_of(inputs.get("chosen_scores"));
    const std::vector<double> rejected = values_of(inputs.get("rejected_scores"));
    result.metrics.add("objective/scores_chosen", mean_of(chosen));
    result.metrics.add("objective/scores_rejected", mean_of(rejected));
    result.metrics.add("objective/scores_margin", mean_of(chosen) - mean_of(rejected));
  }
  return result;
}

// ---- §6.2 SPIN: sp(-β [(S_θ(y) - S_t(y)) - (S_θ(y') - S_t(y'))]) (or the hinge), y the real
// SFT response, y' the previous iterate's generation, π_t the opponent.
LossResult spin_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor& real = inputs.get("policy_real_logps");
  const Tensor& generated = inputs.get("policy_generated_logps");
  const Tensor real_ratios = real - inputs.get("opponent_real_logps");
  const Tensor generated_ratios = generated - inputs.get("opponent_generated_logps");
  const double beta = params.real("beta");
  const Tensor margin = (real_ratios - generated_ratios) * beta;
  const Tensor losses = params.choice("loss_type") == "hinge" ? relu(1.0 - margin) : softplus(-margin);
  Metrics metrics;
  add_reward_metrics(metrics, real_ratios * beta, generated_ratios * beta, "real", "generated");
  metrics.add("logps/real", mean_of(values_of(real)));
  metrics.add("logps/generated", mean_of(values_of(generated)));
  return mean_result(losses, std::move(metrics));
}

// ---- §6.4 INPO: h = Δ_θ - (τ/η) Δ_ref - ((η-τ)/η) Δ_t, L = (h - 1/(2η))²
LossResult inpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const double eta = params.real("eta"), tau = params.real("tau");
  require(tau < eta, params, str_cat("needs 0 <= tau < eta, got tau = ", tau, ", eta = ", eta));
  const PairTerms terms = pair_terms(inputs, params);
  const Tensor policy = terms.policy_chosen - terms.policy_rejected;
  const Tensor reference = policy - (terms.chosen_ratios - terms.rejected_ratios);
  const Tensor iterate = inputs.get("iterate_chosen_logps") - inputs.get("iterate_rejected_logps");
  const Tensor h = policy - reference * (tau / eta) - iterate * ((eta - tau) / eta);
  const Tensor offset = h - 1.0 / (2 * eta);
  Metrics metrics;
  add_reward_metrics(metrics, terms.chosen_ratios * eta, terms.rejected_ratios * eta, terms.policy_chosen,
                     terms.policy_rejected);
  metrics.add("inpo/h", mean_of(values_of(h)));
  metrics.add("inpo/h_minus_target", mean_of(values_of(offset)));
  return mean_result(apply_pair_weights(square(offset), inputs), std::move(metrics));
}

// ---- §6.5 REBEL / §6.6 REFUEL: Δ = (S_θ(y) - S_t(y)) - (S_θ(y') - S_t(y')), ΔR = R(y) - R(y');
// code form (Δ - η ΔR)² (what the released runs use), paper form (Δ/η - ΔR)² = code / η².
LossResult rebel_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor first_ratios = inputs.get("policy_first_logps") - inputs.get("iterate_first_logps");
  const Tensor second_ratios = inputs.get("policy_second_logps") - inputs.get("iterate_second_logps");
  const Tensor delta = first_ratios - second_ratios;
  const Tensor reward_gap = inputs.get("first_rewards") - inputs.get("second_rewards");
  const double eta = params.real("eta");
  const Tensor losses = params.choice("form") == "paper" ? square(delta / eta - reward_gap)
                                                         : square(delta - reward_gap * eta);
  std::vector<double> aligned;
  for (double d : values_of(delta)) aligned.push_back(d > 0 ? 1.0 : 0.0);
  Metrics metrics;
  metrics.add("sign_align", mean_of(aligned));
  metrics.add("logratios/first", mean_of(values_of(first_ratios)));
  metrics.add("logratios/second", mean_of(values_of(second_ratios)));
  metrics.add("reward_gap", mean_of(values_of(reward_gap)));
  return mean_result(losses, std::move(metrics));
}

// ---- §6.7 Nash-MD surrogate: β Σ_t sg(lp_t - lr_t) lp_t - (P - ½) Σ_t lp_t, P = σ(score(y) - score(y')).
// Its value is not meaningful; its gradient in lp_t is β (lp_t - lr_t) - (P - ½).
LossResult nash_md_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor& mask = inputs.get("completion_mask");
  const Tensor& policy = inputs.get("policy_token_logps");
  const Tensor log_ratio = (policy - inputs.get("reference_token_logps")).detach();
  const Tensor probability = sigmoid(inputs.get("policy_sample_scores") - inputs.get("mixture_sample_scores"));
  const Tensor kl = masked_row_sum(log_ratio * policy, mask);
  const Tensor score = (probability - 0.5) * masked_row_sum(policy, mask);
  const Tensor losses = kl * params.real("beta") - score;
  const std::vector<double> ratio_sums = values_of(masked_row_sum(log_ratio, mask));
  std::vector<double> positive;
  for (double s : ratio_sums) positive.push_back(s > 0 ? 1.0 : 0.0);
  Metrics metrics;
  metrics.add("rewards/chosen", mean_of(values_of(inputs.get("policy_sample_scores"))));
  metrics.add("rewards/rejected", mean_of(values_of(inputs.get("mixture_sample_scores"))));
  metrics.add("rewards/probabilities", mean_of(values_of(probability)));
  metrics.add("rewards/margins", mean_of(ratio_sums));
  metrics.add("rewards/accuracies", mean_of(positive));
  metrics.add("loss/kl", mean_of(values_of(kl)));
  metrics.add("loss/score", mean_of(values_of(score)));
  return mean_result(losses, std::move(metrics));
}

// ---- §6.8 XPO: the higher-scored of y ~ π_θ and ỹ ~ π_ref is chosen (y wins ties); DPO or IPO on
// that pair, plus α S_θ(ỹ) (the exploration bonus: minimising it lowers the reference sample).
LossResult xpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor& policy_on_policy = inputs.get("policy_logps_policy_sample");
  const Tensor& policy_on_reference = inputs.get("policy_logps_reference_sample");
  const Tensor policy_sample_ratios = policy_on_policy - inputs.get("reference_logps_policy_sample");
  const Tensor reference_sample_ratios = policy_on_reference - inputs.get("reference_logps_reference_sample");
  const Tensor policy_wins = ops::compare(ops::CompareOp::ge, inputs.get("policy_sample_scores"),
                                          inputs.get("reference_sample_scores"));
  const PairTerms terms{where(policy_wins, policy_on_policy, policy_on_reference),
                        where(policy_wins, policy_on_reference, policy_on_policy),
                        where(policy_wins, policy_sample_ratios, reference_sample_ratios),
                        where(policy_wins, reference_sample_ratios, policy_sample_ratios)};
  const double beta = params.real("beta");
  const Tensor dpo = dpo_or_ipo(terms.chosen_ratios - terms.rejected_ratios, beta, params.choice("loss_type"));
  const Tensor bonus = policy_on_reference * params.real("alpha");
  LossResult result = standard_pair_result(dpo + bonus, terms, beta, inputs);
  result.metrics.add("loss/dpo", mean_of(values_of(dpo)));
  result.metrics.add("loss/xpo", mean_of(values_of(bonus)));
  return result;
}

ParamSpec sigmoid_or_ipo() {
  return choice_param("loss_type", "sigmoid", {"sigmoid", "ipo"}, "sigmoid: sp(-β h); ipo: (h - 1/(2β))² (sums)");
}

std::vector<InputSpec> rebel_inputs(const std::string& what) {
  return {policy_sequence("policy_first_logps", "S_θ(y) of the first " + what),
          policy_sequence("policy_second_logps", "S_θ(y') of the second " + what),
          frozen_sequence("iterate_first_logps", "S_t(y) under the sampling iterate π_t"),
          frozen_sequence("iterate_second_logps", "S_t(y') under π_t"),
          data_sequence("first_rewards", ValueKind::real, "R(y)"),
          data_sequence("second_rewards", ValueKind::real, "R(y')")};
}

std::vector<ParamSpec> rebel_params() {
  return all_sourced(
      {real_param("eta", 1.0, above(0), "η: scale between log-ratio and reward gaps (reward-unit dependent)"),
       choice_param("form", "code", {"code", "paper"}, "code: (Δ - η ΔR)² (released runs); paper: (Δ/η - ΔR)²")},
      "spec §6.5 (the authors' code; REBEL/REFUEL are not in TRL)");
}

}  // namespace

std::vector<LossDefinition> online_losses() {
  std::vector<InputSpec> online_dpo_inputs = paired_inputs(/*reference_optional=*/false);
  online_dpo_inputs.push_back(data_sequence("chosen_scores", ValueKind::real, "reward score of y_w (metrics)", false));
  online_dpo_inputs.push_back(data_sequence("rejected_scores", ValueKind::real, "reward score of y_l (metrics)", false));
  std::vector<InputSpec> inpo_inputs = paired_inputs(/*reference_optional=*/false);
  inpo_inputs.push_back(frozen_sequence("iterate_chosen_logps", "S_t(y_w) under the current iterate π_t"));
  inpo_inputs.push_back(frozen_sequence("iterate_rejected_logps", "S_t(y_l) under π_t"));

  std::vector<LossDefinition> rows;
  rows.push_back({"online_dpo", "6.1", "online DPO: DPO (or IPO, sum form) on freshly sampled, scored pairs",
                  online_dpo_inputs, all_sourced({beta_param(), sigmoid_or_ipo()}, "TRL 1.16 OnlineDPOConfig"),
                  online_dpo_loss});
  rows.push_back({"spin", "6.2", "SPIN: sp(-β [(S_θ - S_t)(real) - (S_θ - S_t)(generated)])",
                  {policy_sequence("policy_real_logps", "S_θ(y) of the human SFT response"),
                   policy_sequence("policy_generated_logps", "S_θ(y') of the response generated by π_t"),
                   frozen_sequence("opponent_real_logps", "S_t(y) under the opponent (previous iterate)"),
                   frozen_sequence("opponent_generated_logps", "S_t(y') under the opponent")},
                  all_sourced({beta_param(), choice_param("loss_type", "sigmoid", {"sigmoid", "hinge"},
                                                          "sigmoid: sp(-β Δ); hinge: max(0, 1 - β Δ)")},
                              "spec §6.2 (the authors' code; SPIN is not in TRL)"),
                  spin_loss});
  rows.push_back({"inpo", "6.4", "INPO: (Δ_θ - (τ/η) Δ_ref - ((η-τ)/η) Δ_t - 1/(2η))²", inpo_inputs,
                  all_sourced({real_param("eta", 0.0075, above(0), "η: inverse OMD step size"),
                               real_param("tau", 0.0025, at_least(0), "τ: KL-to-reference strength, 0 <= τ < η")},
                              "spec §6.4 (released configs; INPO is not in TRL)"),
                  inpo_loss});
  rows.push_back({"rebel", "6.5", "REBEL: (Δ - η (R(y) - R(y')))², Δ the log-ratio gap against π_t",
                  rebel_inputs("response"), rebel_params(), rebel_loss});
  rows.push_back({"refuel", "6.6", "REFUEL: REBEL's regression on the two diverging turns h (future rewards)",
                  rebel_inputs("turn-h response (only its tokens scored)"), rebel_params(), rebel_loss});
  rows.push_back({"nash_md", "6.7", "Nash-MD surrogate: β Σ sg(lp - lr) lp - (P - ½) Σ lp",
                  {policy_tokens("policy_token_logps", "completion_mask", "lp_t: policy log-probs of the policy sample"),
                   frozen_tokens("reference_token_logps", "completion_mask", "lr_t: reference log-probs of the same tokens"),
                   data_sequence("policy_sample_scores", ValueKind::real, "score(y) of the policy sample"),
                   data_sequence("mixture_sample_scores", ValueKind::real, "score(y') of the geometric-mixture sample")},
                  all_sourced({beta_param()}, "TRL 1.0 NashMDConfig"), nash_md_loss});
  rows.push_back({"xpo", "6.8", "XPO: DPO on (policy sample, reference sample) ordered by score + α S_θ(ỹ)",
                  {policy_sequence("policy_logps_policy_sample", "S_θ(y), y ~ π_θ"),
                   frozen_sequence("reference_logps_policy_sample", "S_ref(y)"),
                   policy_sequence("policy_logps_reference_sample", "S_θ(ỹ), ỹ ~ π_ref"),
                   frozen_sequence("reference_logps_reference_sample", "S_ref(ỹ)"),
                   data_sequence("policy_sample_scores", ValueKind::real, "score(y)"),
                   data_sequence("reference_sample_scores", ValueKind::real, "score(ỹ)"), pair_weights()},
                  all_sourced({beta_param(), real_param("alpha", 1e-5, at_least(0), "α: weight of the exploration term S_θ(ỹ)"),
                               sigmoid_or_ipo()},
                              "TRL 1.0 XPOConfig"),
                  xpo_loss});
  return rows;
}

}  // namespace lamina::train
