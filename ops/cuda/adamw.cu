// Fused AdamW step on the GPU, the twin of ops/cpu/adamw.cpp, in the order PyTorch applies it:
//   p  = p (1 - lr wd)                       decoupled weight decay
//   m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
//   p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// One pass over param, grad and both moments (read 4, write 3 arrays), four elements per thread
// with vector loads when every buffer is aligned.
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

template <typename C>
struct AdamWConstants {
  C beta1, beta2, eps, decay, step_size, bias_correction2_sqrt;
};

template <typename P, typename G, int V>
__global__ void adamw_kernel(P* param, const G* grad, compute_t<P>* exp_avg, compute_t<P>* exp_avg_sq, int64_t count,
                             AdamWConstants<compute_t<P>> k) {
  using C = compute_t<P>;
  auto update = [&](int64_t i, auto width_tag) {
    constexpr int W = decltype(width_tag)::value;
    Pack<P, W> p = load_pack<W>(param + i);
    const Pack<G, W> g = load_pack<W>(grad + i);
    Pack<C, W> m = load_pack<W>(exp_avg + i), v = load_pack<W>(exp_avg_sq + i);
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const C gi = C(load(g.values[w]));
      const C mi = k.beta1 * m.values[w] + (C(1) - k.beta1) * gi;
      const C vi = k.beta2 * v.values[w] + (C(1) - k.beta2) * gi * gi;
      m.values[w] = mi;
      v.values[w] = vi;
      const C denominator = dmath::sqrt(vi) / k.bias_correction2_sqrt + k.eps;
      p.values[w] = convert<P>(load(p.values[w]) * k.decay - k.step_size * mi / denominator);
    }
    store_pack<W>(param + i, p);
    store_pack<W>(exp_avg + i, m);
    store_pack<W>(exp_avg_sq + i, v);
  };
  const int64_t packs = count / V;
  for (int64_t q = global_thread(); q < packs; q += grid_threads()) update(q * V, std::integral_constant<int, V>{});
  const int64_t tail = packs * V + global_thread();
  if (tail < count) update(tail, std::integral_constant<int, 1>{});
}

}  // namespace

void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStep& hyper) {
  const int64_t count = param.numel();
  if (count == 0) return;
  const int device = param.device().index;
  visit_floating(param.dtype(), "adamw_step_", [&](auto param_tag) {
    using P = device_t<decltype(param_tag)>;
    using C = compute_t<P>;
    const AdamWConstants<C> constants{C(hyper.beta1),
                                      C(hyper.beta2),
                                      C(hyper.eps),
                                      C(1.0 - hyper.lr * hyper.weight_decay),
                                      C(hyper.lr / (1.0 - std::pow(hyper.beta1, double(hyper.step)))),
                                      C(std::sqrt(1.0 - std::pow(hyper.beta2, double(hyper.step))))};
    visit_floating(grad.dtype(), "adamw_step_", [&](auto grad_tag) {
      using G = device_t<decltype(grad_tag)>;
      // Four elements per thread: 16-byte loads of f32 state (and of f32 params and grads).
      constexpr int V = 4;
      const bool aligned = aligned_to(param.raw_data(), V * sizeof(P)) && aligned_to(grad.raw_data(), V * sizeof(G)) &&
                           aligned_to(exp_avg.raw_data(), V * sizeof(C)) &&
                           aligned_to(exp_avg_sq.raw_data(), V * sizeof(C));
      if (aligned) {
        adamw_kernel<P, G, V><<<grid_for((count + V - 1) / V, device), kThreads, 0, stream_of(param)>>>(
            data_of<P>(param), data_of<const G>(grad), data_of<C>(exp_avg), data_of<C>(exp_avg_sq), count, constants);
      } else {
        adamw_kernel<P, G, 1><<<grid_for(count, device), kThreads, 0, stream_of(param)>>>(
            data_of<P>(param), data_of<const G>(grad), data_of<C>(exp_avg), data_of<C>(exp_avg_sq), count, constants);
      }
      LAMINA_CUDA_CHECK_LAUNCH("adamw_step_");
    });
  });
}

}  // namespace lamina::ops::cuda
