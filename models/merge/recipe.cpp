// Reading and checking merge recipes (see recipe.h).
#include "models/merge/recipe.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "tensor/error.h"

namespace lamina::merge {
namespace {

struct MethodInfo {
  Method method;
  const char* name;
  std::vector<std::string> keys;  // the parameters it reads
  bool default_normalize;
};

const std::vector<MethodInfo>& methods() {
  static const std::vector<MethodInfo> table = {
      {Method::linear, "linear", {"weight", "normalize"}, true},
      {Method::task_arithmetic, "task_arithmetic", {"weight", "normalize", "lambda"}, false},
      {Method::slerp, "slerp", {"t"}, false},
      {Method::ties, "ties", {"weight", "density", "normalize", "lambda"}, true},
      {Method::dare_linear, "dare_linear", {"weight", "density", "normalize", "lambda"}, false},
      {Method::dare_ties, "dare_ties", {"weight", "density", "normalize", "lambda"}, true},
  };
  return table;
}

const MethodInfo& info(Method method) {
  for (const MethodInfo& entry : methods())
    if (entry.method == method) return entry;
  throw Error("merge: unknown method");
}

bool is_dare(Method method) { return method == Method::dare_linear || method == Method::dare_ties; }

std::string join(const std::vector<std::string>& words) {
  std::string text;
  for (const std::string& word : words) text += (text.empty() ? "" : ", ") + word;
  return text;
}

// The range a key's values must lie in: [low, high], or (low, high] when low_open.
struct Range {
  double low, high;
  bool low_open;
};

Range range_of(const std::string& key, Method method) {
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  if (key == "t") return {0, 1, false};
  if (key == "density") return {0, 1, is_dare(method)};  // DARE divides by it
  return {-kInfinity, kInfinity, false};
}

void check_in_range(double value, const Range& range, const std::string& where) {
  LAMINA_CHECK(std::isfinite(value), where, ": ", value, " is not a finite number");
  const bool low_ok = range.low_open ? value > range.low : value >= range.low;
  LAMINA_CHECK(low_ok && value <= range.high, where, ": ", value, " is outside ", range.low_open ? "(" : "[",
               range.low, ", ", range.high, "]");
}

std::vector<double> parse_values(const json::Value& value, const Range& range, const std::string& where) {
  std::vector<double> values;
  if (value.is_number()) {
    values.push_back(value.as_double(where));
  } else {
    LAMINA_CHECK(value.is_array(), where, ": expected a number or a list of numbers, got ", json::type_name(value.type()));
    const json::Array& items = value.as_array(where);
    LAMINA_CHECK(!items.empty(), where, ": an empty list (a gradient needs at least one number)");
    for (size_t i = 0; i < items.size(); ++i) values.push_back(items[i].as_double(str_cat(where, "[", i, "]")));
  }
  for (double number : values) check_in_range(number, range, where);
  return values;
}

Parameter parse_parameter(const json::Value& value, const Range& range, const std::string& where) {
  Parameter parameter;
  parameter.where = where;
  const bool rule_list = value.is_array() && !value.as_array().empty() && value.as_array()[0].is_object();
  if (!rule_list) {
    parameter.rules.push_back({"", parse_values(value, range, where)});
    return parameter;
  }
  const json::Array& items = value.as_array();
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string item_where = str_cat(where, "[", i, "]");
    const json::Object& members = items[i].as_object(item_where);
    ParameterRule rule;
    bool has_value = false;
    for (const auto& [key, member] : members) {
      if (key == "filter") {
        rule.filter = member.as_string(item_where + ".filter");
        LAMINA_CHECK(!rule.filter.empty(), item_where, ".filter: empty (leave the filter out to match every tensor)");
      } else if (key == "value") {
        rule.values = parse_values(member, range, item_where + ".value");
        has_value = true;
      } else {
        throw Error(str_cat(item_where, ": unknown key \"", key, "\" (a rule has \"filter\" and \"value\")"));
      }
    }
    LAMINA_CHECK(has_value, item_where, ": missing key \"value\"");
    parameter.rules.push_back(std::move(rule));
  }
  return parameter;
}

bool same_path(const std::string& a, const std::string& b) {
  std::error_code error;
  const auto canonical_a = std::filesystem::weakly_canonical(a, error);
  if (error) return a == b;
  const auto canonical_b = std::filesystem::weakly_canonical(b, error);
  if (error) return a == b;
  return canonical_a == canonical_b;
}

}  // namespace

