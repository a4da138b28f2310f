// The basic layers. Attention, MLP and the Llama model come with the model code (models/).
#pragma once

#include "autograd/functions.h"
#include "nn/module.h"

namespace lamina::nn {

// How new parameters start: zeros (ones for norms), or uninitialised memory for parameters
// about to be loaded from a checkpoint (untouched pages cost no RAM and no time).
enum class ParameterInit { zeros, uninitialized };

struct LinearOptions {
  bool bias = false;  // Llama has none
  DType dtype = DType::f32;
  ParameterInit init = ParameterInit::zeros;
};

// y = x W^T (+ b), W: [out_features, in_features] (the HF layout).
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

 private:
  int64_t in_features_, out_features_;
  Tensor weight_, bias_;
};

// Row lookup in a [num_embeddings, dim] table.
class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t dim, DType dtype = DType::f32,
            ParameterInit init = ParameterInit::zeros);
  Tensor forward(const Tensor& ids) const;  // ids: [...] -> [..., dim]
  void reset_parameters(Generator& generator, double std = 0.02);  // normal(0, std), as HF Llama
  const Tensor& weight() const { return weight_; }

 private:
  Tensor weight_;
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
