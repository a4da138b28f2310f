// Cross-entropy: checks (targets in range) and allocation; kernels in ops/cpu/cross_entropy.cpp
// and ops/cuda/cross_entropy.cu.
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {
namespace {

DType loss_dtype(DType logits) { return logits == DType::f64 ? DType::f64 : DType::f32; }

Shape row_shape(const Tensor& logits) { return Shape(logits.shape().begin(), logits.shape().end() - 1); }

// Checks shapes and every target; returns how many targets are not ignore_index.
int64_t check_targets(const char* op, const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  check_floating(op, "logits", logits);
  check_index_dtype(op, "targets", targets);
  LAMINA_CHECK(logits.dim() >= 1, op, ": logits must have a vocabulary dim, got shape ", logits.shape());
  check_shape(op, "targets", targets, row_shape(logits));
  const int64_t vocab = logits.size(-1);
  const std::vector<int64_t> values = targets.to_vector<int64_t>();
  int64_t count = 0;
  for (size_t n = 0; n < values.size(); ++n) {
    if (values[n] == ignore_index) continue;
    LAMINA_CHECK(values[n] >= 0 && values[n] < vocab, op, ": target ", values[n], " at flat position ", n,
                 " is outside the vocabulary of ", vocab, " (and is not ignore_index ", ignore_index, ")");
    ++count;
  }
  return count;
}

}  // namespace

CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  const Device device = check_device("cross_entropy", {{"logits", &logits}, {"targets", &targets}});
  const int64_t count = check_targets("cross_entropy", logits, targets, ignore_index);
  CrossEntropyResult result{Tensor::empty(row_shape(logits), loss_dtype(logits.dtype()), device),
                            Tensor::empty(row_shape(logits), loss_dtype(logits.dtype()), device), count, {}};
  LAMINA_DISPATCH(device,
                  cross_entropy(result.losses, result.lse, contiguous(logits), contiguous(targets), ignore_index));
  return result;
}

Tensor cross_entropy_backward(const Tensor& grad_losses, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t ignore_index) {
  const Device device = check_device("cross_entropy_backward",
                                     {{"grad_losses", &grad_losses}, {"logits", &logits}, {"targets", &targets},
                                      {"lse", &lse}});
  check_targets("cross_entropy_backward", logits, targets, ignore_index);
  check_shape("cross_entropy_backward", "grad_losses", grad_losses, row_shape(logits));
  check_shape("cross_entropy_backward", "lse", lse, row_shape(logits));
  check_dtype("cross_entropy_backward", "lse", lse, loss_dtype(logits.dtype()));
  Tensor grad_logits = Tensor::empty(logits.shape(), logits.dtype(), device);
  LAMINA_DISPATCH(device, cross_entropy_backward(grad_logits, contiguous(cast(grad_losses, loss_dtype(logits.dtype()))),
                                                 contiguous(logits), contiguous(targets), contiguous(lse),
                                                 ignore_index));
  return grad_logits;
}

}  // namespace lamina::ops
