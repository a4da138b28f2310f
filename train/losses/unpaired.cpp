// Unpaired losses on (x, y, label) examples, preference-losses.md §5: KTO, unpaired APO-zero and
// BCO. Per example r = S_θ(y) - S_ref(y); labels are true for desirable examples.
#include "train/losses/families.h"
#include "train/losses/pairs.h"
#include "train/losses/state.h"

namespace lamina::train {
namespace {

struct UnpairedTerms {
  Tensor policy;      // S_θ(y)
  Tensor ratios;      // r
  Tensor desirable;   // bool labels
  std::vector<bool> labels;
};

UnpairedTerms unpaired_terms(const LossInputs& inputs) {
  UnpairedTerms terms{inputs.get("policy_logps"), {}, inputs.get("labels"), {}};
  terms.ratios = terms.policy - inputs.get("reference_logps");
  terms.labels = terms.desirable.to_vector<bool>();
  return terms;
}

// Means of `values` over the desirable and the undesirable examples (NaN-free: 0 when a class
// is absent; `present` says which exist).
struct ClassMeans {
  double desirable = 0, undesirable = 0;
  double desirable_sum = 0, undesirable_sum = 0;
  double desirable_count = 0, undesirable_count = 0;
};

ClassMeans class_means(const std::vector<double>& values, const std::vector<bool>& labels) {
  ClassMeans means;
  for (size_t i = 0; i < values.size(); ++i) {
    (labels[i] ? means.desirable_sum : means.undesirable_sum) += values[i];
    (labels[i] ? means.desirable_count : means.undesirable_count) += 1;
  }
  if (means.desirable_count > 0) means.desirable = means.desirable_sum / means.desirable_count;
  if (means.undesirable_count > 0) means.undesirable = means.undesirable_sum / means.undesirable_count;
  return means;
}

// KTO's metrics: class means of β r and S_θ, their difference; no accuracies (no pairs).
void add_class_metrics(Metrics& metrics, const UnpairedTerms& terms, double beta) {
  const ClassMeans rewards = class_means(values_of(terms.ratios * beta), terms.labels);
  const ClassMeans logps = class_means(values_of(terms.policy), terms.labels);
  if (rewards.desirable_count > 0) metrics.add("rewards/chosen", rewards.desirable);
  if (rewards.undesirable_count > 0) metrics.add("rewards/rejected", rewards.undesirable);
  if (rewards.desirable_count > 0 && rewards.undesirable_count > 0)
    metrics.add("rewards/margins", rewards.desirable - rewards.undesirable);
  if (logps.desirable_count > 0) metrics.add("logps/chosen", logps.desirable);
  if (logps.undesirable_count > 0) metrics.add("logps/rejected", logps.undesirable);
}

// ---- §5.1 KTO: desirable λ_D [1 - σ(β (r - z))], undesirable λ_U [1 - σ(β (z - r))], plain mean
LossResult kto_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state) {
  const UnpairedTerms terms = unpaired_terms(inputs);
  const double beta = params.real("beta");
  const double desirable_weight = params.real("desirable_weight"), undesirable_weight = params.real("undesirable_weight");
  auto* estimate = dynamic_cast<KtoKlEstimate*>(state);
  const std::string& source = params.choice("kl_source");
  double z = 0;
  if (source == "batch") {
    require(inputs.has("policy_kl_logps") && inputs.has("reference_kl_logps"), params,
            "kl_source=batch needs policy_kl_logps and reference_kl_logps (the mismatched-pair log-probs)");
    // No gradient flows through z: the KL completions are read as plain values.
    const std::vector<double> kl = values_of(inputs.get("policy_kl_logps") - inputs.get("reference_kl_logps"));
    KtoKlEstimate local;
    z = (estimate != nullptr ? *estimate : local).estimate(kl);
  } else if (source == "last") {
    require(estimate != nullptr && estimate->has_estimate(), params,
            "kl_source=last needs a KtoKlEstimate state that has seen a training batch");
    z = estimate->last();
  }
  const Tensor scaled = (terms.ratios - z) * beta;
  const Tensor losses = where(terms.desirable, one_minus_sigmoid(scaled) * desirable_weight,
                              one_minus_sigmoid(-scaled) * undesirable_weight);
  Metrics metrics;
  metrics.add("kl", z);
  add_class_metrics(metrics, terms, beta);
  LossResult result = mean_result(losses, std::move(metrics));
  // Guidance of the KTO paper (Eq. 8), as TRL warns: λ_D n_D / (λ_U n_U) within [1, 4/3].
  const ClassMeans counts = class_means(std::vector<double>(terms.labels.size(), 0.0), terms.labels);
  if (counts.desirable_count > 0 && counts.undesirable_count > 0) {
    const double ratio = desirable_weight * counts.desirable_count / (undesirable_weight * counts.undesirable_count);
    if (ratio < 1.0 || ratio > 4.0 / 3.0)
      result.warnings.push_back(str_cat("KTO: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = ",
                                        ratio, " is outside the recommended [1, 4/3]"));
  }
  return result;
}

// ---- §5.2 APO-zero unpaired: desirable 1 - σ(β r), undesirable σ(β r); no KL term
LossResult apo_zero_unpaired_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const UnpairedTerms terms = unpaired_terms(inputs);
  const double beta = params.real("beta");
  const Tensor scaled = terms.ratios * beta;
  const Tensor losses = where(terms.desirable, one_minus_sigmoid(scaled), sigmoid(scaled));
  Metrics metrics;
  add_class_metrics(metrics, terms, beta);
  return mean_result(losses, std::move(metrics));
}

