// CUDA kernels of the 4-bit ops (ops/quant4.h), the twins of ops/cpu/quant4.cpp.
//
// Every weight element is decoded where it is used: code_values[nibble] * absmax[flat / blocksize],
// one f32 multiply (no contraction possible), the same bits as the CPU. The products never hold
// more than a shared-memory tile of the dequantized weight:
//   * fused_gemm: C [M, P] = A [M, R] * B, with B(r, p) = W(p, r) for matmul_4bit (R = in,
//     P = out) and W(r, p) for the input gradient (R = out, P = in). 64x64 output tiles, 16-deep
//     steps, 256 threads each owning a 4x4 patch; A and the dequantized B go through shared
//     memory. Its B loads walk the weight's rows in the order its bytes lie (k fastest).
//   * gemv: matmul_4bit with at most kGemvRows input rows (decoding): a warp per output feature
//     reads its weight row once, in order, for every input row at once; the dequantized row
//     never leaves registers.
#include "ops/cuda/common.cuh"
#include "ops/quant4.h"

namespace lamina::ops::cuda {
namespace {

constexpr int kTile = 64;   // output tile edge (M and P)
constexpr int kDepth = 16;  // reduction step
constexpr int kGemvRows = 4;

struct Weight4 {
  const uint8_t* codes;
  const float* absmax;
  const float* table;
  int blocksize_shift;
};

__device__ __forceinline__ float weight_at(const Weight4& w, const float* table, int64_t flat) {
  const uint8_t byte = w.codes[flat >> 1];
  const int code = (flat & 1) ? (byte & 15) : (byte >> 4);
  return __fmul_rn(table[code], w.absmax[flat >> w.blocksize_shift]);
}

int log2_of(int64_t power_of_two) {
  int shift = 0;
  while ((int64_t(1) << shift) < power_of_two) ++shift;
  return shift;
}

__global__ void decode_absmax_kernel(float* out, const uint8_t* indices, const float* nested, const float* table,
                                     int64_t nested_blocksize, float offset, int64_t count);

// The fp32 scales on q's device: q.absmax itself, or decoded into a buffer (1/64 of the
// weight's elements at the default blocksize), which the stream orders before the product.
Tensor decoded_scales(const Quantized4Bit& q) {
  if (!q.double_quant) return q.absmax;
  Tensor out = Tensor::empty({q.block_count()}, DType::f32, q.device());
  quant4_decode_absmax(out, q);
  return out;
}

Weight4 weight_of(const Quantized4Bit& q, const Tensor& scales) {
  return {data_of<const uint8_t>(q.codes), data_of<const float>(scales), data_of<const float>(q.code_values),
          log2_of(q.blocksize)};
}

__global__ void decode_absmax_kernel(float* out, const uint8_t* indices, const float* nested, const float* table,
                                     int64_t nested_blocksize, float offset, int64_t count) {
  for (int64_t j = global_thread(); j < count; j += grid_threads())
    out[j] = __fadd_rn(__fmul_rn(table[indices[j]], nested[j / nested_blocksize]), offset);
}

// One thread per packed byte: elements 2j (high nibble) and 2j + 1 (low nibble).
__global__ void dequantize_kernel(float* out, Weight4 w, int64_t numel) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = w.table[threadIdx.x];
  __syncthreads();
  const int64_t bytes = (numel + 1) / 2;
  for (int64_t j = global_thread(); j < bytes; j += grid_threads()) {
    out[2 * j] = weight_at(w, table, 2 * j);
    if (2 * j + 1 < numel) out[2 * j + 1] = weight_at(w, table, 2 * j + 1);
  }
}

template <bool kInputGrad>
__global__ void __launch_bounds__(256) fused_gemm_kernel(float* c, const float* a, Weight4 w, int64_t rows,
                                                         int64_t reduce, int64_t cols, int64_t in_features) {
  __shared__ float table[16];
  __shared__ float a_tile[kDepth][kTile + 1];
  __shared__ float b_tile[kDepth][kTile + 1];
  const int thread = threadIdx.x;
  if (thread < 16) table[thread] = w.table[thread];
  const int64_t row0 = int64_t(blockIdx.y) * kTile, col0 = int64_t(blockIdx.x) * kTile;
  const int ty = thread / 16, tx = thread % 16;
  float acc[4][4] = {};
  for (int64_t r0 = 0; r0 < reduce; r0 += kDepth) {
    __syncthreads();  // the previous step's reads are done (and, the first time, the table is in)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int index = thread + e * 256;
      const int i = index / kDepth, kk = index % kDepth;  // A: consecutive threads along a row of A
      const int64_t row = row0 + i, r = r0 + kk;
      a_tile[kk][i] = (row < rows && r < reduce) ? a[row * reduce + r] : 0.0f;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int index = thread + e * 256;
      // Forward: B(r, p) = W(p, r), so r (the weight's k) runs fastest; input grad: B(r, p) =
      // W(r, p), so p (the weight's k) runs fastest. Either way a warp reads along a weight row.
      const int kk = kInputGrad ? index / kTile : index % kDepth;
      const int p = kInputGrad ? index % kTile : index / kDepth;
      const int64_t r = r0 + kk, col = col0 + p;
      float value = 0.0f;
      if (r < reduce && col < cols) {
        const int64_t flat = kInputGrad ? r * in_features + col : col * in_features + r;
        value = weight_at(w, table, flat);
      }
      b_tile[kk][p] = value;
    }
    __syncthreads();
    accumulate_tile_4x4(a_tile, b_tile, ty, tx, acc);
  }
  store_tile_4x4(c, rows, cols, row0 + ty * 4, col0 + tx * 4, acc);
}

