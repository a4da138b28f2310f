// Matrix products with weights kept in ggml's K-quant formats Q4_K and Q6_K (256 values per
// super-block, with 6-bit or 8-bit sub-block scales), never expanded to f32.
//
// The activations are quantized per 256 values to int8 with one f32 scale (max |x| / 127, values
// rounded to nearest: ggml's Q8_K idea), together with the sum of each 16 quantized values (the
// Q4_K min term and the Q6_K offset of 32 need them). Each super-block then contributes integer dot
// products per sub-block, weighted by the integer sub-block scales, and only the block's f16
// d / dmin and the activation scale are applied in f32:
//   Q4_K: y += (d_x * d) * sum_j sc_j * <q4_j, q8_j>  -  (d_x * dmin) * sum_j m_j * sum(q8_j)
//   Q6_K: y += (d_x * d) * sum_j s_j * <q6_j - 32, q8_j>
// The integer sums are exact, so every path gives the same bits: the plain C++ reference defines
// them, the AVX2 path (vpmaddubsw / vpmaddwd) and the AVX-512 VNNI path (vpdpbusd) reproduce them,
// and the f32 combination is one shared scalar sequence per block, in block order, with its
// fused multiply-adds spelled out (Q4_K: y += fma(d_x d, dots, -(d_x dmin) mins); Q6_K:
// y = fma(d_x d, dots, y)), so that no compiler's contraction choices change a bit.
//
// Error against the dequantized weight times the exact x: per super-block of one x row,
//   |error| <= (d_x / 2) * sum over its 256 values of |w| (activation rounding), plus f32
// rounding of the per-block combination and of the sum over blocks.
#pragma once

#include <cstdint>

#include "ops/gguf_matmul.h"

namespace lamina::ops::cpu {

// y [n, rows] = x [n, cols] (f32, contiguous) times W^T for a Q4_K or Q6_K matrix; cols % 256 == 0.
// Uses the fastest path this CPU runs. Threads over rows of W; results do not depend on the
// thread count.
void gguf_kquant_matmul(const float* x, int64_t n, const GgufMatrix& w, float* y);

// The same with a chosen path (GgufDotPath::automatic picks the fastest); throws lamina::Error
// for a path this CPU cannot run, or for a type other than Q4_K / Q6_K or cols not whole blocks.
void gguf_kquant_matmul(const float* x, int64_t n, const GgufMatrix& w, float* y, GgufDotPath path);

// Whether this CPU can run `path` for the K-quants (reference and automatic always can).
bool gguf_kquant_path_available(GgufDotPath path);

}  // namespace lamina::ops::cpu
