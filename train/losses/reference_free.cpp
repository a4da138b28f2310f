// Paired losses without a reference model, preference-losses.md §4: CPO (with its sigmoid,
// hinge, ipo and simpo forms), SimPO and ORPO. Inputs are the summed policy log-probs and the
// response lengths; the averaged forms divide here (§3: keep sums and counts, divide late).
#include "train/losses/families.h"
#include "train/losses/pairs.h"

namespace lamina::train {
namespace {

// Σ_i -S_θ(y_w,i) / Σ_i |y_w,i|: TRL's token-mean cross-entropy over the chosen response tokens.
Tensor chosen_token_nll(const Tensor& logps, const Tensor& lengths) {
  const double tokens = sum(lengths).item<double>();
  return tokens > 0 ? sum(-logps) / tokens : sum(logps) * 0.0;
}

// ---- §4.1 CPO family. s_w, s_l are sums (sigmoid, hinge) or averages (ipo, simpo), optionally
// AlphaPO-transformed s -> (1 - e^{-α s}) / α; Δ = s_w - s_l;
//   sigmoid: (1-ε) sp(-β Δ) + ε sp(β Δ)     hinge: max(0, 1 - β Δ)
//   ipo:     (Δ - 1/(2β))²                  simpo: (1-ε) sp(-(β Δ - γ)) + ε sp(β Δ - γ)
// plus cpo_alpha × the chosen token-mean NLL.
LossResult cpo_family(const LossInputs& inputs, const Hyperparameters& params, const std::string& variant) {
  const Tensor& policy_chosen = inputs.get("policy_chosen_logps");
  const Tensor& policy_rejected = inputs.get("policy_rejected_logps");
  const Tensor& chosen_lengths = inputs.get("chosen_lengths");
  const bool averaged = variant == "ipo" || variant == "simpo";
  if (averaged) require(inputs.has("rejected_lengths"), params, "the averaged forms need rejected_lengths");
  // TRL's logps of these forms: averages for ipo/simpo (what logps/* report), sums otherwise.
  const Tensor chosen_logps = averaged ? length_averaged(policy_chosen, chosen_lengths) : policy_chosen;
  const Tensor rejected_logps =
      averaged ? length_averaged(policy_rejected, inputs.get("rejected_lengths")) : policy_rejected;
  Tensor chosen = chosen_logps, rejected = rejected_logps;
  const double alpha = params.real("alpha");
  if (alpha != 0) {
    chosen = (1.0 - capped_exp(chosen * -alpha)) / alpha;
    rejected = (1.0 - capped_exp(rejected * -alpha)) / alpha;
  }
  const double beta = params.real("beta");
  const double smoothing = params.has("label_smoothing") ? params.real("label_smoothing") : 0.0;
  const Tensor delta = chosen - rejected;
  Tensor losses;
  if (variant == "hinge") {
    losses = relu(1.0 - delta * beta);
  } else if (variant == "ipo") {
    losses = square(delta - 1.0 / (2 * beta));
  } else {
    const Tensor logits = variant == "simpo" ? delta * beta - params.real("simpo_gamma") : delta * beta;
    losses = softplus(-logits) * (1 - smoothing) + softplus(logits) * smoothing;
  }
  const Tensor nll = chosen_token_nll(policy_chosen, chosen_lengths);
  Metrics metrics;
  add_reward_metrics(metrics, chosen * beta, rejected * beta, chosen_logps, rejected_logps);
  metrics.add("nll_loss", nll.item<double>());
  LossResult result = batch_result(mean(losses) + nll * params.real("cpo_alpha"), std::move(metrics));
  result.losses = losses + nll * params.real("cpo_alpha");  // the NLL is one batch scalar, added to each
  return result;
}

LossResult cpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  return cpo_family(inputs, params, params.choice("loss_type"));
}

// ---- §4.2 SimPO: sp(-[β (A_θ(y_w) - A_θ(y_l)) - γ]) (+ cpo_alpha NLL, 0 by default)
LossResult simpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  return cpo_family(inputs, params, "simpo");
}

