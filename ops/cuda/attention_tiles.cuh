// The tile arithmetic the CUDA attention kernels share (ops/cuda/flash_attention.cu: the fused
// forward and backward; ops/cuda/cached_attention.cu: attention over positioned keys). Tiles are
// f32 rows of kDim values in shared memory, padded_row_stride<kDim>() floats apart; a warp owns a
// few rows of one operand, each lane two rows (lane, lane + 32) or kDim / 32 columns of the other.
#pragma once

#include <cstdint>

#include "ops/cuda/common.cuh"
#include "tensor/cuda/check.h"
#include "tensor/error.h"

namespace lamina::ops::cuda::attention_tiles {

// (kDim + 4) / 4 is odd for 64 and 128: float4 reads of rows by 8 lanes hit distinct banks.
template <int kDim>
__host__ __device__ constexpr int padded_row_stride() {
  return kDim + 4;
}

__device__ __forceinline__ float warp_max(float value) { return warp_reduce(value, MaxOp{}); }
__device__ __forceinline__ float warp_sum(float value) { return warp_reduce(value, SumOp{}); }

// acc[i][c] = sum_d a[first_a + i][d] * b[lane + 32 c][d] for i < kRows, c < 2: the kRows rows
// of `a` are read by the whole warp (broadcast), the two rows of `b` per lane as float4.
template <int kDim, int kRows>
__device__ __forceinline__ void rows_dot_lane_rows(float (&acc)[kRows][2], const float* a, int first_a, const float* b,
                                                   int lane) {
  constexpr int kStride = padded_row_stride<kDim>();
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i][0] = acc[i][1] = 0.0f;
#pragma unroll 4
  for (int d = 0; d < kDim; d += 4) {
    const float4 b0 = *reinterpret_cast<const float4*>(b + lane * kStride + d);
    const float4 b1 = *reinterpret_cast<const float4*>(b + (lane + 32) * kStride + d);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const float4 x = *reinterpret_cast<const float4*>(a + (first_a + i) * kStride + d);
      acc[i][0] += x.x * b0.x + x.y * b0.y + x.z * b0.z + x.w * b0.w;
      acc[i][1] += x.x * b1.x + x.y * b1.y + x.z * b1.z + x.w * b1.w;
    }
  }
}

// out[i][c] += sum_k weights[i][k] * source[k][lane + 32 c] for i < kRows, c < kDim / 32, k <
// kTileRows: weights is [kRows][kTileRows] (row i at weights + i * kTileRows, read by the whole
// warp as float4), source a tile [kTileRows][padded_row_stride].
template <int kDim, int kRows, int kTileRows>
__device__ __forceinline__ void accumulate_weighted_rows(float (&out)[kRows][kDim / 32], const float* weights,
                                                         const float* source, int lane) {
  constexpr int kStride = padded_row_stride<kDim>();
  constexpr int kPer = kDim / 32;
#pragma unroll 2
  for (int k = 0; k < kTileRows; k += 4) {
    float column[4][kPer];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int c = 0; c < kPer; ++c) column[kk][c] = source[(k + kk) * kStride + lane + 32 * c];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const float4 w = *reinterpret_cast<const float4*>(weights + i * kTileRows + k);
#pragma unroll
      for (int c = 0; c < kPer; ++c)
        out[i][c] += w.x * column[0][c] + w.y * column[1][c] + w.z * column[2][c] + w.w * column[3][c];
    }
  }
}

// One online-softmax step of a query row over a 64-key tile (FlashAttention-2): `score` holds
// the row's scores of keys lane and lane + 32 (-inf where masked), row_max and row_sum the row's
// running maximum and sum (the same on every lane). Rescales the row's accumulator to the new
// maximum and writes its unnormalised weights to p_row[lane] and p_row[lane + 32]. A row that
// has seen no key yet keeps max -inf, sum 0 and weights 0.
template <int kPer>
__device__ __forceinline__ void online_softmax_step(const float (&score)[2], float& row_max, float& row_sum,
                                                    float (&acc_row)[kPer], float* p_row, int lane) {
  const float new_max = fmaxf(row_max, warp_max(fmaxf(score[0], score[1])));
  float rescale = 1.0f, p0 = 0.0f, p1 = 0.0f;
  if (new_max != -INFINITY) {  // warp-uniform: every lane holds the same new_max
    rescale = expf(row_max - new_max);  // 0 while the row had seen nothing
    p0 = expf(score[0] - new_max);
    p1 = expf(score[1] - new_max);
    row_sum = rescale * row_sum + warp_sum(p0 + p1);
    row_max = new_max;
  }
#pragma unroll
  for (int c = 0; c < kPer; ++c) acc_row[c] *= rescale;
  p_row[lane] = p0;
  p_row[lane + 32] = p1;
}

// Raises the kernel's dynamic shared memory limit to `bytes`, after checking the device has it.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes, int device, const char* op) {
  int limit = 0;
  LAMINA_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  LAMINA_CHECK(bytes <= size_t(limit), op, ": the CUDA kernel needs ", bytes, " bytes of shared memory per block; device ",
               device, " allows ", limit);
  LAMINA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// A grid of `count` blocks along x, or an error naming the op when it exceeds CUDA's limit.
inline unsigned grid_blocks(int64_t count, const char* op) {
  LAMINA_CHECK(count <= int64_t(0x7fffffff), op, ": ", count, " thread blocks exceed the grid limit");
  return unsigned(count);
}

}  // namespace lamina::ops::cuda::attention_tiles
