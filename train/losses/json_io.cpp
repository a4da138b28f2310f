#include "train/losses/json_io.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "ops/ops.h"
#include "train/losses/registry.h"

namespace lamina::train {
namespace {

// By name or alias (TRL 1.x's names).
const InputSpec* spec_named(const LossDefinition& definition, const std::string& name) {
  return find_input_spec(definition, name);
}

// The value of `spec` in the document under its name or one of its aliases; two of them
// present is an error naming both.
const json::Value* find_value(const json::Value& document, const InputSpec& spec, const std::string& source,
                              std::string& key) {
  const json::Value* found = document.find(spec.name);
  key = spec.name;
  for (const std::string& alias : spec.aliases) {
    const json::Value* value = document.find(alias);
    if (value == nullptr) continue;
    LAMINA_CHECK(found == nullptr, source, ": input ", spec.name, " is given twice, as '", key, "' and as '", alias,
                 "'; keep one of them");
    found = value;
    key = alias;
  }
  return found;
}

bool is_mask_of(const LossDefinition& definition, const std::string& name) {
  for (const InputSpec& spec : definition.inputs)
    if (spec.mask == name) return true;
  return false;
}

// Whether any loss of the registry takes `name` as an input (masks excluded: they are derived).
bool any_loss_takes(const std::string& name) {
  for (const LossDefinition& definition : loss_registry())
    if (spec_named(definition, name) != nullptr) return true;
  return false;
}

// How far above 0 a log-probability may be and still pass as rounding (a log-softmax computed
// as x - logsumexp(x) in f32 can land a few ulps above 0 for a token of probability ~1).
constexpr double kLogProbRounding = 1e-6;

// One number of the document. The library losses take whatever a model produces; numbers typed
// into a file are checked for what they claim to be: a log-probability above 0 is a
// probability above 1, a mistake (logits, or a sign lost) that would give a plausible loss.
double read_number(const json::Value& value, const InputSpec& spec, const std::string& where) {
  if (spec.kind == ValueKind::label && value.is_bool()) return value.as_bool() ? 1.0 : 0.0;
  const double number = value.as_double(where);
  LAMINA_CHECK(spec.kind != ValueKind::log_prob || !(number > kLogProbRounding), where, " is ", number,
               ", but a log-probability is at most 0 (a probability at most 1)");
  return number;
}

json::Value number_or_null(double value) { return std::isfinite(value) ? json::Value(value) : json::Value(); }

}  // namespace

JsonInputs inputs_from_json(const json::Value& document, const LossDefinition& definition, const std::string& source,
                            DType dtype) {
  LAMINA_CHECK(document.is_object(), source, ": expected a JSON object keyed by input name, got ",
               json::type_name(document.type()));
  JsonInputs out;
  for (const auto& [key, value] : document.as_object()) {
    if (spec_named(definition, key) != nullptr) continue;
    LAMINA_CHECK(!is_mask_of(definition, key), source, ": '", key,
                 "' is derived from the lengths of the token arrays; leave it out");
    LAMINA_CHECK(any_loss_takes(key), source, ": unknown key '", key, "' (no loss takes an input of that name; run "
                 "'lamina preference-loss --list' for every loss's inputs)");
    out.warnings.push_back(str_cat(source, ": key '", key, "' is not an input of loss '", definition.name, "'; ignored"));
  }

  int64_t batch = -1;
  std::string batch_key;
  std::map<std::string, std::pair<std::vector<int64_t>, std::string>> mask_lengths;  // mask -> row lengths, key
  for (const InputSpec& spec : definition.inputs) {
    std::string key;
    const json::Value* value = find_value(document, spec, source, key);
    if (value == nullptr) {
      LAMINA_CHECK(!spec.required, source, ": missing key '", spec.name, "' (", spec.help, "), needed by loss '",
                   definition.name, "'");
      continue;
    }
    const std::string where = str_cat(source, ": ", key);
    if (spec.shape == InputShape::scalar) {
      out.inputs.set(spec.name, Tensor::scalar(read_number(*value, spec, where), dtype));
      continue;
    }
    const json::Array& rows = value->as_array(where);
    if (batch < 0) {
      batch = int64_t(rows.size());
      batch_key = key;
    }
    LAMINA_CHECK(int64_t(rows.size()) == batch, where, " has ", rows.size(), rows.size() == 1 ? " entry" : " entries",
                 ", but '", batch_key, "' has ", batch, " (one per example)");
    if (spec.shape == InputShape::sequence) {
      std::vector<double> numbers;
      for (size_t i = 0; i < rows.size(); ++i) numbers.push_back(read_number(rows[i], spec, str_cat(where, "[", i, "]")));
      out.inputs.set(spec.name, Tensor::from_vector(numbers, {batch}, dtype));
      continue;
    }
    // A ragged token array: pad to the longest row, mask from the lengths.
    std::vector<int64_t> lengths;
    size_t width = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      lengths.push_back(int64_t(rows[i].as_array(str_cat(where, "[", i, "]")).size()));
      width = std::max(width, size_t(lengths.back()));
    }
    // A loss over tokens with no token at all would average over nothing (TRL's clamps turn
    // that into a loss of 0 with zero gradients): no result to report.
    LAMINA_CHECK(rows.empty() || width > 0, where, ": every row is empty, so the loss has no token to average over ",
                 "(each example needs its completion's tokens)");
    auto [known, inserted] = mask_lengths.emplace(spec.mask, std::make_pair(lengths, key));
    for (size_t i = 0; !inserted && i < lengths.size(); ++i)
      LAMINA_CHECK(lengths[i] == known->second.first[i], where, "[", i, "] has ", lengths[i], " tokens, but '",
                   known->second.second, "[", i, "]' has ", known->second.first[i], " (they share ", spec.mask, ")");
    std::vector<double> numbers(rows.size() * width, 0.0);
    std::vector<uint8_t> kept(numbers.size(), 0);
    for (size_t i = 0; i < rows.size(); ++i) {
      const json::Array& row = rows[i].as_array();
      for (size_t t = 0; t < row.size(); ++t) {
        numbers[i * width + t] = read_number(row[t], spec, str_cat(where, "[", i, "][", t, "]"));
        kept[i * width + t] = 1;
      }
    }
    const Shape shape{batch, int64_t(width)};
    out.inputs.set(spec.name, Tensor::from_vector(numbers, shape, dtype));
    if (inserted) out.inputs.set(spec.mask, Tensor::from_vector(kept, shape, DType::boolean));
  }
  LAMINA_CHECK(batch != 0, source, ": the batch is empty ('", batch_key, "' has no entries)");
  return out;
}