// ---- §4.3 ORPO: log odds(y) = A - log(1 - e^A) with A the average log-prob;
// ℓ = [A_w - A_l] - [log1mexp(A_w) - log1mexp(A_l)], L = NLL + λ sp(-ℓ).
// The NLL is over the chosen response tokens by default (paper); passing
// policy_chosen_nll_logps + chosen_nll_lengths (prompt tokens included) reproduces TRL.
LossResult orpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor& policy_chosen = inputs.get("policy_chosen_logps");
  const Tensor& policy_rejected = inputs.get("policy_rejected_logps");
  const Tensor chosen = length_averaged(policy_chosen, inputs.get("chosen_lengths"));
  const Tensor rejected = length_averaged(policy_rejected, inputs.get("rejected_lengths"));
  for (double average : values_of(cat({chosen, rejected}, 0)))
    require(average < 0, params, str_cat("average log-probs must be < 0 for the odds to exist, got ", average));
  const Tensor log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected));
  const bool full_nll = inputs.has("policy_chosen_nll_logps");
  require(full_nll == inputs.has("chosen_nll_lengths"), params,
          "policy_chosen_nll_logps and chosen_nll_lengths come together");
  const Tensor nll = full_nll ? chosen_token_nll(inputs.get("policy_chosen_nll_logps"), inputs.get("chosen_nll_lengths"))
                              : chosen_token_nll(policy_chosen, inputs.get("chosen_lengths"));
  const double lambda = params.real("beta");
  const Tensor odds_losses = softplus(-log_odds) * lambda;
  Metrics metrics;
  add_reward_metrics(metrics, chosen * lambda, rejected * lambda, chosen, rejected);  // TRL: averages
  metrics.add("log_odds_ratio", mean_of(values_of(log_sigmoid(log_odds))));
  metrics.add("log_odds_chosen", mean_of(values_of(log_odds)));
  metrics.add("nll_loss", nll.item<double>());
  LossResult result = batch_result(nll + mean(odds_losses), std::move(metrics));
  result.losses = odds_losses + nll;
  return result;
}

std::vector<InputSpec> cpo_inputs() {
  InputSpec rejected = rejected_lengths(/*required=*/false);
  rejected.help += " (needed for loss_type ipo and simpo)";
  return {policy_chosen_logps(), policy_rejected_logps(), chosen_lengths(), rejected};
}

ParamSpec cpo_alpha(double default_value) {
  return real_param("cpo_alpha", default_value, at_least(0), "weight of the chosen token-mean NLL");
}

ParamSpec alphapo_alpha() {
  return real_param("alpha", 0.0, any_real(), "AlphaPO: log-probs s -> (1 - e^{-α s})/α before the margin (0 = off)");
}

ParamSpec smoothing() {
  return real_param("label_smoothing", 0.0, between(0, 0.5, false, true), "ε: cDPO-style label smoothing");
}

}  // namespace

std::vector<LossDefinition> reference_free_losses() {
  const std::string kTrlCpo = "TRL 1.16 CPOConfig";
  std::vector<LossDefinition> rows;
  rows.push_back({"cpo", "4.1", "CPO: sp(-β (S_θ(y_w) - S_θ(y_l))) + α NLL; hinge/ipo/simpo forms via loss_type",
                  cpo_inputs(),
                  all_sourced({beta_param(), cpo_alpha(1.0),
                               choice_param("loss_type", "sigmoid", {"sigmoid", "hinge", "ipo", "simpo"},
                                            "sigmoid, hinge (sums) or ipo, simpo (per-token averages)"),
                               smoothing(), real_param("simpo_gamma", 0.5, at_least(0), "γ: target margin of loss_type=simpo"),
                               alphapo_alpha()},
                              kTrlCpo),
                  cpo_loss});
  rows.push_back({"simpo", "4.2", "SimPO: sp(-[β (A_θ(y_w) - A_θ(y_l)) - γ]) (+ cpo_alpha NLL: CPO-SimPO)",
                  {policy_chosen_logps(), policy_rejected_logps(), chosen_lengths(), rejected_lengths()},
                  all_sourced({beta_param(0.1, "β: scale of the average log-prob margin (authors use 2-10; TRL default 0.1)"),
                               real_param("simpo_gamma", 0.5, at_least(0), "γ: target reward margin (authors: γ/β 0.3-0.55)"),
                               smoothing(),
                               sourced(cpo_alpha(0.0), "spec §4.2: SimPO is CPOConfig(loss_type=simpo, cpo_alpha=0); "
                                                       "CPOConfig's 1.0 is CPO-SimPO (cpo --loss_type simpo)"),
                               alphapo_alpha()},
                              kTrlCpo),
                  simpo_loss});
  rows.push_back({"orpo", "4.3", "ORPO: NLL + λ sp(-log odds ratio) on average log-probs",
                  {policy_chosen_logps(), policy_rejected_logps(), chosen_lengths(), rejected_lengths(),
                   {"policy_chosen_nll_logps", InputShape::sequence, InputRole::policy, ValueKind::log_prob, false,
                    "summed log-prob of every non-pad token of the chosen row, prompt included (TRL's NLL)", ""},
                   data_sequence("chosen_nll_lengths", ValueKind::length,
                                 "token counts of policy_chosen_nll_logps (prompt included)", false)},
                  {sourced(beta_param(0.1, "λ: weight of the odds-ratio term (TRL calls it beta)"), "TRL 1.16 ORPOConfig")},
                  orpo_loss});
  return rows;
}

}  // namespace lamina::train
