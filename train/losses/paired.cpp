// Paired losses with a reference model, preference-losses.md §2.1-2.12. Notation of the spec:
// r_w, r_l the chosen / rejected log-ratios, h = r_w - r_l, sp = softplus, σ = sigmoid.
// Every per-example loss is averaged over the batch (after optional WPO pair weights).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "train/losses/families.h"
#include "train/losses/pairs.h"
#include "train/losses/state.h"

namespace lamina::train {
namespace {

// ---- §2.1 DPO: sp(-β h)
LossResult sigmoid_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  return standard_pair_result(softplus(pair_margin(terms, params) * -beta), terms, beta, inputs);
}

// ---- §2.2 cDPO: (1-ε) sp(-β h) + ε sp(β h)
LossResult cdpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta"), epsilon = params.real("label_smoothing");
  const Tensor logits = pair_margin(terms, params) * beta;
  return standard_pair_result(softplus(-logits) * (1 - epsilon) + softplus(logits) * epsilon, terms, beta, inputs);
}

// ---- §2.3 robust DPO: [(1-ε) sp(-β h) - ε sp(β h)] / (1 - 2ε), unbiased under flip rate ε
LossResult robust_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta"), epsilon = params.real("label_smoothing");
  const Tensor logits = pair_margin(terms, params) * beta;
  const Tensor losses = (softplus(-logits) * (1 - epsilon) - softplus(logits) * epsilon) / (1 - 2 * epsilon);
  return standard_pair_result(losses, terms, beta, inputs);
}

// ---- §2.4 hinge (RSO): max(0, 1 - β h)
LossResult hinge_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  return standard_pair_result(relu(1.0 - pair_margin(terms, params) * beta), terms, beta, inputs);
}

// ---- §2.5 IPO: (h - 1/(2β))², with h length-averaged (TRL, default) or summed (paper)
LossResult ipo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  Tensor margin = terms.chosen_ratios - terms.rejected_ratios;
  if (params.choice("ipo_normalization") == "average") {
    require(inputs.has("chosen_lengths") && inputs.has("rejected_lengths"), params,
            "ipo_normalization=average needs chosen_lengths and rejected_lengths");
    margin = length_averaged(terms.chosen_ratios, inputs.get("chosen_lengths")) -
             length_averaged(terms.rejected_ratios, inputs.get("rejected_lengths"));
  }
  return standard_pair_result(square(margin - 1.0 / (2 * beta)), terms, beta, inputs);
}

// ---- §2.6 EXO: KL(q_θ || p_label), q_θ = (σ(βh), σ(-βh)), p_label = (1-ε, ε); log σ = -sp(-·)
LossResult exo_pair_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta"), epsilon = params.real("label_smoothing");
  const Tensor logits = pair_margin(terms, params) * beta;
  const Tensor losses = sigmoid(logits) * (log_sigmoid(logits) - std::log1p(-epsilon)) +
                        sigmoid(-logits) * (log_sigmoid(-logits) - std::log(epsilon));
  return standard_pair_result(losses, terms, beta, inputs);
}

// ---- §2.7 NCA: sp(-β r_w) + ½ sp(β r_w) + ½ sp(β r_l)
LossResult nca_pair_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor chosen = terms.chosen_ratios * beta, rejected = terms.rejected_ratios * beta;
  const Tensor losses = softplus(-chosen) + softplus(chosen) * 0.5 + softplus(rejected) * 0.5;
  return standard_pair_result(losses, terms, beta, inputs);
}

// ---- §2.8 BCO pair: sp(-(β r_w - δ)) + sp(β r_l - δ); δ = 0 (current TRL, default) or TRL
// <= 0.28's running mean of the batch means of {β r_w, β r_l}, updated before use.
LossResult bco_pair_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor chosen = terms.chosen_ratios * beta, rejected = terms.rejected_ratios * beta;
  double delta = 0;
  if (params.flag("running_baseline")) {
    auto* baseline = dynamic_cast<RunningRewardBaseline*>(state);
    require(baseline != nullptr, params, "running_baseline=true needs its RunningRewardBaseline state");
    std::vector<double> rewards = values_of(chosen), rejected_values = values_of(rejected);
    rewards.insert(rewards.end(), rejected_values.begin(), rejected_values.end());
    baseline->update({mean_of(rewards)});
    delta = baseline->mean();
  }
  LossResult result = standard_pair_result(softplus(delta - chosen) + softplus(rejected - delta), terms, beta, inputs);
  result.metrics.add("delta", delta);
  return result;
}

// ---- §2.9 SPPO hard (TRL): (r_w - 1/(2β))² + (r_l + 1/(2β))²
LossResult sppo_hard_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta"), target = 1.0 / (2 * beta);
  const Tensor losses = square(terms.chosen_ratios - target) + square(terms.rejected_ratios + target);
  return standard_pair_result(losses, terms, beta, inputs);
}

