// The differentiable fused LM head + cross-entropy: one node over (hidden, weight) whose rule is
// ops::linear_cross_entropy_backward (the derivation sits above the op in ops/linear_cross_entropy.cpp).
#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;
using autograd::saved;

CrossEntropySum linear_cross_entropy_sum(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                         int64_t ignore_index, int64_t chunk_size) {
  ops::CrossEntropyResult result = ops::linear_cross_entropy(hidden, weight, targets, ignore_index, chunk_size);
  CrossEntropySum out;
  out.loss_sum = ops::sum(result.losses);
  out.target_count = result.target_count;
  const bool want_hidden = autograd::needs_grad({&hidden}), want_weight = autograd::needs_grad({&weight});
  autograd::record("linear_cross_entropy", {&out.loss_sum}, {hidden, weight},
                   [hidden = saved(hidden), weight = saved(weight), targets = saved(targets), lse = result.lse,
                    rows = result.losses.shape(), ignore_index, chunk_size, want_hidden,
                    want_weight](const Grads& g) {
                     // d(sum of losses)/d(loss_n) = 1: every row takes the scalar's gradient.
                     const Tensor grad_losses = g[0].expand(rows);
                     ops::LinearCrossEntropyGrads grads = ops::linear_cross_entropy_backward(
                         grad_losses, hidden, weight, targets, lse, ignore_index, want_hidden, want_weight,
                         chunk_size);
                     return Grads{grads.grad_hidden, grads.grad_weight};
                   });
  return out;
}

}  // namespace lamina
