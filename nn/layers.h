// The basic layers. Attention, MLP and the Llama model come with the model code (models/).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/quant4.h"
#include "ops/gguf_matmul.h"
#include "nn/lora.h"
#include "nn/module.h"

namespace lamina::nn {

// How new parameters start: zeros (ones for norms), or uninitialised memory for parameters
// about to be loaded from a checkpoint (untouched pages cost no RAM and no time).
enum class ParameterInit { zeros, uninitialized };

struct LinearOptions {
  bool bias = false;  // Llama has none
  DType dtype = DType::f32;
  ParameterInit init = ParameterInit::zeros;
  // No full-precision weight at all: the layer waits for set_base_4bit (a model loaded with its
  // projections quantized as they are read, so that the whole model never exists in f32).
  bool four_bit_base = false;
};

// y = x W^T (+ b), W: [out_features, in_features] (the HF layout), plus the LoRA adapters it
// carries (nn/lora.h): the one the model's LoraSelection picks is added to the base output.
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, LinearOptions options = {});
  Tensor forward(const Tensor& x) const;  // x: [..., in] -> [..., out]
  // PyTorch's default: W and b uniform in +-1/sqrt(in_features).
  void reset_parameters(Generator& generator);

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }

  // ---- LoRA (nn/lora.h has the model-level functions that call these)
  // Adds adapter `name` (parameters "lora_A.<name>.weight", "lora_B.<name>.weight", and
  // "lora_magnitude_vector.<name>.weight" with DoRA), initialised from `generator` as
  // options.init says (dropout masks come from the LoraSelection). Adapters are f32 (f64 over
  // an f64 base), whatever the base dtype, as PEFT keeps them.
  void add_adapter(const std::string& name, const LoraOptions& options, Generator& generator);
  bool has_adapter(const std::string& name) const { return find_adapter(name) != nullptr; }
  std::vector<std::string> adapter_names() const;
  // The adapter's handles. Replacing one (a gradient check differentiating with respect to its
  // own leaves) detaches it from named_parameters(); the values are changed with set_data.
  LoraAdapter& adapter(const std::string& name);
  const LoraAdapter& adapter(const std::string& name) const;
  // The model-wide choice of adapter this layer follows; apply_lora shares one between layers.
  void set_lora_selection(std::shared_ptr<LoraSelection> selection) { selection_ = std::move(selection); }
  const std::shared_ptr<LoraSelection>& lora_selection() const { return selection_; }

  // W <- W + s B A (DoRA: W <- (m / N)[:, None] * (W + s B A), N the row norms of W + s B A),
  // computed in f32 (f64 for an f64 base) and rounded once to W's dtype. While merged, a forward
  // with that adapter active uses W alone; any other choice is an error until unmerge.
  // unmerge_adapter computes W <- W - s B A (DoRA: W <- W / (m / N) - s B A, with the N of the
  // merge): exact where W + s B A was (e.g. values on a coarse binary grid), otherwise equal to
  // the original W up to one rounding of the sum and one of the difference (|error| <= a few
  // ulp of |W| + |s B A| in W's dtype).
  void merge_adapter(const std::string& name);
  void unmerge_adapter();
  const std::string& merged_adapter() const { return merged_; }
  // Drops every adapter (after a merge: the merged weight stays). The layer is plain again.
  void remove_adapters();

  // ---- QLoRA: a frozen 4-bit base
  // Replaces the base weight by its 4-bit quantization (ops/quant4.h): "weight" leaves the
  // parameters (no gradient, no optimizer state, not saved with the model), and every product
  // with it is the fused 4-bit one, which never builds the whole dequantized matrix. One way:
  // merging an adapter into a 4-bit base is refused (merge into the full-precision model).
  void quantize_base(ops::Quant4Format format = ops::Quant4Format::nf4, int64_t blocksize = 64,
                     bool double_quant = true);
  const ops::Quantized4Bit* base_4bit() const { return base_4bit_.get(); }
  // Makes `q` (an [out, in] 4-bit weight, e.g. read from a 4-bit checkpoint) the base, as
  // quantize_base does; on a 4-bit base it replaces the old one (moving it to another device).
  void set_base_4bit(ops::Quantized4Bit q);

  // ---- a frozen base kept in a GGUF block format (a model read from a GGUF file)
  // Makes `w` (an [out, in] matrix in Q8_0, Q4_0, Q4_1, Q4_K or Q6_K, with the owner of its
  // bytes) the base: like a 4-bit base, no "weight" parameter, every product the integer one
  // (ops::gguf_matmul), adapters train over it, merging and saving are refused. The blocks stay
  // where w.matrix.device says (the host, or a CUDA device after GgufWeight::to); on a new base
  // the adapters keep their device, so move them with the model.
  void set_base_gguf(ops::GgufWeight w);
  const ops::GgufWeight* base_gguf() const { return base_gguf_.get(); }
  // Whether the base is a frozen quantized one (4-bit or GGUF): no "weight" parameter.
  bool quantized_base() const { return base_4bit_ || base_gguf_; }

 private:
  // Throws when the layer has neither weight: built with four_bit_base, set_base_4bit not yet called.
  void require_base(const char* what) const;
  // x W^T: the one place the base weight is multiplied (a 4-bit base swaps in a fused product).
  Tensor base_product(const Tensor& x) const;
  // W as a dense tensor outside the graph (DoRA's norms, merging); dequantized when 4-bit.
  Tensor dense_base_weight() const;
  // The dtype the base computes in (f32 for a 4-bit base) and the device it lives on.
  DType base_dtype() const;
  Device base_device() const;
  // base_output: x W^T + b; product: x W^T (the same without the bias).
  Tensor add_adapter_branch(const Tensor& x, const Tensor& base_output, const Tensor& product,
                            const LoraAdapter& adapter) const;
  const LoraAdapter* find_adapter(const std::string& name) const;

  int64_t in_features_, out_features_;
  Tensor weight_, bias_;
  std::vector<std::unique_ptr<LoraAdapter>> adapters_;
  std::shared_ptr<LoraSelection> selection_;
  std::shared_ptr<ModuleDict> lora_A_, lora_B_, lora_magnitude_;
  std::string merged_;
  Tensor merged_row_factor_;  // DoRA's m / N at merge time, to unmerge with
  std::shared_ptr<const ops::Quantized4Bit> base_4bit_;  // set by quantize_base: weight_ is then undefined
  std::shared_ptr<const ops::GgufWeight> base_gguf_;      // set by set_base_gguf: weight_ is then undefined
};

