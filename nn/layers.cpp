#include "nn/layers.h"

#include <cmath>

namespace lamina::nn {
namespace {

Tensor new_parameter(const Shape& shape, DType dtype, ParameterInit init, double value) {
  return init == ParameterInit::uninitialized ? Tensor::empty(shape, dtype) : full(shape, value, dtype);
}

}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, LinearOptions options)
    : in_features_(in_features), out_features_(out_features) {
  LAMINA_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got in ", in_features,
               ", out ", out_features);
  weight_ = register_parameter("weight", new_parameter({out_features, in_features}, options.dtype, options.init, 0.0));
  if (options.bias) bias_ = register_parameter("bias", new_parameter({out_features}, options.dtype, options.init, 0.0));
}

Tensor Linear::forward(const Tensor& x) const {
  LAMINA_CHECK(x.dim() >= 1 && x.size(-1) == in_features_, "Linear: input ", x.shape(), " does not end in ",
               in_features_, " features");
  Tensor y = matmul(x, weight_, false, true);
  return bias_.defined() ? add(y, bias_) : y;
}

void Linear::reset_parameters(Generator& generator) {
  const double bound = 1.0 / std::sqrt(double(in_features_));
  weight_.set_data(uniform(weight_.shape(), -bound, bound, generator, weight_.dtype()));
  if (bias_.defined()) bias_.set_data(uniform(bias_.shape(), -bound, bound, generator, bias_.dtype()));
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim, DType dtype, ParameterInit init) {
  LAMINA_CHECK(num_embeddings > 0 && dim > 0, "Embedding: sizes must be positive, got ", num_embeddings, " x ", dim);
  weight_ = register_parameter("weight", new_parameter({num_embeddings, dim}, dtype, init, 0.0));
}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(weight_, ids); }

void Embedding::reset_parameters(Generator& generator, double std) {
  const Tensor standard = randn(weight_.shape(), generator, weight_.dtype());
  weight_.set_data(ops::binary(ops::BinaryOp::mul, standard, std));
}

RMSNorm::RMSNorm(int64_t dim, double eps, DType dtype, ParameterInit init) : eps_(eps) {
  LAMINA_CHECK(dim > 0, "RMSNorm: dim must be positive, got ", dim);
  weight_ = register_parameter("weight", new_parameter({dim}, dtype, init, 1.0));
}

Tensor RMSNorm::forward(const Tensor& x) const { return rms_norm(x, weight_, eps_); }

}  // namespace lamina::nn
