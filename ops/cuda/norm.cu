// RMSNorm over the last dim on the GPU, the twin of ops/cpu/norm.cpp, x: [rows, D], weight: [D].
//   forward:  r = 1 / sqrt(mean(x^2) + eps) (f32, or f64 for f64), n = x r, y = n w
//             (n rounded to the activation dtype before the weight multiply, as Llama does)
//   backward: dn = dy w;  dx = r (dn - n mean(dn n));  dw = sum over rows of dy n
// Forward: one block per row, the row kept in shared memory between its two passes when it
// fits. Backward: each block takes a run of rows; it first reduces mean(dn n) for each of them,
// then walks the columns it owns through those rows, writing dx and summing dy n into one
// partial row of dw per block (in row order). A second kernel adds the partial rows per column
// in block order, in f64. No atomics: the result does not change from run to run.
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

constexpr size_t kRowCacheBytes = 44 * 1024;
constexpr int64_t kMaxRowsPerBlock = 32;

template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_kernel(T* y, compute_t<T>* rstd, const T* x, const T* weight, int64_t rows, int64_t width,
                                compute_t<T> eps, bool cached) {
  using C = compute_t<T>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  C* cache = reinterpret_cast<C*>(shared_bytes);
  __shared__ C scratch[32];
  const int64_t packs = width / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* in = x + row * width;
    C local = C(0);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> values = load_pack<V>(in + p * V);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C value = load(values.values[v]);
        if (cached) cache[v * packs + p] = value;
        local += value * value;
      }
    }
    const C mean_square = block_reduce(local, SumOp{}, C(0), scratch) / C(width);
    const C r = C(1) / dmath::sqrt(mean_square + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    T* out = y + row * width;
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      Pack<T, V> values;
      if (!cached) values = load_pack<V>(in + p * V);
      const Pack<T, V> w = load_pack<V>(weight + p * V);
      Pack<T, V> result;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C value = cached ? cache[v * packs + p] : load(values.values[v]);
        result.values[v] = convert<T>(round_through<T>(value * r) * load(w.values[v]));
      }
      store_pack<V>(out + p * V, result);
    }
    __syncthreads();  // the cache is refilled by the next row
  }
}

// Rows [block * rows_per_block, ...) of one block; partial[block, :] = sum of dy n over them.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads) rms_norm_backward_kernel(T* dx, compute_t<T>* partial, const T* dy, const T* x, const T* weight,
                                         const compute_t<T>* rstd, int64_t rows, int64_t width, int64_t rows_per_block) {
  using C = compute_t<T>;
  __shared__ C scratch[32];
  __shared__ C mean_dots[kMaxRowsPerBlock];
  const int64_t packs = width / V;
  const int64_t first_row = int64_t(blockIdx.x) * rows_per_block;
  const int64_t row_count = min64(rows_per_block, rows - first_row);
  // mean(dn n) = r * mean(dy w x) for each row of the run.
  for (int64_t k = 0; k < row_count; ++k) {
    const int64_t row = first_row + k;
    C local = C(0);
    for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> g = load_pack<V>(dy + row * width + p * V);
      const Pack<T, V> w = load_pack<V>(weight + p * V);
      const Pack<T, V> in = load_pack<V>(x + row * width + p * V);
#pragma unroll
      for (int v = 0; v < V; ++v) local += load(g.values[v]) * load(w.values[v]) * load(in.values[v]);
    }
    const C dot = block_reduce(local, SumOp{}, C(0), scratch);
    if (threadIdx.x == 0) mean_dots[k] = rstd[row] * dot / C(width);
  }
  __syncthreads();
  for (int64_t p = threadIdx.x; p < packs; p += blockDim.x) {
    const Pack<T, V> w = load_pack<V>(weight + p * V);
    C dw[V];
#pragma unroll
    for (int v = 0; v < V; ++v) dw[v] = C(0);
    for (int64_t k = 0; k < row_count; ++k) {
      const int64_t row = first_row + k;
      const C r = rstd[row], mean_dot = mean_dots[k];
      const Pack<T, V> g = load_pack<V>(dy + row * width + p * V);
      const Pack<T, V> in = load_pack<V>(x + row * width + p * V);
      Pack<T, V> result;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C gv = load(g.values[v]);
        const C n = load(in.values[v]) * r;
        result.values[v] = convert<T>(r * (gv * load(w.values[v]) - n * mean_dot));
        dw[v] += gv * n;
      }
      store_pack<V>(dx + row * width + p * V, result);
    }
    Pack<C, V> sums;
