// The differentiable fused LM head + cross-entropy: one node over (hidden, weight) whose rule is
// ops::linear_cross_entropy_backward (the derivation sits above the op in ops/linear_cross_entropy.cpp).
#include <memory>
#include <utility>

#include "autograd/functions/common.h"
#include "tensor/dtype.h"

namespace lamina {

using autograd::Grads;
using autograd::saved;

namespace {

// When the logits of the rows with a target take at most this much memory, the forward keeps
// them for the backward, which then skips one of its three head GEMMs (a fifth of the head's
// work, ~4% of a small model's step). Beyond it (a Llama-3 vocabulary of 128K over thousands of
// tokens is gigabytes) they are recomputed chunk by chunk: what the fused op is for.
constexpr int64_t kKeptLogitsBytes = int64_t(64) << 20;

}  // namespace

CrossEntropySum linear_cross_entropy_sum(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                         int64_t ignore_index, int64_t chunk_size) {
  const profiler::Scope scope("forward:", "linear_cross_entropy");
  const bool want_hidden = autograd::needs_grad({&hidden}), want_weight = autograd::needs_grad({&weight});
  // Rows times vocabulary bounds the kept rows' logits (ignored rows are dropped before the GEMM).
  const int64_t logit_bytes = hidden.numel() / std::max<int64_t>(1, hidden.size(-1)) * weight.size(0) *
                              int64_t(dtype_size(hidden.dtype()));
  const bool keep_logits = (want_hidden || want_weight) && logit_bytes <= kKeptLogitsBytes;
  ops::CrossEntropyResult result =
      ops::linear_cross_entropy(hidden, weight, targets, ignore_index, chunk_size, keep_logits);
  CrossEntropySum out;
  out.loss_sum = ops::sum(result.losses);
  out.target_count = result.target_count;
  // The backward overwrites the kept logits in place, so it takes them out of this holder: a
  // second backward through the same graph (retain_graph) finds it empty and recomputes them.
  auto kept = std::make_shared<std::vector<Tensor>>(std::move(result.logit_chunks));
  autograd::record("linear_cross_entropy", {&out.loss_sum}, {hidden, weight},
                   [hidden = saved(hidden), weight = saved(weight), targets = saved(targets), lse = result.lse,
                    rows = result.losses.shape(), ignore_index, chunk_size, want_hidden, want_weight,
                    kept](const Grads& g) {
                     // d(sum of losses)/d(loss_n) = 1: every row takes the scalar's gradient.
                     const Tensor grad_losses = g[0].expand(rows);
                     ops::LinearCrossEntropyGrads grads = ops::linear_cross_entropy_backward(
                         grad_losses, hidden, weight, targets, lse, ignore_index, want_hidden, want_weight,
                         chunk_size, std::exchange(*kept, {}));
                     return Grads{grads.grad_hidden, grads.grad_weight};
                   });
  return out;
}

}  // namespace lamina
