// PEFT adapter folders: adapter_config.json <-> LoraConfig, adapter_model.safetensors <-> the
// adapters of a model's Linear layers (models/io/peft.h).
#include "models/io/peft.h"

#include <cmath>
#include <filesystem>
#include <set>
#include <tuple>

#include "autograd/autograd.h"
#include "models/io/safetensors.h"
#include "nn/layers.h"
#include "ops/ops.h"
#include "tensor/io/atomic_file.h"

namespace lamina::peft {
namespace {

namespace fs = std::filesystem;

const char* kPrefix = "base_model.model.";

json::Value string_list(const std::vector<std::string>& names) {
  json::Array array;
  for (const std::string& name : names) array.emplace_back(name);
  return json::Value(std::move(array));
}

// A list of names, or a string (a regex, or "all-linear"), as PEFT accepts both.
void read_module_names(const json::Value& value, const std::string& what, std::vector<std::string>& names,
                       std::string* regex) {
  names.clear();
  if (value.is_null()) return;
  if (value.is_string()) {
    if (value.as_string() == "all-linear") names = {value.as_string()};
    else *regex = value.as_string();
    return;
  }
  for (const json::Value& entry : value.as_array(what)) names.push_back(entry.as_string(what));
}

void require_unset(const json::Value& config, const char* key, const std::string& source, const char* why) {
  const json::Value* value = config.find(key);
  if (!value || value->is_null()) return;
  if (value->is_array() && value->as_array().empty()) return;
  if (value->is_bool() && !value->as_bool()) return;
  throw Error(str_cat(source, ": ", key, " = ", value->dump(), " is not supported (", why, ")"));
}

// Whole numbers as JSON integers (lora_alpha 16, not 16.0), as PEFT's own files spell them.
json::Value number(double value) {
  if (std::trunc(value) == value && std::abs(value) < 9e15) return json::Value(int64_t(value));
  return json::Value(value);
}

std::string escape_regex(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (std::string(".^$|()[]{}*+?\\").find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

std::string file_key(const std::string& module_path, const std::string& part) {
  return kPrefix + module_path + "." + part + (part == "lora_magnitude_vector" ? "" : ".weight");
}

std::string saved_module_key(const std::string& parameter_name) { return kPrefix + parameter_name; }

json::Value adapter_config_json(const nn::LoraConfig& config) {
  json::Value out = json::Object{};
  out.set("peft_type", "LORA");
  out.set("task_type", config.task_type);
  out.set("base_model_name_or_path", config.base_model_name_or_path.empty() ? json::Value() : json::Value(config.base_model_name_or_path));
  out.set("r", config.options.rank);
  out.set("lora_alpha", number(config.options.alpha));
  out.set("lora_dropout", config.options.dropout);
  if (!config.target_regex.empty()) out.set("target_modules", config.target_regex);
  else if (config.target_modules.size() == 1 && config.target_modules[0] == "all-linear") out.set("target_modules", "all-linear");
  else out.set("target_modules", string_list(config.target_modules));
  if (!config.exclude_regex.empty()) out.set("exclude_modules", config.exclude_regex);
  else out.set("exclude_modules", config.exclude_modules.empty() ? json::Value() : string_list(config.exclude_modules));
  out.set("bias", "none");
  out.set("fan_in_fan_out", false);
  out.set("use_rslora", config.options.use_rslora);
  out.set("use_dora", config.options.use_dora);
  if (config.options.init == nn::LoraInit::gaussian) out.set("init_lora_weights", "gaussian");
  else out.set("init_lora_weights", config.options.init == nn::LoraInit::kaiming);
  out.set("modules_to_save", config.modules_to_save.empty() ? json::Value() : string_list(config.modules_to_save));
  json::Value ranks = json::Object{}, alphas = json::Object{};
  for (const auto& [pattern, rank] : config.rank_pattern) ranks.set(pattern, rank);
  for (const auto& [pattern, alpha] : config.alpha_pattern) alphas.set(pattern, number(alpha));
  out.set("rank_pattern", ranks);
  out.set("alpha_pattern", alphas);
  out.set("layers_to_transform", json::Value());
  out.set("layers_pattern", json::Value());
  out.set("lora_bias", false);
  out.set("inference_mode", true);
  out.set("revision", json::Value());
  return out;
}

nn::LoraConfig parse_adapter_config(const json::Value& value, const std::string& source) {
  const json::Value* peft_type = value.find("peft_type", source);
  LAMINA_CHECK(peft_type != nullptr, source, ": missing key \"peft_type\" (PEFT requires it)");
  LAMINA_CHECK(peft_type->as_string(source + ": peft_type") == "LORA", source, ": peft_type is \"",
               peft_type->as_string(), "\", only \"LORA\" adapters are supported");
  nn::LoraConfig config;
  // PEFT's defaults fill what is absent.
  config.options = nn::LoraOptions{};
  if (const json::Value* v = value.find("r"); v && !v->is_null()) config.options.rank = v->as_int64(source + ": r");
  if (const json::Value* v = value.find("lora_alpha"); v && !v->is_null())
    config.options.alpha = v->as_double(source + ": lora_alpha");
  if (const json::Value* v = value.find("lora_dropout"); v && !v->is_null())
    config.options.dropout = v->as_double(source + ": lora_dropout");
  if (const json::Value* v = value.find("use_rslora"); v && !v->is_null())
    config.options.use_rslora = v->as_bool(source + ": use_rslora");
  if (const json::Value* v = value.find("use_dora"); v && !v->is_null())
    config.options.use_dora = v->as_bool(source + ": use_dora");
  if (const json::Value* v = value.find("init_lora_weights"); v && !v->is_null()) {
    if (v->is_bool()) config.options.init = v->as_bool() ? nn::LoraInit::kaiming : nn::LoraInit::random;
    else if (v->as_string(source + ": init_lora_weights") == "gaussian") config.options.init = nn::LoraInit::gaussian;
    // Other schemes (pissa, loftq, ...) only decide starting values, which the file replaces.
  }
  LAMINA_CHECK(config.options.rank > 0, source, ": r must be positive, got ", config.options.rank);
  LAMINA_CHECK(config.options.dropout >= 0 && config.options.dropout < 1, source,
               ": lora_dropout must be in [0, 1), got ", config.options.dropout);
  if (const json::Value* v = value.find("target_modules"); v && !v->is_null())
    read_module_names(*v, source + ": target_modules", config.target_modules, &config.target_regex);
  if (const json::Value* v = value.find("exclude_modules"); v && !v->is_null())
    read_module_names(*v, source + ": exclude_modules", config.exclude_modules, &config.exclude_regex);
  if (const json::Value* v = value.find("rank_pattern"); v && !v->is_null())
    for (const auto& [pattern, rank] : v->as_object(source + ": rank_pattern"))
      config.rank_pattern.emplace_back(pattern, rank.as_int64(source + ": rank_pattern: " + pattern));
  if (const json::Value* v = value.find("alpha_pattern"); v && !v->is_null())
    for (const auto& [pattern, alpha] : v->as_object(source + ": alpha_pattern"))
      config.alpha_pattern.emplace_back(pattern, alpha.as_double(source + ": alpha_pattern: " + pattern));
  if (const json::Value* v = value.find("base_model_name_or_path"); v && v->is_string())
    config.base_model_name_or_path = v->as_string();
  if (const json::Value* v = value.find("bias"); v && !v->is_null())
    LAMINA_CHECK(v->as_string(source + ": bias") == "none", source, ": bias = \"", v->as_string(),
                 "\" is not supported (only \"none\": lamina's Linear layers have no bias to train)");
  require_unset(value, "fan_in_fan_out", source, "it is for GPT-2's Conv1D layers; Llama's are Linear");
  if (const json::Value* v = value.find("modules_to_save"); v && !v->is_null())
    for (const json::Value& name : v->as_array(source + ": modules_to_save"))
      config.modules_to_save.push_back(name.as_string(source + ": modules_to_save"));
  if (const json::Value* v = value.find("task_type"); v && !v->is_null()) config.task_type = v->as_string(source + ": task_type");
  require_unset(value, "layers_to_transform", source, "adapters on a subset of layers are not loaded");
  require_unset(value, "lora_bias", source, "lora_B has no bias in lamina");
  return config;
}

nn::LoraConfig read_adapter_config(const std::string& directory) {
  const std::string path = (fs::path(directory) / "adapter_config.json").string();
  LAMINA_CHECK(fs::is_regular_file(path), "PEFT adapter: ", path, " not found (", directory,
               " must be a folder holding adapter_config.json and adapter_model.safetensors)");
  return parse_adapter_config(json::parse_file(path), path);
}

void save_adapter(const std::string& directory, const nn::Module& model, const nn::LoraConfig& config,
                  const std::string& adapter_name) {
  safetensors::NamedTensors tensors;
  for (const auto& [path, linear] : nn::named_linears(model)) {
    if (!linear->has_adapter(adapter_name)) continue;
    const nn::LoraAdapter& adapter = linear->adapter(adapter_name);
    const auto as_f32 = [](const Tensor& t) { return t.dtype() == DType::f32 ? t.detach() : ops::cast(t.detach(), DType::f32); };
    tensors.emplace_back(file_key(path, "lora_A"), as_f32(adapter.lora_A));
    tensors.emplace_back(file_key(path, "lora_B"), as_f32(adapter.lora_B));
    if (adapter.options.use_dora) tensors.emplace_back(file_key(path, "lora_magnitude_vector"), as_f32(adapter.magnitude));
  }
  LAMINA_CHECK(!tensors.empty(), "save_adapter: the model has no adapter named '", adapter_name, "'");
  // Modules trained whole (PEFT's modules_to_save), under their own names.
  for (const auto& [name, parameter] : nn::modules_to_save_parameters(model, config))
    tensors.emplace_back(saved_module_key(name), parameter.dtype() == DType::f32 ? parameter.detach() : ops::cast(parameter.detach(), DType::f32));
  fs::create_directories(directory);
  safetensors::save((fs::path(directory) / "adapter_model.safetensors").string(), tensors);
  io::write_file_atomically((fs::path(directory) / "adapter_config.json").string(),
                            adapter_config_json(config).dump(2) + "\n");
}

nn::LoraConfig load_adapter(const std::string& directory, nn::Module& model, const std::string& adapter_name) {
  const std::string config_path = (fs::path(directory) / "adapter_config.json").string();
  nn::LoraConfig config = read_adapter_config(directory);
  const std::string weights_path = (fs::path(directory) / "adapter_model.safetensors").string();
  if (!fs::exists(weights_path) && fs::exists(fs::path(directory) / "adapter_model.bin"))
    throw Error(str_cat("PEFT adapter: ", directory, " holds adapter_model.bin (a pickle), which lamina does not read; "
                        "save the adapter with safe_serialization=True"));
  LAMINA_CHECK(fs::is_regular_file(weights_path), "PEFT adapter: ", weights_path, " not found");
  const safetensors::File file = safetensors::File::open(weights_path);

  // Every name in target_modules must name some Linear of the model.
  const auto linears = nn::named_linears(model);
  if (config.target_regex.empty() && !(config.target_modules.size() == 1 && config.target_modules[0] == "all-linear"))
    for (const std::string& name : config.target_modules) {
      bool found = false;
      for (const auto& [path, linear] : linears) found = found || path == name || path.ends_with("." + name);
      LAMINA_CHECK(found, config_path, ": target module \"", name, "\" is not a Linear module of the model");
    }

  // Check every key before the model is touched.
  std::set<std::string> used;
  std::vector<std::tuple<std::shared_ptr<nn::Linear>, std::string, Tensor, Tensor, Tensor>> loads;
  const auto read_checked = [&](const std::string& key, const Shape& shape) {
    const safetensors::TensorInfo* info = file.find(key);
    LAMINA_CHECK(info != nullptr, weights_path, ": missing key ", key);
    LAMINA_CHECK(info->file_dtype == "F32" || info->file_dtype == "F16" || info->file_dtype == "BF16", weights_path,
                 ": ", key, " has dtype ", info->file_dtype, " (adapters are F32, F16 or BF16)");
    LAMINA_CHECK(info->shape == shape, weights_path, ": ", key, " has shape ", info->shape, ", expected ", shape);
    used.insert(key);
    return file.read(key);
  };
  for (const auto& [path, linear] : linears) {
    if (!nn::lora_targets(config, path)) continue;
    const std::string key_a = file_key(path, "lora_A");
    const safetensors::TensorInfo* info_a = file.find(key_a);
    LAMINA_CHECK(info_a != nullptr, weights_path, ": missing key ", key_a, " (", path, " is a target module)");
    LAMINA_CHECK(info_a->shape.size() == 2 && info_a->shape[0] > 0, weights_path, ": ", key_a, " has shape ",
                 info_a->shape, ", expected [r, ", linear->in_features(), "]");
    const int64_t rank = info_a->shape[0];
    const Tensor a = read_checked(key_a, {rank, linear->in_features()});
    const Tensor b = read_checked(file_key(path, "lora_B"), {linear->out_features(), rank});
    const Tensor m = config.options.use_dora ? read_checked(file_key(path, "lora_magnitude_vector"), {linear->out_features()})
                                             : Tensor();
    loads.emplace_back(linear, path, a, b, m);
    config.rank_pattern.insert(config.rank_pattern.begin(), {escape_regex(path), rank});
  }
  std::vector<std::pair<Tensor, Tensor>> whole;  // (the model's parameter, the file's values)
  for (const auto& [name, parameter] : nn::modules_to_save_parameters(model, config))
    whole.emplace_back(parameter, read_checked(saved_module_key(name), parameter.shape()));
  for (const safetensors::TensorInfo& info : file.tensors())
    LAMINA_CHECK(used.count(info.name) != 0, weights_path, ": key ", info.name,
                 " belongs to no target module of ", config_path,
                 config.options.use_dora ? "" : " (a lora_magnitude_vector needs use_dora true)");

  nn::LoraConfig applied = config;
  nn::apply_lora(model, applied, adapter_name);
  autograd::NoGradGuard no_grad;
  for (const auto& [linear, path, a, b, m] : loads) {
    const nn::LoraAdapter& adapter = linear->adapter(adapter_name);
    const auto converted = [&](const Tensor& source, const Tensor& like) {
      return ops::to_device(ops::cast(source, like.dtype()), like.device());
    };
    adapter.lora_A.set_data(converted(a, adapter.lora_A));
    adapter.lora_B.set_data(converted(b, adapter.lora_B));
    if (m.defined()) adapter.magnitude.set_data(converted(m, adapter.magnitude));
  }
  for (const auto& [parameter, values] : whole)
    ops::copy_(parameter, ops::to_device(ops::cast(values, parameter.dtype()), parameter.device()));
  // The config as the file says it, without the per-module ranks added above.
  config.rank_pattern.erase(config.rank_pattern.begin(), config.rank_pattern.begin() + int64_t(loads.size()));
  return config;
}

}  // namespace lamina::peft
