// SwiGLU on the GPU, the twin of ops/cpu/swiglu.cpp: y = silu(gate) * up, silu(g) = g s(g).
//   backward: dup = dy silu(gate);  dgate = dy up s (1 + gate (1 - s))
// The forward is an elementwise map (any strides; 16-byte packs when contiguous); the backward
// writes both gradients from one read of dy, gate and up.
#include "ops/cuda/kernels.h"
#include "ops/cuda/map.cuh"

namespace lamina::ops::cuda {
namespace {

struct SwigluMath {
  template <typename C>
  __device__ C operator()(C g, C u) const {
    return g * dmath::sigmoid(g) * u;
  }
};

template <typename T, int V>
__global__ void swiglu_backward_kernel(T* grad_gate, T* grad_up, const T* grad_out, const T* gate, const T* up,
                                       int64_t count) {
  using C = compute_t<T>;
  auto one_pack = [&](int64_t i, auto width_tag) {
    constexpr int W = decltype(width_tag)::value;
    const Pack<T, W> dy = load_pack<W>(grad_out + i), g = load_pack<W>(gate + i), u = load_pack<W>(up + i);
    Pack<T, W> dg, du;
#pragma unroll
    for (int v = 0; v < W; ++v) {
      const C gv = load(g.values[v]), uv = load(u.values[v]), dyv = load(dy.values[v]);
      const C s = dmath::sigmoid(gv);
      du.values[v] = convert<T>(dyv * gv * s);
      dg.values[v] = convert<T>(dyv * uv * s * (C(1) + gv * (C(1) - s)));
    }
    store_pack<W>(grad_gate + i, dg);
    store_pack<W>(grad_up + i, du);
  };
  const int64_t packs = count / V;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) one_pack(p * V, std::integral_constant<int, V>{});
  const int64_t tail = packs * V + global_thread();
  if (tail < count) one_pack(tail, std::integral_constant<int, 1>{});
}

}  // namespace

void swiglu(const Tensor& out, const Tensor& gate, const Tensor& up) {
  visit_floating(gate.dtype(), "swiglu", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map2<T, T, T>("swiglu", out, gate, up, SwigluMath{});
  });
}

void swiglu_backward(const Tensor& grad_gate, const Tensor& grad_up, const Tensor& grad_out, const Tensor& gate,
                     const Tensor& up) {
  const int64_t count = gate.numel();
  if (count == 0) return;
  const int device = gate.device().index;
  visit_floating(gate.dtype(), "swiglu_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    constexpr int V = kPack<T>;
    bool packed = true;
    for (const Tensor* t : {&grad_gate, &grad_up, &grad_out, &gate, &up})
      packed = packed && aligned_to(t->raw_data(), 16);
    if (packed) {
      swiglu_backward_kernel<T, V><<<grid_for((count + V - 1) / V, device), kThreads, 0, stream_of(gate)>>>(
          data_of<T>(grad_gate), data_of<T>(grad_up), data_of<const T>(grad_out), data_of<const T>(gate),
          data_of<const T>(up), count);
    } else {
      swiglu_backward_kernel<T, 1><<<grid_for(count, device), kThreads, 0, stream_of(gate)>>>(
          data_of<T>(grad_gate), data_of<T>(grad_up), data_of<const T>(grad_out), data_of<const T>(gate),
          data_of<const T>(up), count);
    }
    LAMINA_CUDA_CHECK_LAUNCH("swiglu_backward");
  });
}

}  // namespace lamina::ops::cuda
