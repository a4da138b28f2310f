// Integer dot-product kernels for matrices in ggml's 32-value block formats Q8_0, Q4_0 and Q4_1,
// against activations quantized to int8 per 32 values (ggml's Q8_0 of activations).
//
// What every path computes (the plain C++ reference defines it; AVX2 and AVX-512 VNNI give the
// same bits): for weight row r and activation row i, block b of both has an integer weight
// w_e (Q8_0: the int8; Q4_0: nibble - 8; Q4_1: the nibble) and activation q_e. Lane j (0..7) of
// block b holds p = sum of w_e * q_e over e = 4j .. 4j+3 (exact in int32), and it is added to
// float accumulator lane (b % 2) * 8 + j as fma(float(p), d_w * d_x, lane). The 16 lanes are
// summed as a halving tree (lane k + lane k+8, then k + k+4, k + k+2, k + k+1), and Q4_1 adds its
// min term sum_b fma(m_b, s_b, .) (s_b = d_x * sum of the block's q, in block order) last. That is
// the order a 512-bit register of two blocks gives, and the AVX2 path keeps even and odd blocks
// in two 256-bit registers to follow it.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/ggml_blocks.h"

namespace lamina::ops::cpu {

// n rows of `cols` activations, quantized per 32 values: q = round-half-even(x / d) with
// d = max |x| / 127 (0 for an all-zero block), so |q| <= 127.
struct QuantizedActivations {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> values;      // [rows * cols]
  std::vector<float> scales;       // d, [rows * cols / 32]
  std::vector<float> scaled_sums;  // d * sum of the block's q (Q4_1's min term), [rows * cols / 32]
  std::vector<int32_t> lane_sums;  // sum of each 4 consecutive q, [rows * cols / 4] (VNNI's offsets)
};
// cols must be a multiple of 32.
void quantize_activations(const float* x, int64_t rows, int64_t cols, QuantizedActivations& out);

enum class DotKernel { reference, avx2, vnni };

// y[i * y_stride + r] for every activation row i and weight row r in [row_begin, row_end): the
// product of activation row i with weight row r of the [*, cols] matrix at `weights` (type q8_0,
// q4_0 or q4_1; cols a multiple of 32). The caller checks that `kernel` runs on this CPU.
void gguf_dot_rows(DotKernel kernel, ggml::BlockType type, const uint8_t* weights, int64_t cols,
                   const QuantizedActivations& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride);

}  // namespace lamina::ops::cpu
