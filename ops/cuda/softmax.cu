// Softmax and log-softmax over the last dim of contiguous rows, the twin of
// ops/cpu/softmax.cpp (same formulas, same rounding of the stored exp for softmax):
//   softmax:      y = exp(x - m) / s            m = max(x), s = sum(exp(x - m))
//   log_softmax:  y = x - m - log(s)
//   backward:     softmax dx = y * (g - sum(g * y));  log_softmax dx = g - exp(y) * sum(g)
// One block per row. Rows of up to 44 KB (in the math type) are read from memory once and kept
// in shared memory, in a pack-major order (slot v * packs + p) that spreads each access over
// the banks; longer rows are read again for each pass.
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

// Rows cached in shared memory up to this size; with the 32-value scratch it stays under the
// 48 KB a block gets without opting in to more.
constexpr size_t kRowCacheBytes = 44 * 1024;

template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads) softmax_kernel(T* out, const T* x, int64_t rows, int64_t width, bool log_space, bool cached) {
  using C = compute_t<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  C* cache = reinterpret_cast<C*>(shared_bytes);
  __shared__ C scratch[32];
  const int64_t packs = width / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* in = x + row * width;
    T* y = out + row * width;
    C local_max = C(-INFINITY);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> values = load_pack<V>(in + p * V);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C value = load(values.values[v]);
        if (cached) cache[v * packs + p] = value;
        local_max = MaxOp{}(local_max, value);
      }
    }
    C peak = block_reduce(local_max, MaxOp{}, C(-INFINITY), scratch);
    if (peak == C(-INFINITY)) peak = C(0);  // an all -inf row: avoid inf - inf

    C local_sum = C(0);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      if (cached) {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const C e = dmath::exp(cache[v * packs + p] - peak);
          if (!log_space) cache[v * packs + p] = e;
          local_sum += e;
        }
      } else {
        const Pack<T, V> values = load_pack<V>(in + p * V);
#pragma unroll
        for (int v = 0; v < V; ++v) local_sum += dmath::exp(load(values.values[v]) - peak);
      }
    }
    const C total = block_reduce(local_sum, SumOp{}, C(0), scratch);

    const C shift = peak + dmath::log(total);
    const C scale = C(1) / total;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      Pack<T, V> values;
      if (!cached) values = load_pack<V>(in + p * V);
      Pack<T, V> result;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C input = cached ? cache[v * packs + p] : load(values.values[v]);  // e when cached softmax
        if (log_space) {
          result.values[v] = convert<T>(input - shift);
        } else {
          const C e = cached ? input : dmath::exp(input - peak);
          // The CPU stores exp(x - m) in T, then rescales what it stored.
          result.values[v] = convert<T>(round_through<T>(e) * scale);
        }
      }
      store_pack<V>(y + p * V, result);
    }
    __syncthreads();  // the cache is refilled by the next row
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads) softmax_backward_kernel(T* grad_in, const T* grad_out, const T* y, int64_t rows, int64_t width,
                                        bool log_space) {
  using C = compute_t<T>;
  __shared__ C scratch[32];
  const int64_t packs = width / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* g = grad_out + row * width;
    const T* out = y + row * width;
    T* dx = grad_in + row * width;
    C local = C(0);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> gs = load_pack<V>(g + p * V);
      if (log_space) {
#pragma unroll
        for (int v = 0; v < V; ++v) local += load(gs.values[v]);
      } else {
        const Pack<T, V> ys = load_pack<V>(out + p * V);
#pragma unroll
        for (int v = 0; v < V; ++v) local += load(gs.values[v]) * load(ys.values[v]);
      }
    }
    const C reduced = block_reduce(local, SumOp{}, C(0), scratch);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> gs = load_pack<V>(g + p * V);
      const Pack<T, V> ys = load_pack<V>(out + p * V);
      Pack<T, V> result;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C gv = load(gs.values[v]), yv = load(ys.values[v]);
        result.values[v] = convert<T>(log_space ? gv - dmath::exp(yv) * reduced : yv * (gv - reduced));
      }
      store_pack<V>(dx + p * V, result);
    }
  }
}

}  // namespace

void softmax_rows(const Tensor& out, const Tensor& x, bool log_space) {
  const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
  if (x.numel() == 0) return;
  visit_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    const bool cached = size_t(width) * sizeof(C) <= kRowCacheBytes;
    const size_t shared = cached ? size_t(width) * sizeof(C) : 0;
    if (rows_packable<T>(width, {x.raw_data(), out.raw_data()})) {
      constexpr int V = kPack<T>;
      softmax_kernel<T, V><<<row_blocks(rows), row_threads(width / V), shared, stream_of(x)>>>(
          data_of<T>(out), data_of<const T>(x), rows, width, log_space, cached);
    } else {
      softmax_kernel<T, 1><<<row_blocks(rows), row_threads(width), shared, stream_of(x)>>>(
          data_of<T>(out), data_of<const T>(x), rows, width, log_space, cached);
    }
    LAMINA_CUDA_CHECK_LAUNCH("softmax");
  });
}

void softmax_backward_rows(const Tensor& grad_in, const Tensor& grad_out, const Tensor& y, bool log_space) {
  const int64_t width = y.size(-1), rows = y.numel() / std::max<int64_t>(1, width);
  if (y.numel() == 0) return;
  visit_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    if (rows_packable<T>(width, {grad_in.raw_data(), grad_out.raw_data(), y.raw_data()})) {
      constexpr int V = kPack<T>;
      softmax_backward_kernel<T, V><<<row_blocks(rows), row_threads(width / V), 0, stream_of(y)>>>(
          data_of<T>(grad_in), data_of<const T>(grad_out), data_of<const T>(y), rows, width, log_space);
    } else {
      softmax_backward_kernel<T, 1><<<row_blocks(rows), row_threads(width), 0, stream_of(y)>>>(
          data_of<T>(grad_in), data_of<const T>(grad_out), data_of<const T>(y), rows, width, log_space);
    }
    LAMINA_CUDA_CHECK_LAUNCH("softmax_backward");
  });
}

}  // namespace lamina::ops::cuda