const char* method_name(Method method) { return info(method).name; }

const std::vector<std::string>& method_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> result;
    for (const MethodInfo& entry : methods()) result.push_back(entry.name);
    return result;
  }();
  return names;
}

bool method_uses_base(Method method) { return method != Method::linear; }

Parameter Parameter::constant(double value, std::string where) {
  Parameter parameter;
  parameter.rules.push_back({"", {value}});
  parameter.where = std::move(where);
  return parameter;
}

double depth_position(const std::string& tensor, int64_t num_layers) {
  const std::string prefix = "model.layers.";
  if (tensor.rfind(prefix, 0) == 0) {
    const size_t end = tensor.find('.', prefix.size());
    const std::string digits = tensor.substr(prefix.size(), end - prefix.size());
    if (!digits.empty() && std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
        digits.size() < 10) {
      const double layer = std::stod(digits);
      return num_layers > 1 ? std::clamp(layer / double(num_layers - 1), 0.0, 1.0) : 0.0;
    }
  }
  return tensor.find("embed_tokens") != std::string::npos ? 0.0 : 1.0;
}

double Parameter::value_for(const std::string& tensor, int64_t num_layers) const {
  for (const ParameterRule& rule : rules) {
    if (!rule.filter.empty() && tensor.find(rule.filter) == std::string::npos) continue;
    if (rule.values.size() == 1) return rule.values[0];
    const double position = depth_position(tensor, num_layers) * double(rule.values.size() - 1);
    const size_t lower = std::min(size_t(position), rule.values.size() - 2);
    const double fraction = position - double(lower);
    return rule.values[lower] * (1 - fraction) + rule.values[lower + 1] * fraction;
  }
  throw Error(str_cat(where, ": no rule matches tensor '", tensor, "' (add a rule without a filter as the default)"));
}