// ---- §2.9 / §6.3 SPPO soft (paper): ½[(r_w - (P_w - ½)/β)² + (r_l - (P_l - ½)/β)²], π_ref = π_t
LossResult sppo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor chosen_target = (inputs.get("chosen_win_rates") - 0.5) / beta;
  const Tensor rejected_target = (inputs.get("rejected_win_rates") - 0.5) / beta;
  const Tensor losses =
      (square(terms.chosen_ratios - chosen_target) + square(terms.rejected_ratios - rejected_target)) * 0.5;
  return standard_pair_result(losses, terms, beta, inputs);
}

// ---- §2.10 AOT: sort two batch quantities ascending, pair them by rank, δ_k = a_(k) - b_(k),
// L = mean_k [(1-ε) sp(-β δ_k) + ε sp(β δ_k)]. The sort is a permutation chosen from the
// values; the gradient flows back through index_select to the original elements.
Tensor sorted(const Tensor& x) {
  const std::vector<double> values = values_of(x);
  std::vector<int64_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return values[size_t(a)] < values[size_t(b)]; });
  return index_select(x, 0, Tensor::from_vector(order, {int64_t(order.size())}));
}

LossResult aot_result(const Tensor& first, const Tensor& second, const PairTerms& terms, const Hyperparameters& params,
                      const LossInputs& inputs) {
  require(first.size(0) > 1, params, "sorts across the batch, so it needs a batch of at least 2 pairs");
  const double beta = params.real("beta"), epsilon = params.real("label_smoothing");
  const Tensor logits = (sorted(first) - sorted(second)) * beta;
  const Tensor losses = softplus(-logits) * (1 - epsilon) + softplus(logits) * epsilon;
  Metrics metrics;
  add_reward_metrics(metrics, terms.chosen_ratios * beta, terms.rejected_ratios * beta, terms.policy_chosen,
                     terms.policy_rejected);
  return batch_result(mean(losses), std::move(metrics));  // per-rank losses are not per-example
}

// Paired: u = S_θ(y_w) - S_θ(y_l) against v = S_ref(y_w) - S_ref(y_l).
LossResult aot_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const Tensor policy = terms.policy_chosen - terms.policy_rejected;
  const Tensor reference = policy - (terms.chosen_ratios - terms.rejected_ratios);
  return aot_result(policy, reference.detach(), terms, params, inputs);
}

// Unpaired: the chosen log-ratios against the rejected ones.
LossResult aot_unpaired_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  return aot_result(terms.chosen_ratios, terms.rejected_ratios, terms, params, inputs);
}

// ---- §2.11 APO-zero: [1 - σ(β r_w)] + σ(β r_l);  APO-down: σ(β r_w) + [1 - σ(β h)]
LossResult apo_zero_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor losses = one_minus_sigmoid(terms.chosen_ratios * beta) + sigmoid(terms.rejected_ratios * beta);
  return standard_pair_result(losses, terms, beta, inputs);
}

LossResult apo_down_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta");
  const Tensor losses =
      sigmoid(terms.chosen_ratios * beta) + one_minus_sigmoid((terms.chosen_ratios - terms.rejected_ratios) * beta);
  return standard_pair_result(losses, terms, beta, inputs);
}

// ---- §2.12 DiscoPOP: ρ = β h, m = σ(ρ/τ), L = (1 - m) sp(-ρ) + m e^{-ρ}; the second term as
// exp(log σ(ρ/τ) - ρ) so that it stays finite (-> 0) where e^{-ρ} alone would overflow.
LossResult discopop_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const PairTerms terms = pair_terms(inputs, params);
  const double beta = params.real("beta"), tau = params.real("discopop_tau");
  const Tensor rho = pair_margin(terms, params) * beta;
  const Tensor losses = one_minus_sigmoid(rho / tau) * softplus(-rho) + exp(log_sigmoid(rho / tau) - rho);
  return standard_pair_result(losses, terms, beta, inputs);
}

std::unique_ptr<LossState> make_running_baseline() { return std::make_unique<RunningRewardBaseline>(); }

InputSpec lengths_for_average(InputSpec spec) {
  spec.help += " (needed for ipo_normalization=average)";
  return spec;
}

ParamSpec label_smoothing(double default_value, Range range, const std::string& help) {
  return real_param("label_smoothing", default_value, range, help);
}

const char* const kTrlDpo = "TRL 1.16 DPOConfig";

// A §2 registry row: the four log-prob inputs plus `extra_inputs`; β, reference_free and,
// for losses of h alone, the f-divergence hyperparameters, plus `extra_params`.
LossDefinition row(std::string name, std::string section, std::string summary, LossFunction compute,
                   bool margin_only, std::vector<ParamSpec> extra_params = {}, std::vector<InputSpec> extra_inputs = {},
                   double default_beta = 0.1) {
  std::vector<InputSpec> inputs = paired_inputs(/*reference_optional=*/true);
  // AOT's terms are per rank after sorting, not per example: no WPO pair weights (TRL forbids them too).
  if (name.rfind("aot", 0) == 0) inputs.pop_back();
  inputs.insert(inputs.end(), extra_inputs.begin(), extra_inputs.end());
  std::vector<ParamSpec> params{beta_param(default_beta), reference_free_param()};
  if (margin_only) {
    for (ParamSpec& spec : f_divergence_params()) params.push_back(std::move(spec));
  }
  params.insert(params.end(), extra_params.begin(), extra_params.end());
  // Every default not marked otherwise is TRL's DPOConfig default (§2 losses are its loss types).
  return {std::move(name), std::move(section), std::move(summary), std::move(inputs),
          all_sourced(std::move(params), kTrlDpo), compute};
}

}  // namespace

