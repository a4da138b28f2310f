// AdamW (Loshchilov & Hutter), in the order PyTorch's implementation applies it:
//   p  = p (1 - lr wd)                       decoupled weight decay
//   m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#include <cmath>
#include <type_traits>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStep& hyper, const Tensor& rounded) {
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
      const auto update = [&](int64_t begin, int64_t end, auto&& write_rounded) {
        for (int64_t i = begin; i < end; ++i) {
          const C gi = C(load(g[i]));
          const C mi = beta1 * m[i] + (C(1) - beta1) * gi;
          const C vi = beta2 * v[i] + (C(1) - beta2) * gi * gi;
          m[i] = mi;
          v[i] = vi;
          const C denominator = std::sqrt(vi) / bias_correction2_sqrt + eps;
          const P updated = P(load(p[i]) * decay - step_size * mi / denominator);
          p[i] = updated;
          write_rounded(i, updated);
        }
      };
      if (!rounded.defined()) {
        parallel_for(0, param.numel(), kElementwiseGrain,
                     [&](int64_t begin, int64_t end) { update(begin, end, [](int64_t, P) {}); });
        return;
      }
      // Mixed precision: the weight copy is written from the value just computed, rounded to
      // nearest even by the 16-bit type's conversion (as ops::copy_ rounds).
      visit_floating(rounded.dtype(), "adamw_step_", [&](auto rounded_tag) {
        using R = typename decltype(rounded_tag)::type;
        if constexpr (std::is_same_v<R, bf16> || std::is_same_v<R, f16>) {
          R* out = static_cast<R*>(rounded.raw_data());
          parallel_for(0, param.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
            update(begin, end, [out](int64_t i, P value) { out[i] = R(float(value)); });
          });
        } else {
          throw Error("adamw_step_: 'rounded' must be bf16 or f16");
        }
      });
    });
  });
}

}  // namespace lamina::ops::cpu
