// Differentiable neural-network primitives. Each is one fused op with its own backward
// (the derivations are written above the CPU kernels in ops/cpu/).
#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;
using autograd::saved;

Tensor softmax(const Tensor& x, int64_t dim) {
  const profiler::Scope scope("forward:", "softmax");
  Tensor out = ops::softmax(x, dim);
  autograd::record("softmax", {&out}, {x}, [y = saved(out), dim](const Grads& g) {
    return Grads{ops::softmax_backward(g[0], y, dim)};
  });
  return out;
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  const profiler::Scope scope("forward:", "log_softmax");
  Tensor out = ops::log_softmax(x, dim);
  autograd::record("log_softmax", {&out}, {x}, [y = saved(out), dim](const Grads& g) {
    return Grads{ops::log_softmax_backward(g[0], y, dim)};
  });
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const profiler::Scope scope("forward:", "embedding");
  Tensor out = ops::embedding(weight, ids);
  autograd::record("embedding", {&out}, {weight}, [ids = saved(ids), rows = weight.size(0)](const Grads& g) {
    return Grads{ops::embedding_backward(g[0], ids, rows)};
  });
  return out;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const profiler::Scope scope("forward:", "rms_norm");
  ops::RmsNormResult result = ops::rms_norm(x, weight, eps);
  autograd::record("rms_norm", {&result.y}, {x, weight},
                   [x = saved(x), weight = saved(weight), rstd = result.rstd](const Grads& g) {
                     ops::RmsNormGrads grads = ops::rms_norm_backward(g[0], x, weight, rstd);
                     return Grads{grads.dx, grads.dweight};
                   });
  return result.y;
}

Tensor rope(const Tensor& x, const Tensor& positions, const RopeConfig& config) {
  const profiler::Scope scope("forward:", "rope");
  Tensor out = ops::rope(x, positions, config);
  autograd::record("rope", {&out}, {x}, [positions = saved(positions), config](const Grads& g) {
    return Grads{ops::rope_backward(g[0], positions, config)};
  });
  return out;
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  const profiler::Scope scope("forward:", "swiglu");
  Tensor out = ops::swiglu(gate, up);
  autograd::record("swiglu", {&out}, {gate, up}, [gate = saved(gate), up = saved(up)](const Grads& g) {
    auto [grad_gate, grad_up] = ops::swiglu_backward(g[0], gate, up);
    return Grads{grad_gate, grad_up};
  });
  return out;
}

Tensor dropout(const Tensor& x, double p, Generator& generator) {
  const profiler::Scope scope("forward:", "dropout");
  LAMINA_CHECK(p >= 0.0 && p < 1.0, "dropout: probability must be in [0, 1), got ", p);
  if (p == 0.0) return x;
  const Tensor mask = ops::dropout_mask(x.shape(), 1.0 - p, generator, x.dtype(), x.device());
  Tensor out = ops::mul(x, mask);
  autograd::record("dropout", {&out}, {x}, [mask](const Grads& g) { return Grads{ops::mul(g[0], mask)}; });
  return out;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options) {
  const profiler::Scope scope("forward:", "attention");
  ops::AttentionResult result = ops::attention(q, k, v, options);
  AttentionOptions kept = options;
  kept.mask = saved(options.mask);
  autograd::record("attention", {&result.out}, {q, k, v},
                   [q = saved(q), k = saved(k), v = saved(v), out = saved(result.out), lse = result.lse,
                    kept](const Grads& g) {
                     ops::AttentionGrads grads = ops::attention_backward(g[0], q, k, v, out, lse, kept);
                     return Grads{grads.dq, grads.dk, grads.dv};
                   });
  return result.out;
}

namespace {

// Per-token losses -> reduced loss; `scale` turns the reduced gradient into per-token ones.
Tensor reduced_cross_entropy(const Tensor& logits, const Tensor& targets, Reduction reduction, int64_t ignore_index,
                             int64_t* target_count) {
  const profiler::Scope scope("forward:", "cross_entropy");
  ops::CrossEntropyResult result = ops::cross_entropy(logits, targets, ignore_index);
  if (target_count != nullptr) *target_count = result.target_count;
  const double scale = reduction == Reduction::mean && result.target_count > 0 ? 1.0 / double(result.target_count)
                       : reduction == Reduction::mean                          ? 0.0
                                                                               : 1.0;
  Tensor out = reduction == Reduction::none ? result.losses
                                            : ops::binary(ops::BinaryOp::mul, ops::sum(result.losses), scale);
  autograd::record("cross_entropy", {&out}, {logits},
                   [logits = saved(logits), targets = saved(targets), lse = result.lse, ignore_index, reduction,
                    scale, rows = result.losses.shape()](const Grads& g) {
                     const Tensor grad_losses = reduction == Reduction::none
                                                    ? g[0]
                                                    : ops::binary(ops::BinaryOp::mul, g[0].expand(rows), scale);
                     return Grads{ops::cross_entropy_backward(grad_losses, logits, targets, lse, ignore_index)};
                   });
  return out;
}

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, Reduction reduction, int64_t ignore_index) {
  return reduced_cross_entropy(logits, targets, reduction, ignore_index, nullptr);
}

CrossEntropySum cross_entropy_sum(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  CrossEntropySum result;
  result.loss_sum = reduced_cross_entropy(logits, targets, Reduction::sum, ignore_index, &result.target_count);
  return result;
}

}  // namespace lamina