std::vector<LossDefinition> paired_reference_losses() {
  std::vector<LossDefinition> rows;
  rows.push_back(row("sigmoid", "2.1", "DPO: sp(-β h)", sigmoid_loss, true));
  rows.back().aliases = {"dpo"};
  rows.push_back(row("cdpo", "2.2", "conservative DPO: (1-ε) sp(-β h) + ε sp(β h)", cdpo_loss, true,
                     {sourced(label_smoothing(0.1, between(0, 0.5, false, true), "ε: assumed label-flip probability"),
                              "spec §2.2 (cdpo is not a TRL 1.x loss type)")}));
  rows.push_back(row("robust", "2.3", "robust DPO: [(1-ε) sp(-β h) - ε sp(β h)] / (1-2ε)", robust_loss, true,
                     {label_smoothing(0.0, between(0, 0.5, false, true),
                                      "ε: label-flip rate the loss corrects for (0 = DPO; the paper suggests 0.1)")}));
  rows.push_back(row("hinge", "2.4", "RSO hinge: max(0, 1 - β h)", hinge_loss, true));
  rows.push_back(row("ipo", "2.5", "IPO: (h - 1/(2β))², h length-averaged (TRL) or summed (paper)", ipo_loss, false,
                     {sourced(choice_param("ipo_normalization", "average", {"average", "sum"},
                                           "average: h = r_w/|y_w| - r_l/|y_l| (TRL); sum: h = r_w - r_l (paper Eq. 17)"),
                              "lamina: TRL's behaviour")},
                     {lengths_for_average(chosen_lengths(/*required=*/false)),
                      lengths_for_average(rejected_lengths(/*required=*/false))}));
  rows.push_back(row("exo_pair", "2.6", "EXO: KL((σ(βh), σ(-βh)) || (1-ε, ε))", exo_pair_loss, true,
                     {sourced(label_smoothing(1e-3, between(0, 1, true, true), "ε of the label distribution (must be > 0)"),
                              "spec §2.6 (TRL's 0 is an error for exo_pair; the paper's 1e-3)")}));
  rows.push_back(row("nca_pair", "2.7", "NCA: sp(-β r_w) + ½ sp(β r_w) + ½ sp(β r_l)", nca_pair_loss, false));
  rows.push_back(row("bco_pair", "2.8", "paired BCO: sp(-(β r_w - δ)) + sp(β r_l - δ)", bco_pair_loss, false,
                     {sourced(flag_param("running_baseline", false,
                                         "subtract TRL <= 0.28's running reward baseline δ (stateful); off: δ = 0 (TRL >= 0.29)"),
                              "lamina: TRL 1.x's behaviour")}));
  rows.back().make_state = make_running_baseline;
  rows.push_back(row("sppo_hard", "2.9", "SPPO hard: (r_w - 1/(2β))² + (r_l + 1/(2β))²", sppo_hard_loss, false));
  rows.push_back(row("sppo", "2.9, 6.3", "SPPO soft: ½[(r_w - (P_w-½)/β)² + (r_l - (P_l-½)/β)²], π_ref = π_t", sppo_loss,
                     false, {},
                     {data_sequence("chosen_win_rates", ValueKind::probability, "P_w: estimated win rate of y_w against π_t"),
                      data_sequence("rejected_win_rates", ValueKind::probability, "P_l: estimated win rate of y_l against π_t")},
                     0.001));
  for (ParamSpec& spec : rows.back().params)
    if (spec.name == "beta") spec.source = "spec §2.9 (the authors' β; soft SPPO is not a TRL loss)";
  rows.push_back(row("aot", "2.10", "AOT: DPO on rank-matched sorted policy vs reference margins (batch-level)", aot_loss,
                     false, {label_smoothing(0, between(0, 0.5, false, true), "ε: cDPO-style smoothing of the sorted terms")}));
  rows.push_back(row("aot_unpaired", "2.10", "AOT unpaired: DPO on rank-matched sorted r_w vs r_l (batch-level)",
                     aot_unpaired_loss, false,
                     {label_smoothing(0, between(0, 0.5, false, true), "ε: cDPO-style smoothing of the sorted terms")}));
  rows.push_back(row("apo_zero", "2.11", "APO-zero: [1 - σ(β r_w)] + σ(β r_l)", apo_zero_loss, false));
  rows.push_back(row("apo_down", "2.11", "APO-down: σ(β r_w) + [1 - σ(β h)]", apo_down_loss, false));
  rows.push_back(row("discopop", "2.12", "DiscoPOP: (1-σ(ρ/τ)) sp(-ρ) + σ(ρ/τ) e^{-ρ}, ρ = β h", discopop_loss, true,
                     {real_param("discopop_tau", 0.05, above(0), "τ: temperature of the mixing weight σ(ρ/τ)")}));
  return rows;
}

}  // namespace lamina::train
