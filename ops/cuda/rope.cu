// Rotary position embedding on the GPU, Hugging Face "rotate_half" pairs (i, i + D/2), the twin
// of ops/cpu/rope.cpp:
//   phi = p * f[i] (f32 product, as the references do)
//   forward:  y[i] = x[i] cos - x[i+D/2] sin;  y[i+D/2] = x[i+D/2] cos + x[i] sin
//   backward: the inverse rotation (sin negated), since the rotation is orthogonal.
// One block per (b, t): it computes the D/2 cosines and sines once into shared memory and
// rotates every head of that token with them. The frequency table (Llama 3.1 scaling already
// applied, computed on the host exactly as the CPU path does) travels in the kernel parameters.
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

constexpr int64_t kMaxHalf = 512;  // head_dim up to 1024

struct RopeParams {
  int64_t batch, tokens, heads, half;
  int64_t x_strides[4];
  int64_t position_strides[2];
  bool per_batch_positions;
  bool inverse;
  float frequencies[kMaxHalf];
};

template <typename T, typename I, int V>
__global__ void __launch_bounds__(kMaxRowThreads) rope_kernel(T* out, const T* x, const I* positions, RopeParams params) {
  using C = compute_t<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  C* cosines = reinterpret_cast<C*>(shared_bytes);
  C* sines = cosines + params.half;
  const int64_t half = params.half, head_dim = 2 * half;
  const int64_t rows = params.batch * params.tokens;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / params.tokens, t = row % params.tokens;
    const I p = positions[params.per_batch_positions ? b * params.position_strides[0] + t * params.position_strides[1]
                                                     : t * params.position_strides[0]];
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
      const float angle = float(p) * params.frequencies[i];
      cosines[i] = dmath::cos(C(angle));
      sines[i] = params.inverse ? -dmath::sin(C(angle)) : dmath::sin(C(angle));
    }
    __syncthreads();
    const int64_t packs_per_head = half / V;
    for (int64_t k = threadIdx.x; k < params.heads * packs_per_head; k += blockDim.x) {
      const int64_t h = k / packs_per_head, i = (k % packs_per_head) * V;
      const T* in = x + b * params.x_strides[0] + t * params.x_strides[1] + h * params.x_strides[2];
      T* y = out + (row * params.heads + h) * head_dim;
      Pack<T, V> first, second;
      if constexpr (V > 1) {  // unit stride along D (checked on the host)
        first = load_pack<V>(in + i);
        second = load_pack<V>(in + i + half);
      } else {
        first.values[0] = in[i * params.x_strides[3]];
        second.values[0] = in[(i + half) * params.x_strides[3]];
      }
      Pack<T, V> low, high;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C a = load(first.values[v]), c = load(second.values[v]);
        const C cosine = cosines[i + v], sine = sines[i + v];
        low.values[v] = convert<T>(a * cosine - c * sine);
        high.values[v] = convert<T>(c * cosine + a * sine);
      }
      store_pack<V>(y + i, low);
      store_pack<V>(y + i + half, high);
    }
    __syncthreads();  // the table is rewritten for the next token
  }
}

}  // namespace

void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& positions, const std::vector<float>& frequencies,
                 bool inverse) {
  const int64_t half = x.size(3) / 2;
  if (x.numel() == 0) return;
  LAMINA_CHECK(half <= kMaxHalf, "rope: the CUDA kernel takes head_dim up to ", 2 * kMaxHalf, ", got ", x.size(3));
  RopeParams params{};
  params.batch = x.size(0);
  params.tokens = x.size(1);
  params.heads = x.size(2);
  params.half = half;
  for (int d = 0; d < 4; ++d) params.x_strides[d] = x.stride(d);
  params.per_batch_positions = positions.dim() == 2;
  params.position_strides[0] = positions.stride(0);
  params.position_strides[1] = positions.dim() == 2 ? positions.stride(1) : 0;
  params.inverse = inverse;
  for (int64_t i = 0; i < half; ++i) params.frequencies[i] = frequencies[size_t(i)];
  const int64_t rows = params.batch * params.tokens;
  visit_floating(x.dtype(), "rope", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    constexpr int V = kPack<T>;
    const bool packed = half % V == 0 && x.stride(3) == 1 && x.stride(0) % V == 0 && x.stride(1) % V == 0 &&
                        x.stride(2) % V == 0 && aligned_to(x.raw_data(), 16) && aligned_to(out.raw_data(), 16);
    const size_t shared = 2 * size_t(half) * sizeof(C);
    const int threads = row_threads(params.heads * half / (packed ? V : 1));
    visit_index(positions.dtype(), "rope", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      if (packed) {
        rope_kernel<T, I, V><<<row_blocks(rows), threads, shared, stream_of(x)>>>(data_of<T>(out), data_of<const T>(x),
                                                                                  data_of<const I>(positions), params);
      } else {
        rope_kernel<T, I, 1><<<row_blocks(rows), threads, shared, stream_of(x)>>>(data_of<T>(out), data_of<const T>(x),
                                                                                  data_of<const I>(positions), params);
      }
      LAMINA_CUDA_CHECK_LAUNCH("rope");
    });
  });
}

}  // namespace lamina::ops::cuda
