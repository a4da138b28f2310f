// Per-token log-probs (fused log-softmax + gather), distribution statistics and log1mexp:
// checks, row addressing and allocation; kernels in ops/cpu/logprob.cpp and ops/cuda/logprob.cu.
#include <cmath>

#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {
namespace {

DType result_dtype(DType logits) { return logits == DType::f64 ? DType::f64 : DType::f32; }

Shape row_shape(const Tensor& logits) { return Shape(logits.shape().begin(), logits.shape().end() - 1); }

// The logits the kernel reads: the tensor itself when its vocabulary dim is unit-stride (any
// row strides, e.g. the shifted view logits[:, :-1]), otherwise a contiguous copy. The CUDA
// kernels take the same offsets (copied to the device per call).
struct Rows {
  Tensor logits;
  std::vector<int64_t> offsets;  // element offset of each row from logits' element [0, ...]
};

Rows address_rows(const Tensor& logits) {
  Rows rows{logits.stride(-1) == 1 || logits.size(-1) <= 1 ? logits : contiguous(logits), {}};
  const Shape outer = row_shape(rows.logits);
  const Shape outer_strides(rows.logits.strides().begin(), rows.logits.strides().end() - 1);
  rows.offsets.resize(size_t(shape_numel(outer)));
  for_each_offset(outer, outer_strides, 0, [&](int64_t at, int64_t i) { rows.offsets[size_t(i)] = at; });
  return rows;
}

// Checks devices, shapes, dtypes and the labels of every kept position (labels under a false
// mask are padding and may hold anything; on a GPU they are read through a host copy).
Device check_token_arguments(const char* op, const Tensor& logits, const Tensor& labels, const Tensor& mask,
                             double temperature) {
  const Device device = check_device(op, {{"logits", &logits}, {"labels", &labels}, {"mask", &mask}});
  check_floating(op, "logits", logits);
  check_index_dtype(op, "labels", labels);
  check_dtype(op, "mask", mask, DType::boolean);
  LAMINA_CHECK(logits.dim() >= 1 && logits.size(-1) >= 1, op, ": logits must have a non-empty vocabulary dim, got shape ",
               logits.shape());
  check_shape(op, "labels", labels, row_shape(logits));
  check_shape(op, "mask", mask, row_shape(logits));
  LAMINA_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be a finite number > 0, got ",
               temperature);
  const int64_t vocab = logits.size(-1);
  const std::vector<int64_t> values = labels.to_vector<int64_t>();
  const std::vector<bool> kept = mask.to_vector<bool>();
  for (size_t n = 0; n < values.size(); ++n) {
    if (!kept[n]) continue;
    LAMINA_CHECK(values[n] >= 0 && values[n] < vocab, op, ": label ", values[n], " at flat position ", n,
                 " (mask true) is outside the vocabulary of ", vocab);
  }
  return device;
}

}  // namespace

TokenLogprobsResult token_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask, double temperature) {
  const Device device = check_token_arguments("token_logprobs", logits, labels, mask, temperature);
  const Rows rows = address_rows(logits);
  TokenLogprobsResult result{Tensor::empty(row_shape(logits), result_dtype(logits.dtype()), device),
                             Tensor::empty(row_shape(logits), result_dtype(logits.dtype()), device)};
  LAMINA_DISPATCH(device, token_logprobs(result.logprobs, result.lse, rows.logits, rows.offsets, contiguous(labels),
                                         contiguous(mask), temperature));
  return result;
}

Tensor token_logprobs_backward(const Tensor& grad_logprobs, const Tensor& logits, const Tensor& labels,
                               const Tensor& mask, const Tensor& lse, double temperature) {
  const char* op = "token_logprobs_backward";
  const Device device = check_token_arguments(op, logits, labels, mask, temperature);
  check_device(op, {{"grad_logprobs", &grad_logprobs}, {"logits", &logits}, {"lse", &lse}});
  check_shape(op, "grad_logprobs", grad_logprobs, row_shape(logits));
  check_shape(op, "lse", lse, row_shape(logits));
  check_dtype(op, "lse", lse, result_dtype(logits.dtype()));
  const Rows rows = address_rows(logits);
  Tensor grad_logits = Tensor::empty(logits.shape(), logits.dtype(), device);
  LAMINA_DISPATCH(device, token_logprobs_backward(grad_logits,
                                                  contiguous(cast(grad_logprobs, result_dtype(logits.dtype()))),
                                                  rows.logits, rows.offsets, contiguous(labels), contiguous(mask),
                                                  contiguous(lse), temperature));
  return grad_logits;
}

TokenDistributionStats token_distribution_stats(const Tensor& logits, const Tensor& labels, const Tensor& mask,
                                                double temperature) {
  const Device device = check_token_arguments("token_distribution_stats", logits, labels, mask, temperature);
  const Rows rows = address_rows(logits);
  const Shape shape = row_shape(logits);
  const DType dtype = result_dtype(logits.dtype());
  TokenDistributionStats stats{Tensor::empty(shape, dtype, device), Tensor::empty(shape, dtype, device),
                               Tensor::empty(shape, dtype, device), Tensor::empty(shape, DType::boolean, device)};
  LAMINA_DISPATCH(device, token_distribution_stats(stats, rows.logits, rows.offsets, contiguous(labels),
                                                   contiguous(mask), temperature));
  return stats;
}

Tensor log1mexp(const Tensor& x) {
  const Device device = check_device("log1mexp", {{"x", &x}});
  check_floating("log1mexp", "x", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, log1mexp(out, x));
  return out;
}

Tensor log1mexp_backward(const Tensor& grad_out, const Tensor& x) {
  const Device device = check_device("log1mexp_backward", {{"grad_out", &grad_out}, {"x", &x}});
  check_floating("log1mexp_backward", "x", x);
  check_same_dtype("log1mexp_backward", {{"grad_out", &grad_out}, {"x", &x}});
  check_shape("log1mexp_backward", "grad_out", grad_out, x.shape());
  Tensor grad_in = Tensor::empty(x.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, log1mexp_backward(grad_in, grad_out, x));
  return grad_in;
}

}  // namespace lamina::ops
