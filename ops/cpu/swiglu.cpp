// SwiGLU: y = silu(gate) * up, silu(g) = g s(g) with s the logistic sigmoid.
//   backward: dup = dy silu(gate);  dgate = dy up s (1 + gate (1 - s))
#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void swiglu(const Tensor& out, const Tensor& gate, const Tensor& up) {
  visit_floating(gate.dtype(), "swiglu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map2<T, T, T>(out, gate, up, [](C g, C u) { return g * fast_sigmoid(g) * u; });
  });
}

void swiglu_backward(const Tensor& grad_gate, const Tensor& grad_up, const Tensor& grad_out, const Tensor& gate,
                     const Tensor& up) {
  visit_floating(gate.dtype(), "swiglu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* dy = static_cast<const T*>(grad_out.raw_data());
    const T* g = static_cast<const T*>(gate.raw_data());
    const T* u = static_cast<const T*>(up.raw_data());
    T* dg = static_cast<T*>(grad_gate.raw_data());
    T* du = static_cast<T*>(grad_up.raw_data());
    parallel_for(0, gate.numel(), kElementwiseGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const C gv = load(g[i]), uv = load(u[i]), dyv = load(dy[i]);
        const C s = fast_sigmoid(gv);
        du[i] = T(dyv * gv * s);
        dg[i] = T(dyv * uv * s * (C(1) + gv * (C(1) - s)));
      }
    });
  });
}

}  // namespace lamina::ops::cpu
