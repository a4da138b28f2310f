// LoRA's model-level side: which Linear modules an adapter targets (PEFT's matching rules), the
// shared adapter selection, and merging. The per-layer math lives in Linear (nn/layers.cpp).
#include "nn/lora.h"

#include <cmath>
#include <regex>

#include "nn/layers.h"

namespace lamina::nn {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool matches_name_list(const std::vector<std::string>& names, const std::string& path) {
  for (const std::string& name : names)
    if (path == name || ends_with(path, "." + name)) return true;
  return false;
}

// PEFT's rank_pattern / alpha_pattern rule: the pattern may be preceded by any dotted prefix.
bool matches_pattern(const std::string& pattern, const std::string& path) {
  return std::regex_match(path, std::regex("(.*\\.)?(" + pattern + ")"));
}

void collect_linears(const Module& module, const std::string& prefix,
                     std::vector<std::pair<std::string, std::shared_ptr<Linear>>>& out) {
  for (const auto& [name, child] : module.children()) {
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    if (auto linear = std::dynamic_pointer_cast<Linear>(child)) out.emplace_back(path, linear);
    else collect_linears(*child, path, out);
  }
}

std::shared_ptr<LoraSelection> existing_selection(const Module& model) {
  for (const auto& [path, linear] : named_linears(model))
    if (linear->lora_selection()) return linear->lora_selection();
  return nullptr;
}

std::shared_ptr<LoraSelection> required_selection(const Module& model, const char* what) {
  auto selection = existing_selection(model);
  LAMINA_CHECK(selection != nullptr, what, ": the model has no LoRA adapters");
  return selection;
}

// A stream apart from the init stream of the same seed (splitmix64's mixing step).
uint64_t mixed_seed(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

const char* lora_init_name(LoraInit init) {
  switch (init) {
    case LoraInit::kaiming: return "true";
    case LoraInit::gaussian: return "gaussian";
    case LoraInit::random: return "false";
  }
  return "true";
}

double LoraOptions::scale() const {
  LAMINA_CHECK(rank > 0, "LoRA: rank must be positive, got ", rank);
  return use_rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
}

std::vector<std::pair<std::string, std::shared_ptr<Linear>>> named_linears(const Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<Linear>>> out;
  collect_linears(model, "", out);
  return out;
}

bool lora_targets(const LoraConfig& config, const std::string& path) {
  if (matches_name_list(config.exclude_modules, path)) return false;
  if (!config.exclude_regex.empty() && std::regex_match(path, std::regex(config.exclude_regex))) return false;
  if (!config.target_regex.empty()) return std::regex_match(path, std::regex(config.target_regex));
  if (config.target_modules.size() == 1 && config.target_modules[0] == "all-linear")
    return path != "lm_head" && !ends_with(path, ".lm_head");
  return matches_name_list(config.target_modules, path);
}

LoraOptions lora_options_for(const LoraConfig& config, const std::string& path) {
  LoraOptions options = config.options;
  for (const auto& [pattern, rank] : config.rank_pattern)
    if (matches_pattern(pattern, path)) {
      options.rank = rank;
      break;
    }
  for (const auto& [pattern, alpha] : config.alpha_pattern)
    if (matches_pattern(pattern, path)) {
      options.alpha = alpha;
      break;
    }
  return options;
}

std::vector<std::string> apply_lora(Module& model, const LoraConfig& config, const std::string& adapter_name) {
  const auto linears = named_linears(model);
  auto selection = existing_selection(model);
  if (!selection) {
    selection = std::make_shared<LoraSelection>();
    selection->dropout_generator = Generator(mixed_seed(config.seed, 0));
  }
  for (const std::string& existing : selection->adapters)
    LAMINA_CHECK(existing != adapter_name, "apply_lora: the model already has an adapter named '", adapter_name, "'");
  // Validate every layer's settings before touching any layer.
  std::vector<std::pair<std::shared_ptr<Linear>, LoraOptions>> targets;
  std::vector<std::string> paths;
  for (const auto& [path, linear] : linears) {
    if (!lora_targets(config, path)) continue;
    const LoraOptions options = lora_options_for(config, path);
    LAMINA_CHECK(options.rank > 0, "apply_lora: ", path, ": rank must be positive, got ", options.rank);
    LAMINA_CHECK(options.dropout >= 0 && options.dropout < 1, "apply_lora: lora_dropout must be in [0, 1), got ",
                 options.dropout);
    LAMINA_CHECK(linear->merged_adapter().empty(), "apply_lora: ", path, " has adapter '", linear->merged_adapter(),
                 "' merged; unmerge it first");
    targets.emplace_back(linear, options);
    paths.push_back(path);
  }
  if (targets.empty()) {
    std::string wanted = config.target_regex;
    for (const std::string& name : config.target_modules) wanted += (wanted.empty() ? "" : ", ") + name;
    std::string known;
    for (size_t i = 0; i < linears.size() && i < 8; ++i) known += (i ? ", " : "") + linears[i].first;
    throw Error(str_cat("apply_lora: no Linear module matches target_modules [", wanted, "] (the model's Linear modules: ",
                        known.empty() ? "none" : known, linears.size() > 8 ? ", ..." : "", ")"));
  }
  Generator generator(config.seed);
  for (size_t i = 0; i < targets.size(); ++i) {
    targets[i].first->add_adapter(adapter_name, targets[i].second, generator);
    targets[i].first->set_lora_selection(selection);
  }
  selection->adapters.push_back(adapter_name);
  selection->active = adapter_name;
  selection->row_adapters.clear();
  const std::vector<NamedTensor> saved_whole = modules_to_save_parameters(model, config);
  // Only the new adapter (and the modules saved whole) trains: the base and any earlier adapter are frozen.
  const std::string marker_a = ".lora_A." + adapter_name + ".", marker_b = ".lora_B." + adapter_name + ".",
                    marker_m = ".lora_magnitude_vector." + adapter_name + ".";
  for (const auto& [name, parameter] : model.named_parameters()) {
    const bool trainable = name.find(marker_a) != std::string::npos || name.find(marker_b) != std::string::npos ||
                           name.find(marker_m) != std::string::npos;
    parameter.set_requires_grad(trainable);
  }
  for (const auto& [name, parameter] : saved_whole) parameter.set_requires_grad(true);
  return paths;
}

std::vector<NamedTensor> modules_to_save_parameters(const Module& model, const LoraConfig& config) {
  std::vector<NamedTensor> out;
  for (const std::string& entry : config.modules_to_save) {
    bool found = false;
    for (const auto& [name, parameter] : model.named_parameters()) {
      if (name.find(".lora_") != std::string::npos) continue;  // adapters are not the module's own weights
      const size_t dot = name.rfind('.');
      const std::string module = dot == std::string::npos ? "" : name.substr(0, dot);
      if (module != entry && !module.ends_with("." + entry)) continue;
      out.emplace_back(name, parameter);
      found = true;
    }
    LAMINA_CHECK(found, "modules_to_save: no module of the model is named \"", entry, "\"");
  }
  return out;
}

std::shared_ptr<LoraSelection> lora_selection(const Module& model) {
  auto selection = existing_selection(model);
  return selection ? selection : std::make_shared<LoraSelection>();
}

int64_t adapter_index(const Module& model, const std::string& adapter_name) {
  const auto selection = required_selection(model, "adapter_index");
  for (size_t i = 0; i < selection->adapters.size(); ++i)
    if (selection->adapters[i] == adapter_name) return int64_t(i);
  std::string known;
  for (const std::string& name : selection->adapters) known += (known.empty() ? "" : ", ") + name;
  throw Error(str_cat("no LoRA adapter named '", adapter_name, "' (the model has: ", known, ")"));
}

void set_active_adapter(const Module& model, const std::string& adapter_name) {
  const auto selection = required_selection(model, "set_active_adapter");
  adapter_index(model, adapter_name);  // throws naming the known adapters
  selection->active = adapter_name;
  selection->row_adapters.clear();
}

void disable_adapters(const Module& model) {
  const auto selection = required_selection(model, "disable_adapters");
  selection->active.clear();
  selection->row_adapters.clear();
}

void set_row_adapters(const Module& model, const std::vector<int64_t>& row_adapters) {
  const auto selection = required_selection(model, "set_row_adapters");
  for (const int64_t index : row_adapters)
    LAMINA_CHECK(index >= -1 && index < int64_t(selection->adapters.size()), "set_row_adapters: index ", index,
                 " out of range (", selection->adapters.size(), " adapters; -1 = base)");
  selection->row_adapters = row_adapters;
}

void merge_adapter(const Module& model, const std::string& adapter_name) {
  set_active_adapter(model, adapter_name);
  for (const auto& [path, linear] : named_linears(model))
    if (linear->has_adapter(adapter_name)) linear->merge_adapter(adapter_name);
}

void unmerge_adapter(const Module& model) {
  for (const auto& [path, linear] : named_linears(model))
    if (!linear->merged_adapter().empty()) linear->unmerge_adapter();
}

void merge_and_unload(const Module& model, const std::string& adapter_name) {
  merge_adapter(model, adapter_name);
  for (const auto& [path, linear] : named_linears(model)) linear->remove_adapters();
}

}  // namespace lamina::nn
