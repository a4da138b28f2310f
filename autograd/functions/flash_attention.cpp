// The differentiable fused attention: ops::flash_attention forward, ops::flash_attention_backward
// as its rule (derivation above the kernel in ops/cpu/flash_attention.cpp). The node keeps q, k,
// v, the output and the lse: O(B·H·T·D), never the Tq x Tk probabilities.
#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;
using autograd::saved;

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern,
                       std::optional<double> scale) {
  const profiler::Scope scope("forward:", "flash_attention");
  ops::AttentionResult result = ops::flash_attention(q, k, v, pattern, scale);
  AttentionPattern kept = pattern;
  kept.additive_mask = saved(pattern.additive_mask);
  autograd::record("flash_attention", {&result.out}, {q, k, v},
                   [q = saved(q), k = saved(k), v = saved(v), out = saved(result.out), lse = result.lse, kept,
                    scale](const Grads& g) {
                     ops::AttentionGrads grads = ops::flash_attention_backward(g[0], q, k, v, out, lse, kept, scale);
                     return Grads{grads.dq, grads.dk, grads.dv};
                   });
  return result.out;
}

}  // namespace lamina