Recipe Recipe::from_json(const json::Value& recipe, const std::string& source) {
  Recipe result;
  result.source = source;
  const json::Object& members = recipe.as_object(source);
  const json::Value* method_value = recipe.find("method", source);
  LAMINA_CHECK(method_value != nullptr, source, ": missing key \"method\" (one of ", join(method_names()), ")");
  const std::string& method_text = method_value->as_string(source + ": method");
  bool known = false;
  for (const MethodInfo& entry : methods())
    if (method_text == entry.name) result.method = entry.method, known = true;
  LAMINA_CHECK(known, source, ": method: unknown method \"", method_text, "\" (one of ", join(method_names()), ")");
  const MethodInfo& method = info(result.method);
  result.normalize = method.default_normalize;
  const auto method_reads = [&](const std::string& key) {
    return std::find(method.keys.begin(), method.keys.end(), key) != method.keys.end();
  };

  bool has_models = false;
  for (const auto& [key, value] : members) {
    const std::string where = source + ": " + key;
    if (key == "method") continue;
    if (key == "base_model") {
      result.base_model = value.as_string(where);
      LAMINA_CHECK(!result.base_model->empty(), where, ": empty path");
    } else if (key == "dtype") {
      const std::string& text = value.as_string(where);
      if (text == "f32" || text == "float32") result.dtype = DType::f32;
      else if (text == "bf16" || text == "bfloat16") result.dtype = DType::bf16;
      else if (text == "f16" || text == "float16") result.dtype = DType::f16;
      else throw Error(str_cat(where, ": unknown dtype \"", text, "\" (one of f32, bf16, f16)"));
    } else if (key == "seed") {
      const int64_t seed = value.as_int64(where);
      LAMINA_CHECK(seed >= 0, where, ": must not be negative");
      result.seed = uint64_t(seed);
    } else if (key == "parameters") {
      for (const auto& [name, parameter] : value.as_object(where)) {
        const std::string parameter_where = where + "." + name;
        LAMINA_CHECK(method_reads(name), parameter_where, ": ", method.name, " has no parameter \"", name,
                     "\" (it reads ", join(method.keys), ")");
        if (name == "normalize") result.normalize = parameter.as_bool(parameter_where);
        else result.parameters[name] = parse_parameter(parameter, range_of(name, result.method), parameter_where);
      }
    } else if (key == "models") {
      has_models = true;
      const json::Array& entries = value.as_array(where);
      for (size_t i = 0; i < entries.size(); ++i) {
        const std::string entry_where = str_cat(source, ": models[", i, "]");
        ModelEntry entry;
        bool has_path = false;
        const auto add_parameter = [&](const std::string& name, const json::Value& parameter, const std::string& at) {
          LAMINA_CHECK(name == "weight" || name == "density", at, ": unknown key \"", name,
                       "\" (a model takes \"weight\" and \"density\")");
          LAMINA_CHECK(method_reads(name), at, ": ", method.name, " has no parameter \"", name, "\" (it reads ",
                       join(method.keys), ")");
          LAMINA_CHECK(entry.parameters.count(name) == 0, at, ": \"", name, "\" given twice");
          entry.parameters[name] = parse_parameter(parameter, range_of(name, result.method), at);
        };
        for (const auto& [entry_key, entry_value] : entries[i].as_object(entry_where)) {
          const std::string at = entry_where + "." + entry_key;
          if (entry_key == "model") {
            entry.path = entry_value.as_string(at);
            LAMINA_CHECK(!entry.path.empty(), at, ": empty path");
            has_path = true;
          } else if (entry_key == "parameters") {
            for (const auto& [name, parameter] : entry_value.as_object(at)) add_parameter(name, parameter, at + "." + name);
          } else {
            add_parameter(entry_key, entry_value, at);
          }
        }
        LAMINA_CHECK(has_path, entry_where, ": missing key \"model\" (the model's folder)");
        result.models.push_back(std::move(entry));
      }
    } else {
      throw Error(str_cat(where, ": unknown key (a recipe has method, base_model, models, parameters, dtype, seed)"));
    }
  }
  LAMINA_CHECK(has_models && !result.models.empty(), source, ": models: missing or empty (list the models to merge)");

  if (result.method == Method::slerp) {
    LAMINA_CHECK(result.parameters.count("t"), source, ": parameters.t: missing (slerp's interpolation factor, 0 to 1)");
    size_t others = 0;
    for (const ModelEntry& entry : result.models)
      others += result.base_model && same_path(entry.path, *result.base_model) ? 0 : 1;
    const size_t ends = others + (result.base_model ? 1 : 0);
    LAMINA_CHECK(ends == 2, source, ": models: slerp merges exactly two models (base_model, or the first model, at t = 0 and the other at t = 1), got ", ends);
  } else if (!method_uses_base(result.method)) {
    LAMINA_CHECK(!result.base_model, source, ": base_model: ", method.name,
                 " has no base (list the model among \"models\" to average it in)");
  } else {
    LAMINA_CHECK(result.base_model.has_value(), source, ": base_model: missing (", method.name,
                 " adds the models' differences from it)");
  }
  if (method_reads("density")) {
    for (size_t i = 0; i < result.models.size(); ++i)
      LAMINA_CHECK(result.models[i].parameters.count("density") || result.parameters.count("density"), source,
                   ": models[", i, "]: no density, and parameters has none (", method.name,
                   " keeps that fraction of each task vector's entries)");
  }
  return result;
}

Recipe Recipe::load(const std::string& path) { return from_json(json::parse_file(path), path); }

std::vector<std::string> Recipe::input_paths() const {
  std::vector<std::string> paths;
  if (method == Method::slerp) {
    if (base_model) paths.push_back(*base_model);
    for (const ModelEntry& entry : models)
      if (!base_model || !same_path(entry.path, *base_model)) paths.push_back(entry.path);
    return paths;
  }
  if (method_uses_base(method)) paths.push_back(*base_model);
  for (const ModelEntry& entry : models) paths.push_back(entry.path);
  return paths;
}

double Recipe::model_parameter(size_t model, const std::string& key, const std::string& tensor,
                               int64_t num_layers) const {
  LAMINA_CHECK(model < models.size(), "merge: model index ", model, " out of range");
  const auto own = models[model].parameters.find(key);
  if (own != models[model].parameters.end()) return own->second.value_for(tensor, num_layers);
  return recipe_parameter(key, tensor, num_layers);
}

double Recipe::recipe_parameter(const std::string& key, const std::string& tensor, int64_t num_layers) const {
  const auto found = parameters.find(key);
  if (found != parameters.end()) return found->second.value_for(tensor, num_layers);
  if (key == "weight" || key == "lambda") return 1.0;
  throw Error(str_cat(source, ": parameters.", key, ": missing"));
}

}  // namespace lamina::merge
