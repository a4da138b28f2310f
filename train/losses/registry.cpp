#include "train/losses/registry.h"

#include <cmath>
#include <set>

#include "autograd/functions.h"
#include "train/losses/families.h"

namespace lamina::train {
namespace {

std::vector<LossDefinition> build_registry() {
  std::vector<LossDefinition> all;
  for (auto family : {paired_reference_losses, paired_variant_losses, reference_free_losses, unpaired_losses,
                      online_losses, policy_gradient_losses}) {
    for (LossDefinition& definition : family()) all.push_back(std::move(definition));
  }
  // Names and aliases are one namespace; a clash is a bug in a family table.
  std::set<std::string> seen;
  for (const LossDefinition& definition : all) {
    LAMINA_ASSERT(seen.insert(definition.name).second);
    for (const std::string& alias : definition.aliases) LAMINA_ASSERT(seen.insert(alias).second);
  }
  return all;
}

}  // namespace

const std::vector<LossDefinition>& loss_registry() {
  static const std::vector<LossDefinition> registry = build_registry();
  return registry;
}

std::string known_loss_names() {
  std::string out;
  for (const LossDefinition& definition : loss_registry()) {
    out += (out.empty() ? "" : ", ") + definition.name;
    for (const std::string& alias : definition.aliases) out += " (" + alias + ")";
  }
  return out;
}

const LossDefinition& find_loss(std::string_view name) {
  for (const LossDefinition& definition : loss_registry()) {
    if (definition.name == name) return definition;
    for (const std::string& alias : definition.aliases)
      if (alias == name) return definition;
  }
  throw Error(str_cat("unknown loss '", name, "'; known losses: ", known_loss_names()));
}

Hyperparameters default_hyperparameters(const LossDefinition& definition) {
  return Hyperparameters(definition.name, definition.params);
}

std::unique_ptr<LossState> make_state(const LossDefinition& definition) {
  return definition.make_state != nullptr ? definition.make_state() : nullptr;
}

LossResult compute_loss(const LossDefinition& definition, const LossInputs& inputs, const Hyperparameters& params,
                        LossState* state) {
  LAMINA_CHECK(params.owner() == definition.name, "compute_loss: hyperparameters made for loss '", params.owner(),
               "' passed to loss '", definition.name, "'");
  const LossInputs prepared = prepare_inputs(definition, inputs);
  LossResult result = definition.compute(prepared, params, state);
  LAMINA_ASSERT(result.loss.defined() && result.loss.numel() == 1);
  return result;
}

LossResult compute_weighted_losses(const std::vector<WeightedLoss>& terms, const LossInputs& inputs) {
  LAMINA_CHECK(!terms.empty(), "compute_weighted_losses: no loss terms given");
  LossResult combined;
  std::set<std::string> used;
  for (const WeightedLoss& term : terms) {
    LAMINA_CHECK(term.definition != nullptr, "compute_weighted_losses: a term has no loss definition");
    LAMINA_CHECK(std::isfinite(term.weight), "compute_weighted_losses: weight of '", term.definition->name,
                 "' must be finite, got ", term.weight);
    // Each term reads the inputs it takes (its specs under any of their names, and their masks).
    LossInputs own;
    for (const std::string& name : inputs.names()) {
      bool takes = find_input_spec(*term.definition, name) != nullptr;
      for (const InputSpec& spec : term.definition->inputs) takes = takes || spec.mask == name;
      if (!takes) continue;
      own.set(name, inputs.get(name));
      used.insert(name);
    }
    LossResult result = compute_loss(*term.definition, own, term.params, term.state);
    const Tensor weighted = result.loss * term.weight;
    combined.loss = combined.loss.defined() ? combined.loss + weighted : weighted;
    combined.metrics.add("loss/" + term.definition->name, result.loss.item<double>());
    for (const auto& [name, value] : result.metrics.entries()) combined.metrics.add(term.definition->name + "/" + name, value);
    for (std::string& warning : result.warnings) combined.warnings.push_back(std::move(warning));
  }
  for (const std::string& name : inputs.names())
    LAMINA_CHECK(used.count(name) != 0, "compute_weighted_losses: no loss term takes the input '", name, "'");
  return combined;
}

}  // namespace lamina::train