// ---- §5.3 BCO: ρ = β r; desirable sp(δ - ρ), undesirable sp(ρ - δ), δ the running baseline
// updated with this batch's rewards first. UDM: undesirable losses times
// clamp(p / (1 - p + 1e-8), 0.5, 10) with p = P(desirable | x) from a prompt classifier.
LossResult bco_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state) {
  const UnpairedTerms terms = unpaired_terms(inputs);
  const double beta = params.real("beta");
  auto* baseline = dynamic_cast<RunningRewardBaseline*>(state);
  require(baseline != nullptr, params, "needs its RunningRewardBaseline state (LossDefinition::make_state)");
  const Tensor rewards = terms.ratios * beta;
  baseline->update(values_of(rewards));
  const double delta = baseline->mean();
  Tensor undesirable = softplus(rewards - delta);
  if (const Tensor* probability = inputs.find("desirable_probabilities")) {
    const Tensor odds = *probability / (1.0 - *probability + 1e-8);
    undesirable = undesirable * clamp(odds, params.real("udm_min_weight"), params.real("udm_max_weight"));
  }
  const Tensor losses = where(terms.desirable, softplus(delta - rewards), undesirable);
  const ClassMeans reward_sums = class_means(values_of(rewards), terms.labels);
  const ClassMeans logp_sums = class_means(values_of(terms.policy), terms.labels);
  Metrics metrics;  // sums and counts: divide at logging time, after summing over ranks
  metrics.add("rewards/chosen_sum", reward_sums.desirable_sum);
  metrics.add("rewards/rejected_sum", reward_sums.undesirable_sum);
  metrics.add("logps/chosen_sum", logp_sums.desirable_sum);
  metrics.add("logps/rejected_sum", logp_sums.undesirable_sum);
  metrics.add("count/chosen", reward_sums.desirable_count);
  metrics.add("count/rejected", reward_sums.undesirable_count);
  metrics.add("delta", delta);
  return mean_result(losses, std::move(metrics));
}

// The aliases are TRL 1.x KTOTrainer's batch keys (label, ref_logps, KL_logps, ref_KL_logps).
std::vector<InputSpec> unpaired_inputs() {
  return {also_named(policy_sequence("policy_logps", "S_θ(y): summed log-prob of each completion under the policy"),
                     {"logps"}),
          also_named(frozen_sequence("reference_logps", "S_ref(y): summed log-prob of each completion under π_ref"),
                     {"ref_logps"}),
          also_named(data_sequence("labels", ValueKind::label,
                                   "true/1 for a desirable completion, false/0 for an undesirable one"),
                     {"label"})};
}

std::unique_ptr<LossState> make_kl_estimate() { return std::make_unique<KtoKlEstimate>(); }
std::unique_ptr<LossState> make_running_baseline() { return std::make_unique<RunningRewardBaseline>(); }

}  // namespace

std::vector<LossDefinition> unpaired_losses() {
  const std::string kTrlKto = "TRL 1.16 KTOConfig";
  std::vector<InputSpec> kto_inputs = unpaired_inputs();
  // The KL completions' policy log-probs carry no gradient (TRL computes them under no_grad):
  // to the loss they are frozen values.
  kto_inputs.push_back(also_named(
      frozen_sequence("policy_kl_logps", "S_θ(y'|x): policy log-prob of the mismatched (KL) completion, no gradient",
                      false),
      {"KL_logps"}));
  kto_inputs.push_back(also_named(
      frozen_sequence("reference_kl_logps", "S_ref(y'|x): reference log-prob of the KL completion", false),
      {"ref_KL_logps"}));
  std::vector<InputSpec> bco_inputs = unpaired_inputs();
  bco_inputs.push_back(data_sequence("desirable_probabilities", ValueKind::probability,
                                     "UDM: P(desirable | prompt) from the prompt classifier", false));

  std::vector<LossDefinition> rows;
  rows.push_back({"kto", "5.1", "KTO: λ_D [1 - σ(β (r - z))] or λ_U [1 - σ(β (z - r))], z the batch KL estimate",
                  kto_inputs,
                  all_sourced({beta_param(), real_param("desirable_weight", 1.0, above(0), "λ_D: weight of desirable examples"),
                           real_param("undesirable_weight", 1.0, above(0), "λ_U: weight of undesirable examples"),
                           sourced(choice_param("kl_source", "batch", {"batch", "last", "none"},
                                                "z from this batch's KL pairs, the state's last estimate, or none (z = 0)"),
                                   "lamina: TRL's behaviour")},
                          kTrlKto),
                  kto_loss, make_kl_estimate});
  rows.push_back({"apo_zero_unpaired", "5.2", "unpaired APO-zero: 1 - σ(β r) (desirable) or σ(β r) (undesirable)",
                  unpaired_inputs(), all_sourced({beta_param()}, kTrlKto), apo_zero_unpaired_loss});
  rows.push_back({"bco", "5.3", "BCO: sp(δ - β r) (desirable) or sp(β r - δ) (undesirable), δ a running reward mean",
                  bco_inputs,
                  all_sourced({beta_param(),
                               real_param("udm_min_weight", 0.5, above(0),
                                          "UDM: lower clamp of the density ratio (TRL min_density_ratio)"),
                               real_param("udm_max_weight", 10.0, above(0),
                                          "UDM: upper clamp of the density ratio (TRL max_density_ratio)")},
                              "TRL 1.0 BCOConfig"),
                  bco_loss, make_running_baseline});
  return rows;
}

}  // namespace lamina::train
