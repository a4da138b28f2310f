// LoRA adapters on nn::Linear, as PEFT defines them (formats-and-quantization.md section 3):
//
//   y = x W^T (+b) + s * dropout(x) A^T B^T,    A: [r, in], B: [out, r],  s = alpha / r
//   (alpha / sqrt(r) with rsLoRA)
//
// DoRA adds a trainable magnitude m [out] and rescales each output row by g = m / N, where
// N = ||W + s B A|| per output row is detached (no gradient flows through the norm, as in PEFT).
//
// A model may carry several named adapters. Which one a forward uses is a model-level setting
// shared by every Linear of the model (LoraSelection): one active adapter, one adapter per batch
// row (-1 = the base alone), or none. Parameter names follow PEFT's in-memory names:
// "...q_proj.lora_A.<adapter>.weight", "...q_proj.lora_B.<adapter>.weight",
// "...q_proj.lora_magnitude_vector.<adapter>.weight"; the file names (models/io/peft.h) drop the
// adapter name.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"

namespace lamina::nn {

class Linear;

// How A and B start (PEFT's init_lora_weights).
enum class LoraInit {
  kaiming,   // true: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (the adapter starts as a no-op)
  gaussian,  // "gaussian": A ~ N(0, 1/r), B = 0
  random,    // false: A and B both as nn.Linear initialises them (a non-zero adapter; for tests)
};
const char* lora_init_name(LoraInit init);  // "true", "gaussian", "false"

// One adapter of one Linear.
struct LoraOptions {
  int64_t rank = 8;
  double alpha = 8;
  double dropout = 0;  // on the adapter branch's input, in training only
  bool use_rslora = false;
  bool use_dora = false;
  LoraInit init = LoraInit::kaiming;
  double scale() const;  // alpha / r, or alpha / sqrt(r) with rsLoRA
};

// Which Linear modules get an adapter, and its settings: the fields of PEFT's LoraConfig.
struct LoraConfig {
  LoraOptions options;  // r, lora_alpha, lora_dropout, use_rslora, use_dora, init_lora_weights
  // Module names: a module matches an entry when its path equals it or ends in "." + entry.
  // "all-linear" alone means every Linear except the output head (lm_head).
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  std::string target_regex;  // when non-empty, used instead: must match the whole module path
  std::vector<std::string> exclude_modules;  // same matching as target_modules
  std::string exclude_regex;                 // when non-empty, also excludes what it fully matches
  // Per-module overrides: a pattern P matches a module path when ^(.*\.)?(P)$ does; first wins.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  // Modules trained whole beside the adapters and saved in the adapter file (PEFT's
  // modules_to_save: a reward model's "score" head). Same matching as target_modules.
  std::vector<std::string> modules_to_save;
  std::string task_type = "CAUSAL_LM";  // PEFT's task_type: CAUSAL_LM, or SEQ_CLS for a reward model
  std::string base_model_name_or_path;
  uint64_t seed = 0;  // initial A (and B) values; the dropout masks too, for a model's first adapter
};

// The weights of one adapter. The handles are the registered parameters.
struct LoraAdapter {
  std::string name;
  LoraOptions options;
  Tensor lora_A, lora_B;  // [r, in], [out, r]
  Tensor magnitude;       // [out], DoRA only
};

// Routed multi-LoRA (nn/routed_lora.h): per token, a learned gate picks and weights the adapters.
// A Linear whose model selection holds a router hands it the input and the base output.
class LoraRouter {
 public:
  virtual ~LoraRouter() = default;
  // x: [..., in], base_output: [..., out] (x W^T + b) -> base_output plus the weighted adapters.
  virtual Tensor forward(const Linear& layer, const Tensor& x, const Tensor& base_output) const = 0;
};

// The model-level choice of adapter, shared by every Linear of one model.
struct LoraSelection {
  std::vector<std::string> adapters;  // every adapter added, in order: per-row indices refer to it
  std::string active;                 // empty: adapters disabled, the base alone
  std::vector<int64_t> row_adapters;  // when non-empty: one index per batch row (-1 = base)
  // When set, the "routed" mode: it decides for every token, whatever `active` and `row_adapters`
  // say (nn::set_lora_router sets and clears it).
  std::shared_ptr<const LoraRouter> router;
  // Every adapter's dropout masks, in forward order: one stream per model, which activation
  // checkpointing rewinds for a layer's re-run when given its address (autograd::checkpoint).
  Generator dropout_generator;
};

// A module holding named children: the "lora_A" / "lora_B" groups of a Linear.
class ModuleDict : public Module {
 public:
  void add(const std::string& name, std::shared_ptr<Module> module) { register_module(name, std::move(module)); }
};

// A module holding the single parameter "weight": one adapter's A, B or magnitude.
class WeightHolder : public Module {
 public:
  explicit WeightHolder(const Tensor& weight) { register_parameter("weight", weight); }
};

// Every Linear of `model` with its path ("model.layers.0.self_attn.q_proj"), in registration order.
std::vector<std::pair<std::string, std::shared_ptr<Linear>>> named_linears(const Module& model);

// Whether the module at `path` is targeted by `config` (lm_head only when named explicitly).
bool lora_targets(const LoraConfig& config, const std::string& path);
// The rank and alpha for the module at `path`, after rank_pattern / alpha_pattern.
LoraOptions lora_options_for(const LoraConfig& config, const std::string& path);

// The parameters of the modules config.modules_to_save names, by full name (a module matches an
// entry as for target_modules); throws naming an entry that matches no module.
std::vector<NamedTensor> modules_to_save_parameters(const Module& model, const LoraConfig& config);

// Adds adapter `adapter_name` to every targeted Linear, freezes every parameter but the new
// adapter's and those of config.modules_to_save (the base and any earlier adapter: no gradients,
// no optimizer state), and makes the new adapter the active one. Returns the targeted module paths; throws when nothing matched or
// the name is taken. Call it after LlamaForCausalLM::to(), which would convert adapters too.
std::vector<std::string> apply_lora(Module& model, const LoraConfig& config, const std::string& adapter_name = "default");

// The model's adapter selection (created empty when the model has none yet).
std::shared_ptr<LoraSelection> lora_selection(const Module& model);
void set_active_adapter(const Module& model, const std::string& adapter_name);
void disable_adapters(const Module& model);  // forward with the base alone
// One adapter index (into lora_selection(model)->adapters, -1 = base) per batch row of the
// next forwards; an empty list goes back to the active adapter.
void set_row_adapters(const Module& model, const std::vector<int64_t>& row_adapters);
int64_t adapter_index(const Module& model, const std::string& adapter_name);

// Merges the adapter into every base weight that has it / undoes that (see Linear::merge_adapter).
void merge_adapter(const Module& model, const std::string& adapter_name);
void unmerge_adapter(const Module& model);
// Merges the adapter and removes every adapter: a plain model again (what `lamina lora merge` saves).
void merge_and_unload(const Module& model, const std::string& adapter_name);

}  // namespace lamina::nn
