// 4-bit checkpoints in the layout transformers saves bitsandbytes models in
// (../shared/docs/formats-and-quantization.md §4.10).
//
// For a quantized Linear whose weight is named W (= "<prefix>.weight") the safetensors file holds:
//   W                                   U8  [(n+1)/2, 1]  packed codes (or the same bytes as another dtype)
//   W.absmax                            F32 [blocks], or U8 [blocks] with double quantization
//   W.quant_map                         F32 [16]
//   W.nested_absmax, W.nested_quant_map F32, double quantization only
//   W.quant_state.bitsandbytes__nf4     U8  UTF-8 JSON of the other fields ("__fp4" for FP4)
// and config.json a "quantization_config" block. Everything else (embeddings, norms, lm_head)
// stays as it was.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/io/safetensors.h"
#include "ops/quant4.h"
#include "tensor/io/json.h"

namespace lamina::bnb4bit {

// What config.json's quantization_config says about 4-bit weights.
struct QuantizationConfig {
  ops::Quant4Format format = ops::Quant4Format::nf4;
  bool double_quant = false;
  std::string compute_dtype = "bfloat16";  // bnb_4bit_compute_dtype
  std::string quant_storage = "uint8";     // bnb_4bit_quant_storage
};

// The quantization_config object, keys in transformers' order.
json::Value quantization_config_json(const QuantizationConfig& config);
// The 4-bit settings of a parsed config.json, or nothing when it has no bitsandbytes 4-bit
// quantization_config; a malformed block throws naming `source`.
std::optional<QuantizationConfig> read_quantization_config(const json::Value& config,
                                                           const std::string& source = "config.json");

// The Linear weights transformers quantizes by default in a Llama: q/k/v/o and gate/up/down
// inside the decoder layers (never embeddings, norms or lm_head).
bool is_default_quantized_weight(const std::string& name);

// "float32", "bfloat16", "float16" (PyTorch's names, as quant_state's "dtype" holds them).
std::string torch_dtype_name(DType dtype);
DType dtype_from_torch_name(const std::string& name, const std::string& what);

// The quant_state JSON exactly as Python's json.dumps writes it (key order, separators, the
// offset as Python's shortest float repr).
std::string quant_state_json(const ops::Quantized4Bit& q);
// The key that holds it: "<weight_name>.quant_state.bitsandbytes__nf4" (or __fp4).
std::string quant_state_key(const std::string& weight_name, ops::Quant4Format format);

// Appends the tensors of one quantized weight named `weight_name` (e.g.
// "model.layers.0.self_attn.q_proj.weight"), moved to the CPU.
void append_quantized_weight(safetensors::NamedTensors& tensors, const std::string& weight_name,
                             const ops::Quantized4Bit& q);

// The names of the weights stored 4-bit in `checkpoint` (those with a quant_state key), sorted.
std::vector<std::string> quantized_weight_names(const safetensors::Checkpoint& checkpoint);
// Reads one 4-bit weight (on the CPU), checking every size against its quant_state.
ops::Quantized4Bit read_quantized_weight(const safetensors::Checkpoint& checkpoint, const std::string& weight_name);
// Every 4-bit weight of the checkpoint folder, by weight name.
std::map<std::string, ops::Quantized4Bit> load_quantized_weights(const std::string& directory);

}  // namespace lamina::bnb4bit
