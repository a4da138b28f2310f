// Extracting a LoRA adapter from a fine-tuned model and its base: for each targeted Linear,
// delta = W_tuned - W_base is decomposed by a truncated SVD (svd.h) and written as
//
//   lora_B = U_r sqrt(S_r)  [out, r],   lora_A = sqrt(S_r) V_r^T  [r, in],   lora_alpha = r
//
// so that the adapter's scale is 1 and B A is the best rank-r approximation of delta (its
// Frobenius error is the square root of the tail energy, sum over i > r of S_i^2). The folder is a
// PEFT adapter (models/io/peft.h: the same keys and config as lamina's own writer), loadable by
// `lamina lora merge`, `lamina generate --adapter` and PEFT. A module whose matrix has fewer than r
// singular values (or whose energy rule picks fewer) gets its own rank and alpha through
// rank_pattern / alpha_pattern, so every module keeps scale 1.
//
// Both folders are mapped and read one matrix at a time; the base and tuned pages of a matrix are
// given back once it is decomposed, so memory stays at one matrix (as f64) plus the factors.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "models/io/safetensors.h"
#include "models/surgery/svd.h"
#include "nn/lora.h"

namespace lamina::surgery {

// The Linear modules of a Hugging Face Llama checkpoint, by path ("model.layers.0.self_attn.q_proj"):
// every 2-D "<path>.weight" except the embedding. Sorted.
std::vector<std::string> linear_module_paths(const safetensors::Checkpoint& checkpoint);

// The LoRA factors of one difference matrix.
struct LoraFactors {
  Tensor lora_A;  // [rank, in], f32
  Tensor lora_B;  // [out, rank], f32
  int64_t rank = 0;
  double captured_energy = 1;  // sum S_r^2 / ||delta||_F^2
  bool randomized = false;     // which SVD computed it
};

// The factors of `delta` [out, in] at rank min(rank, out, in), or, when energy_fraction > 0, at
// the smallest rank holding that fraction of ||delta||_F^2 (at most `rank`).
LoraFactors lora_factors(const Matrix& delta, int64_t rank, double energy_fraction, const SvdOptions& options);

struct ExtractOptions {
  int64_t rank = 16;
  double energy_fraction = 0;               // when > 0, a per-module rank (at most `rank`)
  std::vector<std::string> target_modules;  // module names as PEFT's target_modules; empty: all-linear
  SvdOptions svd;
  // Called after each module: its path, shape, the factors and the seconds it took.
  std::function<void(const std::string& module, int64_t out_features, int64_t in_features, const LoraFactors& factors,
                     double seconds)>
      on_module;
};

struct ModuleReport {
  std::string module;
  int64_t rank = 0;
  double captured_energy = 1;
};

struct ExtractSummary {
  nn::LoraConfig config;  // what adapter_config.json says
  std::vector<ModuleReport> modules;
  uint64_t adapter_bytes = 0;
};

// Checks both folders (unquantized checkpoints with the targeted tensors in both, of one shape,
// named in the error otherwise; every target module name must name some Linear), then writes
// adapter_config.json and adapter_model.safetensors into `directory` (which must exist), each
// atomically; the caller stages the folder as a whole.
ExtractSummary extract_lora(const std::string& base_path, const std::string& tuned_path, const std::string& directory,
                            const ExtractOptions& options);

}  // namespace lamina::surgery
