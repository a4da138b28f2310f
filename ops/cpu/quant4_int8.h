// Integer products of 4-bit (NF4 / FP4) weight rows with activations quantized to int8: the
// decode path of matmul_4bit (1..15 rows of f32 x; the rule is documented in ops/quant4.h).
//
// What every path computes (the plain C++ reference defines it; AVX2 and AVX-512 VNNI give the
// same bits). The activations are ggml's Q8_0 of them (cpu::quantize_activations, ops/cpu/
// gguf_dot.h): per 32 values q = round-half-even(x / d), d = max |x| / 127. The 16 codes become
// the integers t_c = round(127 * code_values[c]) (quant4_int8_code_table). For weight row r and
// activation row i, the row's 32-value groups are taken in pairs (groups 2p and 2p + 1; a last
// odd group has no partner, whose products and scale are 0). Lane k (0..15) of pair p holds
//     P_k = sum over j = 0..3 of t(code of element e) * q_e,  e = 8 (k % 4) + 2 j + (k >= 8),
// of group 2p + (k / 4) % 2: lanes 0..7 take the even elements (the high nibbles), 8..15 the odd
// ones (the low nibbles), four of each group in each half. P_k is exact in int32. It is added to
// the f32 lane as fma(float(P_k), s, lane) with s = absmax(block of the group) * (d / 127), each
// factor as one f32 value (the absmax decoded as dequantize_4bit does, d / 127 one f32 division),
// s one f32 multiplication. After the last pair the 16 lanes are summed as a halving tree (lane
// k + lane k+8, then k + k+4, k + k+2, k + k+1). That is the order of a 512-bit register of one
// pair, and the AVX2 path keeps lanes 0..7 and 8..15 in two 256-bit registers to follow it.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "ops/cpu/gguf_dot.h"
#include "ops/cpu/quant4_decode.h"

namespace lamina::ops::cpu::quant4_int8 {

constexpr int64_t kGroup = 32;  // activation values per int8 scale
constexpr int64_t kMaxRows = 15;  // rows of x the integer path takes; from 16 on the f32 GEMM-like paths do

// Activations in the pair layout above: for each row and pair p, 64 bytes holding the even
// elements of group 2p, the even ones of group 2p + 1, the odd ones of 2p, the odd ones of 2p + 1
// (16 each, in element order), so that the 4 bytes of lane k are the 4 activations that lane
// multiplies. Quantized once per product, reused by every weight row.
struct PairedActivations {
  int64_t rows = 0, cols = 0, groups = 0, pairs = 0;
  std::vector<int8_t> values;      // [rows][pairs][64]; a missing last group is zeros
  std::vector<float> unit_scales;  // d / 127, [rows][2 * pairs]; 0 for a missing last group
  std::vector<int32_t> lane_sums;  // sum of each lane's 4 bytes, [rows][pairs][16] (VNNI's offset)
};
// cols must be a multiple of 32.
void pair_activations(const float* x, int64_t rows, int64_t cols, PairedActivations& out);

// y[i * y_stride + r] for every activation row i and weight row r in [row_begin, row_end) of the
// 4-bit weight w with rows of `in_features` (a multiple of 32) elements, by `kernel` (the caller
// checks that it runs on this CPU). `table` is quant4_int8_code_table of w's code values.
void dot_rows(DotKernel kernel, const quant4_detail::WeightView& w, const std::array<int8_t, 16>& table,
              int64_t in_features, const PairedActivations& x, int64_t row_begin, int64_t row_end, float* y,
              int64_t y_stride);

// Whether matmul_4bit takes the integer path for `rows` rows of f32 x times q: 1..kMaxRows rows,
// in_features a multiple of 32 (so that each group lies in one absmax block), every code value
// finite and in [-1, 1], and quant4_decode_product() == int8.
bool applies(int64_t rows, const Quantized4Bit& q);
// out [rows, out_features] = x [rows, in_features] @ W^T on the integer path (f32, contiguous),
// threaded over rows of W with the kernel of gguf_dot_path().
void matmul(float* out, const float* x, int64_t rows, const Quantized4Bit& q);

}  // namespace lamina::ops::cpu::quant4_int8
