// Embedding lookup and its adjoint on the GPU, the twin of ops/cpu/embedding.cpp.
//   forward:  out[n, :] = weight[ids[n], :]
//   backward: dweight[v, :] = sum of dout[n, :] over the n with ids[n] = v
// The backward gives each (column, vocabulary slice) to one thread, which walks the tokens in
// order and adds those whose id falls in its slice: every element of dweight accumulates its
// tokens in token order, in the gradient's dtype, exactly as the CPU does, with no atomics.
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

// Copies rows of `units` Units (16-byte packs, or single elements) from table[ids[n]].
template <typename I, typename Unit>
__global__ void __launch_bounds__(kMaxRowThreads) embedding_kernel(Unit* out, const Unit* table, const I* ids, int64_t tokens, int64_t units) {
  for (int64_t n = blockIdx.x; n < tokens; n += gridDim.x) {
    const Unit* source = table + int64_t(ids[n]) * units;
    Unit* target = out + n * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) target[u] = source[u];
  }
}

template <typename T, typename I>
__global__ void embedding_backward_kernel(T* grad_weight, const T* grad_out, const I* ids, int64_t tokens,
                                          int64_t width, int64_t slices) {
  const int64_t column = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t slice = blockIdx.y;
  if (column >= width) return;
  for (int64_t n = 0; n < tokens; ++n) {
    const int64_t id = int64_t(ids[n]);  // the same n across the warp: one broadcast load
    if (id % slices != slice) continue;
    T* target = grad_weight + id * width + column;
    *target = convert<T>(load(*target) + load(grad_out[n * width + column]));
  }
}

}  // namespace

void embedding(const Tensor& out, const Tensor& weight, const Tensor& ids) {
  const int64_t width = weight.size(1), tokens = ids.numel();
  if (tokens == 0 || width == 0) return;
  const size_t row_bytes = size_t(width) * weight.element_size();
  const bool packed = row_bytes % 16 == 0 && aligned_to(weight.raw_data(), 16) && aligned_to(out.raw_data(), 16);
  visit_index(ids.dtype(), "embedding", [&](auto index_tag) {
    using I = device_t<decltype(index_tag)>;
    if (packed) {
      using Unit = Pack<uint32_t, 4>;
      const int64_t units = int64_t(row_bytes / sizeof(Unit));
      embedding_kernel<I, Unit><<<row_blocks(tokens), row_threads(units), 0, stream_of(out)>>>(
          data_of<Unit>(out), data_of<const Unit>(weight), data_of<const I>(ids), tokens, units);
    } else {
      visit_bytes(weight.element_size(), [&](auto unit_tag) {
        using Unit = device_t<decltype(unit_tag)>;
        embedding_kernel<I, Unit><<<row_blocks(tokens), row_threads(width), 0, stream_of(out)>>>(
            data_of<Unit>(out), data_of<const Unit>(weight), data_of<const I>(ids), tokens, width);
      });
    }
    LAMINA_CUDA_CHECK_LAUNCH("embedding");
  });
}

void embedding_backward(const Tensor& grad_weight, const Tensor& grad_out, const Tensor& ids) {
  const int64_t width = grad_weight.size(1), tokens = ids.numel();
  if (tokens == 0 || width == 0) return;
  const int device = grad_weight.device().index;
  // Enough (column, slice) threads to fill the device; every slice is a residue class of ids.
  const int64_t wanted_threads = int64_t(::lamina::cuda::device_info(device).multiprocessors) * 2048;
  const int64_t slices = std::clamp<int64_t>(wanted_threads / width, 1, std::min<int64_t>(grad_weight.size(0), 65535));
  const dim3 grid(unsigned((width + kThreads - 1) / kThreads), unsigned(slices));
  visit_floating(grad_weight.dtype(), "embedding_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    visit_index(ids.dtype(), "embedding_backward", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      embedding_backward_kernel<T, I><<<grid, kThreads, 0, stream_of(grad_weight)>>>(
          data_of<T>(grad_weight), data_of<const T>(grad_out), data_of<const I>(ids), tokens, width, slices);
      LAMINA_CUDA_CHECK_LAUNCH("embedding_backward");
    });
  });
}

}  // namespace lamina::ops::cuda
