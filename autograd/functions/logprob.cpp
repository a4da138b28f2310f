// Differentiable log-prob primitives: the fused per-token log-prob gather and log1mexp.
// Backward derivations sit above the kernels in ops/cpu/logprob.cpp.
#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;
using autograd::saved;

Tensor token_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask, double temperature) {
  const profiler::Scope scope("forward:", "token_logprobs");
  ops::TokenLogprobsResult result = ops::token_logprobs(logits, labels, mask, temperature);
  autograd::record("token_logprobs", {&result.logprobs}, {logits},
                   [logits = saved(logits), labels = saved(labels), mask = saved(mask), lse = result.lse,
                    temperature](const Grads& g) {
                     return Grads{ops::token_logprobs_backward(g[0], logits, labels, mask, lse, temperature)};
                   });
  return result.logprobs;
}

Tensor log1mexp(const Tensor& x) {
  const profiler::Scope scope("forward:", "log1mexp");
  Tensor out = ops::log1mexp(x);
  autograd::record("log1mexp", {&out}, {x}, [x = saved(x)](const Grads& g) {
    return Grads{ops::log1mexp_backward(g[0], x)};
  });
  return out;
}

}  // namespace lamina