// The outputs of several Linear layers on one input (a layer's q, k, v projections; gate and
// up): each layer's forward, except that layers whose bases are all kept in GGUF blocks, without
// adapters or bias, on an input that needs no gradient, share one quantized product
// (ops::gguf_matmul_many: x quantized once, one split over threads). Same results either way.
std::vector<Tensor> forward_together(const std::vector<const Linear*>& layers, const Tensor& x);

// Quantizes the base weight of every Linear of `model` but the output head (lm_head, or a reward
// model's score), as QLoRA and transformers' bitsandbytes loading do; those 4-bit already stay as
// they are.
// Returns how many were quantized now.
int64_t quantize_base_weights(Module& model, ops::Quant4Format format = ops::Quant4Format::nf4, int64_t blocksize = 64,
                              bool double_quant = true);

// Row lookup in a [num_embeddings, dim] table.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, DType dtype = DType::f32,
            ParameterInit init = ParameterInit::zeros);
  Tensor forward(const Tensor& ids) const;  // ids: [...] -> [..., dim]
  void reset_parameters(Generator& generator, double std = 0.02);  // normal(0, std), as HF Llama
  const Tensor& weight() const { return weight_; }  // undefined while the table is quantized

  // Keeps the table in a GGUF block format (a model read from a GGUF file): "weight" leaves the
  // parameters, and forward dequantizes the rows it looks up (f32, on the table's device, where
  // the ids must be). Frozen.
  void set_quantized_table(ops::GgufWeight table);
  const ops::GgufWeight* quantized_table() const { return table_.get(); }

 private:
  Tensor weight_;
  std::shared_ptr<const ops::GgufWeight> table_;
};

// y = x / sqrt(mean(x^2) + eps) * w, over the last dim; w starts at 1.
class RMSNorm : public Module {
 public:
  explicit RMSNorm(int64_t dim, double eps = 1e-5, DType dtype = DType::f32,
                   ParameterInit init = ParameterInit::zeros);  // zeros means "weight = 1" here
  Tensor forward(const Tensor& x) const;
  const Tensor& weight() const { return weight_; }
  double eps() const { return eps_; }

 private:
  Tensor weight_;
  double eps_;
};

}  // namespace lamina::nn
