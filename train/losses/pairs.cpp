#include "train/losses/pairs.h"

namespace lamina::train {

// The aliases are TRL 1.x's names (DPOTrainer's chosen_logps, ref_chosen_logps, ...).
InputSpec policy_chosen_logps() {
  return also_named(
      policy_sequence("policy_chosen_logps", "S_θ(y_w): summed log-prob of each chosen response under the policy"),
      {"chosen_logps"});
}

InputSpec policy_rejected_logps() {
  return also_named(
      policy_sequence("policy_rejected_logps", "S_θ(y_l): summed log-prob of each rejected response under the policy"),
      {"rejected_logps"});
}

namespace {

// Optional only where the loss offers reference_free; the help says so.
std::string reference_note(bool required) { return required ? "" : " (needed unless reference_free=true)"; }

}  // namespace

InputSpec reference_chosen_logps(bool required) {
  return also_named(frozen_sequence("reference_chosen_logps",
                                    "S_ref(y_w): summed log-prob of each chosen response under π_ref" +
                                        reference_note(required),
                                    required),
                    {"ref_chosen_logps"});
}

InputSpec reference_rejected_logps(bool required) {
  return also_named(frozen_sequence("reference_rejected_logps",
                                    "S_ref(y_l): summed log-prob of each rejected response under π_ref" +
                                        reference_note(required),
                                    required),
                    {"ref_rejected_logps"});
}

InputSpec chosen_lengths(bool required) {
  return data_sequence("chosen_lengths", ValueKind::length, "|y_w|: response tokens of each chosen response", required);
}

InputSpec rejected_lengths(bool required) {
  return data_sequence("rejected_lengths", ValueKind::length, "|y_l|: response tokens of each rejected response",
                       required);
}

InputSpec pair_weights() {
  return data_sequence("pair_weights", ValueKind::weight,
                       "WPO pair weights W = w(y_w) w(y_l) (train::wpo_pair_weights), multiplying each pair's loss",
                       false);
}

std::vector<InputSpec> paired_inputs(bool reference_optional) {
  return {policy_chosen_logps(), policy_rejected_logps(), reference_chosen_logps(!reference_optional),
          reference_rejected_logps(!reference_optional), pair_weights()};
}

ParamSpec beta_param(double default_value, const std::string& help) {
  return real_param("beta", default_value, above(0), help);
}

ParamSpec reference_free_param() {
  return sourced(flag_param("reference_free", false, "treat S_ref as 0 (no reference model): h = S_θ(y_w) - S_θ(y_l)"),
                 "TRL 0.19 DPOConfig");
}

std::vector<ParamSpec> f_divergence_params() {
  return {choice_param("f_divergence_type", "reverse_kl", {"reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"},
                       "divergence of f-DPO: the score g(r) whose difference replaces h"),
          real_param("f_alpha_divergence_coef", 0.5, between(0, 1, true, true), "α of the alpha_divergence score e^{(α-1)r}/(α-1)")};
}

PairTerms pair_terms(const LossInputs& inputs, const Hyperparameters& params) {
  PairTerms terms{inputs.get("policy_chosen_logps"), inputs.get("policy_rejected_logps"), {}, {}};
  const bool reference_free = params.has("reference_free") && params.flag("reference_free");
  if (reference_free) {
    terms.chosen_ratios = terms.policy_chosen;
    terms.rejected_ratios = terms.policy_rejected;
    return terms;
  }
  require(inputs.has("reference_chosen_logps") && inputs.has("reference_rejected_logps"), params,
          "needs reference_chosen_logps and reference_rejected_logps (or reference_free=true)");
  terms.chosen_ratios = terms.policy_chosen - inputs.get("reference_chosen_logps");
  terms.rejected_ratios = terms.policy_rejected - inputs.get("reference_rejected_logps");
  return terms;
}

Tensor pair_margin(const PairTerms& terms, const Hyperparameters& params) {
  const std::string divergence = params.has("f_divergence_type") ? params.choice("f_divergence_type") : "reverse_kl";
  const auto score = [&](const Tensor& r) -> Tensor {
    if (divergence == "forward_kl") return neg(capped_exp(neg(r)));
    if (divergence == "js_divergence") return log_sigmoid(r);
    if (divergence == "alpha_divergence") {
      const double alpha = params.real("f_alpha_divergence_coef");
      return capped_exp(r * (alpha - 1.0)) / (alpha - 1.0);
    }
    return r;
  };
  return score(terms.chosen_ratios) - score(terms.rejected_ratios);
}

Tensor length_averaged(const Tensor& value, const Tensor& lengths) {
  return value / clamp(lengths, 1.0, std::nullopt);
}

Tensor apply_pair_weights(const Tensor& per_example, const LossInputs& inputs) {
  const Tensor* weights = inputs.find("pair_weights");
  return weights == nullptr ? per_example : per_example * *weights;
}

void add_reward_metrics(Metrics& metrics, const Tensor& chosen_rewards, const Tensor& rejected_rewards,
                        const std::string& chosen_name, const std::string& rejected_name) {
  const std::vector<double> c = values_of(chosen_rewards), d = values_of(rejected_rewards);
  std::vector<double> margins(c.size()), correct(c.size());
  for (size_t i = 0; i < c.size(); ++i) {
    margins[i] = c[i] - d[i];
    correct[i] = c[i] > d[i] ? 1.0 : 0.0;  // strict: ties count as wrong
  }
  metrics.add("rewards/" + chosen_name, mean_of(c));
  metrics.add("rewards/" + rejected_name, mean_of(d));
  metrics.add("rewards/margins", mean_of(margins));
  metrics.add("rewards/accuracies", mean_of(correct));
}

void add_reward_metrics(Metrics& metrics, const Tensor& chosen_rewards, const Tensor& rejected_rewards,
                        const Tensor& policy_chosen, const Tensor& policy_rejected) {
  add_reward_metrics(metrics, chosen_rewards, rejected_rewards, "chosen", "rejected");
  metrics.add("logps/chosen", mean_of(values_of(policy_chosen)));
  metrics.add("logps/rejected", mean_of(values_of(policy_rejected)));
}

LossResult standard_pair_result(const Tensor& per_example, const PairTerms& terms, double beta,
                                const LossInputs& inputs) {
  Metrics metrics;
  add_reward_metrics(metrics, terms.chosen_ratios * beta, terms.rejected_ratios * beta, terms.policy_chosen,
                     terms.policy_rejected);
  return mean_result(apply_pair_weights(per_example, inputs), std::move(metrics));
}

}  // namespace lamina::train
