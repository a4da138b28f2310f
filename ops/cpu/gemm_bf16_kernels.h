// The packed layouts and micro-kernels behind gemm_bf16.cpp (internal to it and its tests).
//
// Packed B: the columns of B in panels of kPanelColumns; inside a panel, K in pairs, each pair
// of rows interleaved (b[k][n], b[k+1][n]) for n across the panel: 64 bytes per pair of rows.
// That is the operand layout of vdpbf16ps (one zmm per pair) and of an AMX B tile (16 rows of
// pairs). K is padded with zeros to a multiple of kDepthStep, the columns to a whole number of
// panel pairs, so the kernels never test for a ragged edge of B.
// Packed A: a block of rows of A, row-major, kc (a multiple of kDepthStep) bf16 per row.
#pragma once

#include <cstdint>

namespace lamina::ops::cpu::gemm_bf16_detail {

constexpr int64_t kPanelColumns = 16;
constexpr int64_t kDepthStep = 32;      // bf16 in one 64-byte row of an AMX A tile
constexpr int kAvx512KernelRows = 12;   // rows of C per AVX-512 micro-kernel: 24 accumulators

// C[rows, columns] (rows <= kAvx512KernelRows, columns <= 32, row stride c_row_stride floats)
// = (or += when load_c) A[rows, depth] x B[depth, 32], B being two consecutive packed panels.
void avx512_kernel(int rows, const uint16_t* a, int64_t a_row_elements, const uint16_t* b_panel0,
                   const uint16_t* b_panel1, float* c, int64_t c_row_stride, int columns, int64_t depth,
                   bool load_c);

// Packing with AVX-512F (both fast paths run only where it exists). Each handles any size, the
// 16 x 16 blocks of 32-bit words (pairs of bf16) by vector transposes, the ragged rest by loops.
//
// One panel of packed B from a row-major source: 16 columns (all present), `rows` rows of K,
// row k at src + k * row_stride; `depth` (even, >= rows) rows of pairs written, zero past rows.
void avx512_pack_b_from_rows(const uint16_t* src, int64_t row_stride, int64_t rows, int64_t depth, uint16_t* out);
// The same from a column-major source: column n at src + n * column_stride, K contiguous.
void avx512_pack_b_from_columns(const uint16_t* src, int64_t column_stride, int64_t rows, int64_t depth,
                                uint16_t* out);
// A block of A stored K-major (A[i, k] at src[k * k_stride + i], a transposed view): writes
// out[i * depth + k] for i < rows, k < valid_k; the caller zeroes the rest.
void avx512_pack_a_from_columns(const uint16_t* src, int64_t k_stride, int64_t rows, int64_t valid_k, int64_t depth,
                                uint16_t* out);

// Tile configuration for amx_kernel: load once per thread before the kernels, release after.
void amx_configure();
void amx_release();

// Four 16x16 f32 tiles of C, c_tiles[2 * i + j] for rows 16 i.. and columns 16 j.. (each with
// its own row stride in bytes, so a ragged edge can go through a scratch tile), = (or += when
// load_c) A[32, depth] x B[depth, 32], A packed with a_row_elements bf16 per row.
void amx_kernel(const uint16_t* a, int64_t a_row_elements, const uint16_t* b_panel0, const uint16_t* b_panel1,
                float* const c_tiles[4], const int64_t c_stride_bytes[4], int64_t depth, bool load_c);

}  // namespace lamina::ops::cpu::gemm_bf16_detail
