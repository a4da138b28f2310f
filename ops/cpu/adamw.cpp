// AdamW (Loshchilov & Hutter), in the order PyTorch's implementation applies it:
//   p  = p (1 - lr wd)                       decoupled weight decay
//   m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#include <cmath>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStep& hyper) {
  visit_floating(param.dtype(), "adamw_step_", [&](auto param_tag) {
    using P = typename decltype(param_tag)::type;
    using C = compute_t<P>;
    visit_floating(grad.dtype(), "adamw_step_", [&](auto grad_tag) {
      using G = typename decltype(grad_tag)::type;
      P* p = static_cast<P*>(param.raw_data());
      const G* g = static_cast<const G*>(grad.raw_data());
      C* m = static_cast<C*>(exp_avg.raw_data());
      C* v = static_cast<C*>(exp_avg_sq.raw_data());
      const C beta1 = C(hyper.beta1), beta2 = C(hyper.beta2), eps = C(hyper.eps);
      const C decay = C(1.0 - hyper.lr * hyper.weight_decay);
      const C step_size = C(hyper.lr / (1.0 - std::pow(hyper.beta1, double(hyper.step))));
      const C bias_correction2_sqrt = C(std::sqrt(1.0 - std::pow(hyper.beta2, double(hyper.step))));
      parallel_for(0, param.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const C gi = C(load(g[i]));
          const C mi = beta1 * m[i] + (C(1) - beta1) * gi;
          const C vi = beta2 * v[i] + (C(1) - beta2) * gi * gi;
          m[i] = mi;
          v[i] = vi;
          const C denominator = std::sqrt(vi) / bias_correction2_sqrt + eps;
          p[i] = P(load(p[i]) * decay - step_size * mi / denominator);
        }
      });
    });
  });
}

}  // namespace lamina::ops::cpu
