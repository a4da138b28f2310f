// Helpers for the preference-loss tests: f64 inputs from literal lists, running a registry loss
// with overrides, and reading back gradients.
#pragma once

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "autograd/gradcheck.h"
#include "helpers.h"
#include "train/losses/registry.h"

namespace lamina::testing {

// The spec's worked examples are rounded to 6 decimals.
inline constexpr double kSpecTolerance = 1e-6;

inline Tensor f64s(std::initializer_list<double> values) {
  return Tensor::from_vector(std::vector<double>(values), {int64_t(values.size())}, DType::f64);
}

inline Tensor f64_rows(const std::vector<std::vector<double>>& rows) {
  const int64_t width = rows.empty() ? 0 : int64_t(rows[0].size());
  std::vector<double> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  return Tensor::from_vector(flat, {int64_t(rows.size()), width}, DType::f64);
}

inline Tensor bools(const std::vector<std::vector<int>>& rows) {
  const int64_t width = rows.empty() ? 0 : int64_t(rows[0].size());
  std::vector<uint8_t> flat;
  for (const auto& row : rows)
    for (int v : row) flat.push_back(v != 0);
  return ops::compare(ops::CompareOp::ne, Tensor::from_vector(flat, {int64_t(rows.size()), width}, DType::u8), 0.0);
}

using Overrides = std::vector<std::pair<std::string, std::string>>;

// The entries of `inputs` that loss `name` takes (its specs under any of their names, and their
// masks): one input set can then serve several losses, as the spec's examples do.
inline train::LossInputs taken_by(const std::string& name, const train::LossInputs& inputs) {
  const train::LossDefinition& definition = train::find_loss(name);
  train::LossInputs taken;
  for (const std::string& key : inputs.names()) {
    bool takes = train::find_input_spec(definition, key) != nullptr;
    for (const train::InputSpec& spec : definition.inputs) takes = takes || spec.mask == key;
    if (takes) taken.set(key, inputs.get(key));
  }
  return taken;
}

inline train::Hyperparameters params_for(const std::string& loss, const Overrides& overrides = {}) {
  train::Hyperparameters params = train::default_hyperparameters(train::find_loss(loss));
  for (const auto& [name, value] : overrides) params.set(name, value);
  return params;
}

// The loss of `name` on `inputs` with `overrides` (and `state`, for stateful losses).
inline train::LossResult run_loss(const std::string& name, const train::LossInputs& inputs,
                                  const Overrides& overrides = {}, train::LossState* state = nullptr) {
  const train::LossDefinition& definition = train::find_loss(name);
  return train::compute_loss(definition, inputs, params_for(definition.name, overrides), state);
}

inline double loss_value(const std::string& name, const train::LossInputs& inputs, const Overrides& overrides = {},
                         train::LossState* state = nullptr) {
  return run_loss(name, inputs, overrides, state).loss.item<double>();
}

// The gradient of the loss with respect to the named policy input (which must be a leaf).
inline std::vector<double> gradient_of(const std::string& loss, train::LossInputs inputs, const std::string& input,
                                       const Overrides& overrides = {}) {
  const Tensor leaf = inputs.get(input).detach().clone();
  leaf.set_requires_grad(true);
  inputs.set(input, leaf);
  run_loss(loss, inputs, overrides).loss.backward();
  return leaf.grad().to_vector<double>();
}

// preference-losses.md §0, example E: one pair, S_θ(y_w) = -12, S_θ(y_l) = -15, S_ref(y_w) = -13,
// S_ref(y_l) = -14.5, |y_w| = 8, |y_l| = 6.
inline train::LossInputs example_e(double policy_chosen = -12.0) {
  train::LossInputs inputs;
  inputs.set("policy_chosen_logps", f64s({policy_chosen}))
      .set("policy_rejected_logps", f64s({-15.0}))
      .set("reference_chosen_logps", f64s({-13.0}))
      .set("reference_rejected_logps", f64s({-14.5}));
  return inputs;
}

inline train::LossInputs example_e_with_lengths() {
  train::LossInputs inputs = example_e();
  inputs.set("chosen_lengths", f64s({8})).set("rejected_lengths", f64s({6}));
  return inputs;
}

// {E, E2}: E2 is S_θ(y_w) = -20, S_θ(y_l) = -18, S_ref(y_w) = -18, S_ref(y_l) = -20.
inline train::LossInputs examples_e_e2() {
  train::LossInputs inputs;
  inputs.set("policy_chosen_logps", f64s({-12.0, -20.0}))
      .set("policy_rejected_logps", f64s({-15.0, -18.0}))
      .set("reference_chosen_logps", f64s({-13.0, -18.0}))
      .set("reference_rejected_logps", f64s({-14.5, -20.0}));
  return inputs;
}

inline void expect_gradcheck(const std::string& name, const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                             const std::vector<Tensor>& inputs, autograd::GradcheckOptions options = {}) {
  const autograd::GradcheckResult result = autograd::gradcheck(fn, inputs, options);
  INFO(name << ": max abs err " << result.max_abs_error << ", max rel err " << result.max_rel_error << "; "
            << result.worst);
  CHECK(result.passed);
}

}  // namespace lamina::testing
