// The preference-loss registry: every loss of preference-losses.md §2-§7 by name.
//
//   const LossDefinition& dpo = find_loss("dpo");          // names and aliases
//   Hyperparameters params = default_hyperparameters(dpo); // the spec's defaults
//   params.set("beta", 0.2);                               // validated
//   LossResult result = compute_loss(dpo, inputs, params); // loss, per-example losses, metrics
//   result.loss.backward();                                // gradients of the policy inputs
//
// Stateful losses (bco, kto, bco_pair with running_baseline) take a LossState made by
// make_state(definition), kept by the caller across steps and checkpointed with save().
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "train/losses/loss.h"

namespace lamina::train {

// Every definition, in the order of the spec's sections.
const std::vector<LossDefinition>& loss_registry();
// By name or alias; an unknown name throws a lamina::Error that lists every known name.
const LossDefinition& find_loss(std::string_view name);
// "sigmoid (dpo), cdpo, ...": every name, aliases in brackets.
std::string known_loss_names();

Hyperparameters default_hyperparameters(const LossDefinition& definition);
// A fresh state for a stateful loss; nullptr for the others.
std::unique_ptr<LossState> make_state(const LossDefinition& definition);

// Validates the inputs (prepare_inputs) and runs the loss. `params` must have been made for
// this definition.
LossResult compute_loss(const LossDefinition& definition, const LossInputs& inputs, const Hyperparameters& params,
                        LossState* state = nullptr);

// TRL's list of loss types with loss_weights (e.g. MPO: sigmoid 0.8, bco_pair 0.2, sft 1.0):
// L = Σ_k weight_k · loss_k, each term computed from the inputs it takes. Metrics are prefixed
// with the loss name ("sigmoid/rewards/chosen"), plus "loss/<name>" for each term's value.
struct WeightedLoss {
  const LossDefinition* definition = nullptr;
  double weight = 1.0;
  Hyperparameters params;
  LossState* state = nullptr;
};
LossResult compute_weighted_losses(const std::vector<WeightedLoss>& terms, const LossInputs& inputs);

}  // namespace lamina::train