// out [rows, out_features] = x @ W^T for rows <= kGemvRows: one warp per output feature.
__global__ void __launch_bounds__(256) gemv_kernel(float* out, const float* x, Weight4 w, int rows,
                                                   int64_t out_features, int64_t in_features) {
  __shared__ float table[16];
  if (threadIdx.x < 16) table[threadIdx.x] = w.table[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; n < out_features; n += warps) {
    float acc[kGemvRows] = {};
    const int64_t base = n * in_features;
    for (int64_t k = lane; k < in_features; k += 32) {
      const float value = weight_at(w, table, base + k);
#pragma unroll
      for (int m = 0; m < kGemvRows; ++m)
        if (m < rows) acc[m] += x[int64_t(m) * in_features + k] * value;
    }
#pragma unroll
    for (int m = 0; m < kGemvRows; ++m) {
      float sum = acc[m];
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
      if (lane == 0 && m < rows) out[int64_t(m) * out_features + n] = sum;
    }
  }
}

void check_f32(const Tensor& t, const char* op) {
  LAMINA_CHECK(t.dtype() == DType::f32, op, ": the CUDA kernel takes f32 rows, got ", dtype_name(t.dtype()));
}

}  // namespace

void quant4_decode_absmax(const Tensor& out, const Quantized4Bit& q) {
  const int64_t count = q.block_count();
  if (count == 0) return;
  decode_absmax_kernel<<<grid_for(count, out.device().index), kThreads, 0, stream_of(out)>>>(
      data_of<float>(out), data_of<const uint8_t>(q.absmax), data_of<const float>(q.nested_absmax),
      data_of<const float>(q.nested_code_values), q.nested_blocksize, q.nested_offset, count);
  LAMINA_CUDA_CHECK_LAUNCH("quant4_decode_absmax");
}

void quant4_dequantize(const Tensor& out, const Quantized4Bit& q) {
  const int64_t numel = out.numel();
  if (numel == 0) return;
  const Tensor scales = decoded_scales(q);
  dequantize_kernel<<<grid_for((numel + 1) / 2, out.device().index), kThreads, 0, stream_of(out)>>>(
      data_of<float>(out), weight_of(q, scales), numel);
  LAMINA_CUDA_CHECK_LAUNCH("quant4_dequantize");
}

void quant4_matmul(const Tensor& out, const Tensor& x, const Quantized4Bit& q) {
  check_f32(x, "matmul_4bit");
  const int64_t rows = x.size(0), out_features = q.out_features(), in_features = q.in_features();
  const Tensor scales = decoded_scales(q);
  const Weight4 w = weight_of(q, scales);
  if (rows <= kGemvRows) {
    const int64_t blocks = (out_features + 7) / 8;
    const int64_t cap = int64_t(::lamina::cuda::device_info(out.device().index).multiprocessors) * 16;
    gemv_kernel<<<unsigned(std::max<int64_t>(1, std::min(blocks, cap))), 256, 0, stream_of(out)>>>(
        data_of<float>(out), data_of<const float>(x), w, int(rows), out_features, in_features);
  } else {
    const dim3 grid(unsigned((out_features + kTile - 1) / kTile), unsigned((rows + kTile - 1) / kTile));
    fused_gemm_kernel<false><<<grid, 256, 0, stream_of(out)>>>(data_of<float>(out), data_of<const float>(x), w, rows,
                                                               in_features, out_features, in_features);
  }
  LAMINA_CUDA_CHECK_LAUNCH("matmul_4bit");
}

void quant4_matmul_input_grad(const Tensor& out, const Tensor& grad, const Quantized4Bit& q) {
  check_f32(grad, "matmul_4bit_input_grad");
  const int64_t rows = grad.size(0), out_features = q.out_features(), in_features = q.in_features();
  const Tensor scales = decoded_scales(q);
  const dim3 grid(unsigned((in_features + kTile - 1) / kTile), unsigned((rows + kTile - 1) / kTile));
  fused_gemm_kernel<true><<<grid, 256, 0, stream_of(out)>>>(data_of<float>(out), data_of<const float>(grad),
                                                            weight_of(q, scales), rows, out_features, in_features,
                                                            in_features);
  LAMINA_CUDA_CHECK_LAUNCH("matmul_4bit_input_grad");
}

}  // namespace lamina::ops::cuda