json::Value tensor_to_json(const Tensor& values, const Tensor* mask) {
  const std::vector<double> flat = values.to_vector<double>();
  if (values.dim() == 0) return number_or_null(flat[0]);
  if (values.dim() == 1) {
    json::Array array;
    for (double v : flat) array.push_back(number_or_null(v));
    return array;
  }
  LAMINA_CHECK(values.dim() == 2, "tensor_to_json: expected a scalar, [B] or [B, T], got shape ", values.shape());
  const int64_t rows = values.size(0), width = values.size(1);
  std::vector<bool> kept(flat.size(), true);
  if (mask != nullptr) kept = mask->to_vector<bool>();
  json::Array array;
  for (int64_t b = 0; b < rows; ++b) {
    json::Array row;
    for (int64_t t = 0; t < width; ++t)
      if (kept[size_t(b * width + t)]) row.push_back(number_or_null(flat[size_t(b * width + t)]));
    array.push_back(std::move(row));
  }
  return array;
}

json::Value result_to_json(const LossResult& result, const LossDefinition& definition, const LossInputs& inputs) {
  json::Object grads;
  for (const InputSpec& spec : definition.inputs) {
    const Tensor* value = inputs.find(spec.name);
    if (spec.role != InputRole::policy || value == nullptr) continue;
    const Tensor grad = value->grad().defined() ? value->grad() : zeros(value->shape(), value->dtype());
    grads.emplace_back(spec.name, tensor_to_json(grad, spec.mask.empty() ? nullptr : inputs.find(spec.mask)));
  }
  json::Object metrics;
  for (const auto& [name, value] : result.metrics.entries()) metrics.emplace_back(name, number_or_null(value));
  return json::Object{{"loss", number_or_null(result.loss.item<double>())}, {"grad", std::move(grads)},
                      {"metrics", std::move(metrics)}};
}

}  // namespace lamina::train
