// PEFT LoRA adapter folders (formats-and-quantization.md 3.5, 3.6): adapter_config.json and
// adapter_model.safetensors, read into and written from the adapters of a model's Linear layers.
//
// File keys are PEFT's: "base_model.model." + module path + ".lora_A.weight" (A: [r, in]),
// ".lora_B.weight" (B: [out, r]) and ".lora_magnitude_vector" (DoRA's m: [out], no ".weight");
// the modules trained whole (modules_to_save, e.g. a reward model's score head) as
// "base_model.model." + parameter name. The adapter's name, part of the in-memory parameter
// names, is not in the file.
#pragma once

#include <string>

#include "nn/lora.h"
#include "tensor/io/json.h"

namespace lamina::peft {

// The PEFT key of an adapter tensor of the Linear at `module_path`; part is "lora_A", "lora_B"
// or "lora_magnitude_vector".
std::string file_key(const std::string& module_path, const std::string& part);
// The PEFT key of a parameter of a module saved whole (modules_to_save): "base_model.model." + name.
std::string saved_module_key(const std::string& parameter_name);

// adapter_config.json as PEFT writes it (peft_type LORA, task_type CAUSAL_LM, inference_mode true).
json::Value adapter_config_json(const nn::LoraConfig& config);
// The LoraConfig a parsed adapter_config.json describes; `source` names the file in errors.
// Settings lamina cannot honour (bias other than "none", fan_in_fan_out, layers_to_transform,
// lora_bias) are errors rather than silently ignored.
nn::LoraConfig parse_adapter_config(const json::Value& value, const std::string& source);
nn::LoraConfig read_adapter_config(const std::string& directory);

// Writes adapter `adapter_name` of `model` to `directory` (created when absent): adapter_config.json
// from `config` and adapter_model.safetensors (F32, metadata format "pt"), each written atomically.
void save_adapter(const std::string& directory, const nn::Module& model, const nn::LoraConfig& config,
                  const std::string& adapter_name = "default");

// Reads the adapter folder and adds it to `model` as `adapter_name` (then the active adapter,
// the base frozen). Every problem is found before the model is touched and named with the file
// and key: a missing adapter_config.json or adapter_model.safetensors, a target module the model
// lacks, a missing key, a key no targeted module owns, a wrong shape or dtype. Each module's
// rank is lora_A's first dimension (rank_pattern need not be spelled out). Returns the config.
nn::LoraConfig load_adapter(const std::string& directory, nn::Module& model, const std::string& adapter_name = "default");

}  // namespace lamina::peft
