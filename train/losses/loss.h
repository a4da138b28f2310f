// The shape of a preference loss: what it reads (InputSpec), what it is tuned by (ParamSpec,
// hyperparameters.h), what it returns (LossResult), the state a few of them carry between
// steps (LossState), and the registry row that ties these together (LossDefinition).
//
// Inputs are named tensors, keyed as in TRL where TRL has the quantity
// (`policy_chosen_logps`, `reference_rejected_logps`, `chosen_lengths`, `labels`, `rewards`);
// TRL 1.x's newer names (`chosen_logps`, `ref_chosen_logps`, KTO's `label`, GRPO's
// `old_per_token_logps`, ...) are accepted as aliases of the same inputs:
//   sequence inputs  [B]      one value per example (summed log-probs, lengths, labels, ...)
//   token inputs     [B, T]   one value per token, with a bool mask [B, T] named by the spec
//   scalar inputs    []       one value per batch
// Policy inputs carry the gradient; frozen inputs (reference / previous-iterate / behaviour
// log-probs) and data inputs (lengths, labels, rewards, scores) do not.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/io/json.h"
#include "tensor/tensor.h"
#include "train/losses/hyperparameters.h"

namespace lamina::train {

enum class InputShape { sequence, token, scalar };
enum class InputRole { policy, frozen, data };
// What the values mean, which fixes how they are validated (and generated in tests).
enum class ValueKind { log_prob, real, length, label, probability, weight, count };

struct InputSpec {
  std::string name;
  InputShape shape = InputShape::sequence;
  InputRole role = InputRole::policy;
  ValueKind kind = ValueKind::log_prob;
  bool required = true;
  std::string help;
  std::string mask;  // token inputs: the name of their bool mask input ([B, T])
  std::vector<std::string> aliases = {};  // other accepted names (TRL 1.x's), resolved by prepare_inputs
};

// `spec` also accepting `aliases` as its name.
InputSpec also_named(InputSpec spec, std::vector<std::string> aliases);

const char* shape_name(InputShape shape);  // "[B]", "[B, T]", "[]"
const char* role_name(InputRole role);     // "policy", "frozen", "data"

// Named tensors, in the order they were set.
class LossInputs {
 public:
  LossInputs& set(std::string name, Tensor value);
  bool has(std::string_view name) const;
  const Tensor& get(std::string_view name) const;  // throws naming the missing input
  const Tensor* find(std::string_view name) const;  // nullptr when absent
  std::vector<std::string> names() const;

 private:
  std::vector<std::pair<std::string, Tensor>> entries_;
};

// Scalar metrics in the order they were added (TRL's names).
class Metrics {
 public:
  void add(std::string name, double value) { entries_.emplace_back(std::move(name), value); }
  const std::vector<std::pair<std::string, double>>& entries() const { return entries_; }
  double get(std::string_view name) const;  // throws when absent
  bool has(std::string_view name) const;

 private:
  std::vector<std::pair<std::string, double>> entries_;
};

// Metrics of several micro-batches averaged with their weights (their shares of a step), in the
// order the names first appear.
class MetricsAverage {
 public:
  void add(const Metrics& metrics, double weight);
  const std::vector<std::pair<std::string, double>>& entries() const { return sums_; }

 private:
  std::vector<std::pair<std::string, double>> sums_;
};

struct LossResult {
  Tensor loss;    // scalar, on the autograd graph: loss.backward() fills the policy inputs' grads
  Tensor losses;  // [B] per-example losses whose mean is `loss` (undefined for batch-level losses)
  Metrics metrics;
  std::vector<std::string> warnings;  // advice the spec gives (e.g. KTO's weight balance)
};

// State a loss keeps between steps (BCO's running reward baseline, KTO's KL estimate).
// Checkpoint it with save() and restore(); set training = false during evaluation so that the
// state is read but not updated.
class LossState {
 public:
  virtual ~LossState() = default;
  virtual json::Value save() const = 0;
  virtual void restore(const json::Value& saved) = 0;
  bool training = true;
};

using LossFunction = LossResult (*)(const LossInputs& inputs, const Hyperparameters& params, LossState* state);
using StateFactory = std::unique_ptr<LossState> (*)();

// One registry row. `compute` receives inputs already validated against `inputs` (see
// prepare_inputs) and hyperparameters built from `params`.
struct LossDefinition {
  LossDefinition(std::string name, std::string section, std::string summary, std::vector<InputSpec> inputs,
                 std::vector<ParamSpec> params, LossFunction compute, StateFactory make_state = nullptr)
      : name(std::move(name)), section(std::move(section)), summary(std::move(summary)), inputs(std::move(inputs)),
        params(std::move(params)), compute(compute), make_state(make_state) {}

  std::string name;
  std::string section;  // where preference-losses.md defines it, e.g. "2.1"
  std::string summary;
  std::vector<InputSpec> inputs;
  std::vector<ParamSpec> params;
  LossFunction compute = nullptr;
  StateFactory make_state = nullptr;  // set for stateful losses
  std::vector<std::string> aliases;
};

// The spec named `name` (its name or an alias), nullptr when the loss has none.
const InputSpec* find_input_spec(const LossDefinition& definition, std::string_view name);

// `raw` with every alias renamed to its input's name. Giving one input under two of its names
// (`policy_chosen_logps` and `chosen_logps`) is an error naming both.
LossInputs resolve_input_aliases(const LossDefinition& definition, const LossInputs& raw);

// Resolves aliases, then checks `raw` against the definition (unknown or missing names, shapes, one batch size, one
// float dtype for the policy inputs, value ranges: lengths are non-negative integers, labels
// 0/1, probabilities in [0, 1], everything finite) and returns the inputs normalised: masks
// and labels as bool, other frozen and data inputs cast to the policy dtype. Policy tensors
// are passed through untouched, so their gradients reach the caller's tensors.
LossInputs prepare_inputs(const LossDefinition& definition, const LossInputs& raw);

// ---- InputSpec builders for the recurring inputs
InputSpec policy_sequence(std::string name, std::string help);
InputSpec frozen_sequence(std::string name, std::string help, bool required = true);
InputSpec data_sequence(std::string name, ValueKind kind, std::string help, bool required = true);
InputSpec policy_tokens(std::string name, std::string mask, std::string help);
InputSpec frozen_tokens(std::string name, std::string mask, std::string help, bool required = true);
InputSpec data_scalar(std::string name, ValueKind kind, std::string help, bool required = true);

}  // namespace lamina::train
