// The Llama architecture's hyperparameters, read from (and written to) a Hugging Face
// config.json. Covers Llama 3, 3.1 and 3.2 (llama3 RoPE scaling, tied embeddings, explicit
// head_dim) and Llama-architecture relatives such as SmolLM2; anything this implementation
// would compute differently (other activations, biases, other RoPE scalings) is rejected.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "tensor/io/json.h"

namespace lamina::llama {

// The largest size validate() accepts for any one dimension or count.
inline constexpr int64_t kMaxConfigSize = int64_t(1) << 32;

// Control LLM's parallel blocks (Wei et al. 2025, "Control LLM: Controlled Evolution for
// Intelligence Retention in LLM", section 3): each chosen layer i runs beside a trainable copy of
// itself on the same input, and the two outputs a = layer_i(h), b = copy_i(h) are interpolated,
//   "linear" (the paper's Lerp):   h_out = (1 - alpha) * a + alpha * b
//   "dynamic" (Dlerp):             h_out = (1 - g) * a + g * b,  g = sigmoid(w . [a; b] + c) per token,
// where the gate's w [1, 2 * hidden] and c [1] are trained ("model.layers.<i>.expanded_gate.*";
// `lamina expand` starts them at w = 0, c = logit(alpha)). A lamina extension of the Llama
// config, read from and written to config.json's "lamina_parallel_blocks" ({"layers": [...],
// "alpha": ..., "interpolation": ...}); transformers has no class that runs it (it ignores the
// key and the copies' tensors).
struct ParallelBlocks {
  std::vector<int64_t> layers;  // ascending, no repeats, each below num_hidden_layers
  double alpha = 0.5;           // linear: the copy's weight, in [0, 1]; dynamic: the gate's start, in (0, 1)
  std::string interpolation = "linear";  // "linear" or "dynamic"
  bool dynamic() const { return interpolation == "dynamic"; }
};

struct LlamaConfig {
  int64_t vocab_size = 128256;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 14336;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 128;
  int64_t max_position_embeddings = 8192;
  double rms_norm_eps = 1e-5;
  double rope_theta = 500000.0;
  std::optional<Llama3RopeScaling> rope_scaling;  // Llama 3.1+ "rope_type": "llama3"
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 128000;
  std::vector<int64_t> eos_token_ids = {128001};
  std::optional<int64_t> pad_token_id;
  DType dtype = DType::bf16;  // the checkpoint's storage dtype (torch_dtype / dtype)
  double initializer_range = 0.02;
  std::optional<ParallelBlocks> parallel_blocks;  // none: a plain Llama

  // Parses a config.json object; `source` names it in errors. Fields that contradict each other
  // (dtype against torch_dtype) or say too little (a rope_scaling block without a rope_type)
  // are errors naming the field.
  static LlamaConfig from_json(const json::Value& config, const std::string& source = "config.json");
  static LlamaConfig load(const std::string& config_path);
  json::Value to_json() const;
  // Throws on sizes that are not positive, beyond kMaxConfigSize or inconsistent (heads,
  // head_dim, token ids), and on a parameter count past 64 bits.
  void validate() const;

  RopeConfig rope() const { return {head_dim, rope_theta, rope_scaling}; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // The decoder blocks that run: the layers and their parallel copies (each has its own KV cache
  // slots: copy k of parallel_blocks->layers uses cache layer num_hidden_layers + k).
  int64_t decoder_blocks() const {
    return num_hidden_layers + (parallel_blocks ? int64_t(parallel_blocks->layers.size()) : 0);
  }
  // Parameters of LlamaForCausalLM with this config (llama3.md section 2); throws when the
  // count overflows 64 bits.
  int64_t parameter_count() const;
  // The weights of the layers' projections (q, k, v, o, gate, up, down): what QLoRA keeps in 4 bits.
  int64_t linear_parameter_count() const;
};

}  // namespace lamina::llama