#pragma unroll
    for (int v = 0; v < V; ++v) sums.values[v] = dw[v];
    store_pack<V>(partial + int64_t(blockIdx.x) * width + p * V, sums);
  }
}

// dweight[j] = sum over blocks, in block order and in f64, of partial[block, j].
template <typename T>
__global__ void sum_partials_kernel(T* dweight, const compute_t<T>* partial, int64_t blocks, int64_t width) {
  for (int64_t j = global_thread(); j < width; j += grid_threads()) {
    double total = 0;
    for (int64_t b = 0; b < blocks; ++b) total += double(partial[b * width + j]);
    dweight[j] = convert<T>(compute_t<T>(total));
  }
}

}  // namespace

void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
  const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
  if (x.numel() == 0) return;
  visit_floating(x.dtype(), "rms_norm", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    const bool cached = size_t(width) * sizeof(C) <= kRowCacheBytes;
    const size_t shared = cached ? size_t(width) * sizeof(C) : 0;
    if (rows_packable<T>(width, {x.raw_data(), y.raw_data(), weight.raw_data()})) {
      constexpr int V = kPack<T>;
      rms_norm_kernel<T, V><<<row_blocks(rows), row_threads(width / V), shared, stream_of(x)>>>(
          data_of<T>(y), data_of<C>(rstd), data_of<const T>(x), data_of<const T>(weight), rows, width, C(eps), cached);
    } else {
      rms_norm_kernel<T, 1><<<row_blocks(rows), row_threads(width), shared, stream_of(x)>>>(
          data_of<T>(y), data_of<C>(rstd), data_of<const T>(x), data_of<const T>(weight), rows, width, C(eps), cached);
    }
    LAMINA_CUDA_CHECK_LAUNCH("rms_norm");
  });
}

void rms_norm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x, const Tensor& weight,
                       const Tensor& rstd) {
  const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
  if (width == 0) return;
  const int device = x.device().index;
  visit_floating(x.dtype(), "rms_norm_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    // Enough blocks to fill the device twice, each with a run of up to 32 rows.
    const int64_t target_blocks = 2 * int64_t(::lamina::cuda::device_info(device).multiprocessors);
    const int64_t rows_per_block = std::clamp<int64_t>((rows + target_blocks - 1) / target_blocks, 1, kMaxRowsPerBlock);
    const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
    const Tensor partial = Tensor::empty({std::max<int64_t>(blocks, 1), width}, rstd.dtype(), x.device());
    if (blocks > 0) {
      if (rows_packable<T>(width, {dx.raw_data(), dy.raw_data(), x.raw_data(), weight.raw_data()})) {
        constexpr int V = kPack<T>;
        rms_norm_backward_kernel<T, V><<<unsigned(blocks), row_threads(width / V), 0, stream_of(x)>>>(
            data_of<T>(dx), data_of<C>(partial), data_of<const T>(dy), data_of<const T>(x), data_of<const T>(weight),
            data_of<const C>(rstd), rows, width, rows_per_block);
      } else {
        rms_norm_backward_kernel<T, 1><<<unsigned(blocks), row_threads(width), 0, stream_of(x)>>>(
            data_of<T>(dx), data_of<C>(partial), data_of<const T>(dy), data_of<const T>(x), data_of<const T>(weight),
            data_of<const C>(rstd), rows, width, rows_per_block);
      }
      LAMINA_CUDA_CHECK_LAUNCH("rms_norm_backward");
    }
    sum_partials_kernel<T><<<grid_for(width, device), kThreads, 0, stream_of(x)>>>(
        data_of<T>(dweight), data_of<const C>(partial), blocks, width);
    LAMINA_CUDA_CHECK_LAUNCH("rms_norm_backward (weight)");
  });
}

}  // namespace lamina::ops::cuda
