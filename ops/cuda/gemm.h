// Batched matrix products through cuBLASLt, the one library call lamina makes for compute.
// Used by the matmul op (matmul.cpp) and by dense attention (attention.cu). No CUDA types.
#pragma once

#include <cstdint>

#include "tensor/dtype.h"

namespace lamina::ops::cuda {

// The logical row-major matrix [rows, cols] at `data` (strides in elements, so a transposed view
// is just swapped strides), and the element step between consecutive matrices of a batch.
struct GemmOperand {
  const void* data = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t row_stride = 0, col_stride = 0;
  int64_t batch_stride = 0;
};

// Whether cuBLASLt can read the matrix in place: unit stride along rows or columns, and a
// leading dimension that keeps rows (or columns) from overlapping.
bool gemm_readable(const GemmOperand& m);

// c[i] = alpha a[i] b[i] + beta c[i] for i < batch, queued on the device's stream. a, b and c
// share `dtype` (f32, f64, bf16 or f16); products accumulate in f32 (f64 for f64), never TF32.
// c must be row-major (col_stride 1); a and b must be gemm_readable. The workspace comes from
// the caching allocator; the chosen algorithm is remembered per shape, layout and alignment.
void gemm(DType dtype, const GemmOperand& a, const GemmOperand& b, const GemmOperand& c, int64_t batch, double alpha,
          double beta, int device);

}  // namespace lamina::ops::cuda
