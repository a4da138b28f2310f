#include "train/losses/loss.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "ops/ops.h"

namespace lamina::train {
namespace {

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

// Where a value must lie, by kind; returns an empty string when it is fine.
std::string value_problem(ValueKind kind, double value) {
  if (!std::isfinite(value)) return "is not finite";
  switch (kind) {
    case ValueKind::length:
    case ValueKind::count:
      if (value < 0 || value != std::floor(value)) return "must be a non-negative integer";
      break;
    case ValueKind::label:
      if (value != 0 && value != 1) return "must be 0/false (undesirable) or 1/true (desirable)";
      break;
    case ValueKind::probability:
      if (value < 0 || value > 1) return "must be a probability in [0, 1]";
      break;
    case ValueKind::weight:
      if (value < 0) return "must be a non-negative weight";
      break;
    default: break;
  }
  return "";
}

void check_values(const std::string& loss, const InputSpec& spec, const Tensor& value, const Tensor* mask) {
  const std::vector<double> values = value.to_vector<double>();
  std::vector<bool> kept;
  if (mask != nullptr) kept = mask->to_vector<bool>();
  for (size_t i = 0; i < values.size(); ++i) {
    if (mask != nullptr && !kept[i]) continue;  // padding may hold anything
    const std::string problem = value_problem(spec.kind, values[i]);
    LAMINA_CHECK(problem.empty(), "loss '", loss, "': input ", spec.name, " at flat position ", i, " ", problem,
                 ", got ", values[i]);
  }
}

}  // namespace

const char* shape_name(InputShape shape) {
  switch (shape) {
    case InputShape::sequence: return "[B]";
    case InputShape::token: return "[B, T]";
    case InputShape::scalar: return "[]";
  }
  return "?";
}

const char* role_name(InputRole role) {
  switch (role) {
    case InputRole::policy: return "policy";
    case InputRole::frozen: return "frozen";
    case InputRole::data: return "data";
  }
  return "?";
}

LossInputs& LossInputs::set(std::string name, Tensor value) {
  for (auto& [key, tensor] : entries_) {
    if (key != name) continue;
    tensor = std::move(value);
    return *this;
  }
  entries_.emplace_back(std::move(name), std::move(value));
  return *this;
}

const Tensor* LossInputs::find(std::string_view name) const {
  for (const auto& [key, tensor] : entries_)
    if (key == name) return &tensor;
  return nullptr;
}

bool LossInputs::has(std::string_view name) const { return find(name) != nullptr; }

const Tensor& LossInputs::get(std::string_view name) const {
  const Tensor* found = find(name);
  LAMINA_CHECK(found != nullptr, "missing input '", name, "' (given: ", join_names(names()), ")");
  return *found;
}

std::vector<std::string> LossInputs::names() const {
  std::vector<std::string> out;
  for (const auto& entry : entries_) out.push_back(entry.first);
  return out;
}

double Metrics::get(std::string_view name) const {
  for (const auto& [key, value] : entries_)
    if (key == name) return value;
  throw Error(str_cat("no metric named '", name, "'"));
}

bool Metrics::has(std::string_view name) const {
  for (const auto& entry : entries_)
    if (entry.first == name) return true;
  return false;
}

InputSpec also_named(InputSpec spec, std::vector<std::string> aliases) {
  spec.aliases.insert(spec.aliases.end(), aliases.begin(), aliases.end());
  return spec;
}

const InputSpec* find_input_spec(const LossDefinition& definition, std::string_view name) {
  for (const InputSpec& spec : definition.inputs) {
    if (spec.name == name) return &spec;
    for (const std::string& alias : spec.aliases)
      if (alias == name) return &spec;
  }
  return nullptr;
}

LossInputs resolve_input_aliases(const LossDefinition& definition, const LossInputs& raw) {
  LossInputs resolved;
  std::vector<std::pair<std::string, std::string>> given;  // canonical name -> the name it came under
  for (const std::string& name : raw.names()) {
    const InputSpec* spec = find_input_spec(definition, name);
    const std::string canonical = spec != nullptr ? spec->name : name;  // unknown names are reported later
    for (const auto& [known, source] : given)
      LAMINA_CHECK(known != canonical, "loss '", definition.name, "': input ", canonical, " is given twice, as '",
                   source, "' and as '", name, "'; pass one of them");
    given.emplace_back(canonical, name);
    resolved.set(canonical, raw.get(name));
  }
  return resolved;
}

LossInputs prepare_inputs(const LossDefinition& definition, const LossInputs& given) {
  const std::string& loss = definition.name;
  const LossInputs raw = resolve_input_aliases(definition, given);
  // Every accepted name: the specs and the masks they name.
  std::vector<std::string> accepted;
  std::set<std::string> masks;
  for (const InputSpec& spec : definition.inputs) {
    accepted.push_back(spec.name);
    if (!spec.mask.empty() && masks.insert(spec.mask).second) accepted.push_back(spec.mask);
  }
  // The error lists the aliases too, after the names.
  std::vector<std::string> listed = accepted;
  for (const InputSpec& spec : definition.inputs)
    for (const std::string& alias : spec.aliases) listed.push_back(alias + " (= " + spec.name + ")");
  for (const std::string& name : raw.names()) {
    bool known = false;
    for (const std::string& candidate : accepted) known = known || candidate == name;
    LAMINA_CHECK(known, "loss '", loss, "' does not take an input named '", name, "'; it takes: ",
                 join_names(listed));
  }

  // One float dtype for the policy inputs; the others follow it.
  DType dtype = DType::f64;
  bool have_policy = false;
  for (const InputSpec& spec : definition.inputs) {
    const Tensor* value = raw.find(spec.name);
    if (spec.role != InputRole::policy || value == nullptr) continue;
    LAMINA_CHECK(is_floating(value->dtype()), "loss '", loss, "': policy input ", spec.name,
                 " must be a floating tensor, got ", dtype_name(value->dtype()));
    LAMINA_CHECK(!have_policy || value->dtype() == dtype, "loss '", loss, "': policy inputs must share one dtype; ",
                 spec.name, " is ", dtype_name(value->dtype()), ", an earlier one is ", dtype_name(dtype));
    dtype = value->dtype();
    have_policy = true;
  }

  int64_t batch = -1;
  std::string batch_source;
  LossInputs prepared;
  for (const InputSpec& spec : definition.inputs) {
    const Tensor* value = raw.find(spec.name);
    if (value == nullptr) {
      LAMINA_CHECK(!spec.required, "loss '", loss, "' needs input '", spec.name, "' (", spec.help, ")");
      continue;
    }
    const Shape& shape = value->shape();
    const size_t expected_dims = spec.shape == InputShape::scalar ? 0 : spec.shape == InputShape::sequence ? 1 : 2;
    LAMINA_CHECK(shape.size() == expected_dims, "loss '", loss, "': input ", spec.name, " must have shape ",
                 shape_name(spec.shape), ", got ", shape);
    if (spec.shape != InputShape::scalar) {
      if (batch < 0) {
        batch = shape[0];
        batch_source = spec.name;
      }
      LAMINA_CHECK(shape[0] == batch, "loss '", loss, "': input ", spec.name, " has batch size ", shape[0],
                   ", but ", batch_source, " has ", batch);
    }
    const Tensor* mask = nullptr;
    if (spec.shape == InputShape::token) {
      mask = raw.find(spec.mask);
      LAMINA_CHECK(mask != nullptr, "loss '", loss, "': token input ", spec.name, " needs its mask '", spec.mask,
                   "' ([B, T], true on the tokens that count)");
      LAMINA_CHECK(mask->shape() == shape, "loss '", loss, "': mask ", spec.mask, " has shape ", mask->shape(),
                   ", but ", spec.name, " has ", shape);
      const Tensor bool_mask = mask->dtype() == DType::boolean ? *mask : ops::compare(ops::CompareOp::ne, *mask, 0.0);
      prepared.set(spec.mask, bool_mask);
      mask = prepared.find(spec.mask);
    }
    check_values(loss, spec, *value, mask);
    if (spec.role == InputRole::policy) {
      prepared.set(spec.name, *value);
    } else if (spec.kind == ValueKind::label) {
      prepared.set(spec.name, ops::compare(ops::CompareOp::ne, *value, 0.0));
    } else {
      prepared.set(spec.name, value->dtype() == dtype ? value->detach() : ops::cast(*value, dtype));
    }
  }
  LAMINA_CHECK(batch != 0, "loss '", loss, "': the batch is empty (", batch_source, " has no entries)");
  return prepared;
}

InputSpec policy_sequence(std::string name, std::string help) {
  return {std::move(name), InputShape::sequence, InputRole::policy, ValueKind::log_prob, true, std::move(help), ""};
}

InputSpec frozen_sequence(std::string name, std::string help, bool required) {
  return {std::move(name), InputShape::sequence, InputRole::frozen, ValueKind::log_prob, required, std::move(help), ""};
}

InputSpec data_sequence(std::string name, ValueKind kind, std::string help, bool required) {
  return {std::move(name), InputShape::sequence, InputRole::data, kind, required, std::move(help), ""};
}

InputSpec policy_tokens(std::string name, std::string mask, std::string help) {
  return {std::move(name), InputShape::token, InputRole::policy, ValueKind::log_prob, true, std::move(help),
          std::move(mask)};
}

InputSpec frozen_tokens(std::string name, std::string mask, std::string help, bool required) {
  return {std::move(name), InputShape::token, InputRole::frozen, ValueKind::log_prob, required, std::move(help),
          std::move(mask)};
}

InputSpec data_scalar(std::string name, ValueKind kind, std::string help, bool required) {
  return {std::move(name), InputShape::scalar, InputRole::data, kind, required, std::move(help), ""};
}

void MetricsAverage::add(const Metrics& metrics, double weight) {
  for (const auto& [name, value] : metrics.entries()) {
    auto found = std::find_if(sums_.begin(), sums_.end(), [&](const auto& entry) { return entry.first == name; });
    if (found == sums_.end()) {
      sums_.emplace_back(name, 0.0);
      found = sums_.end() - 1;
    }
    found->second += weight * value;
  }
}

}  // namespace lamina::train
