// The packed layouts and micro-kernels behind gemm_f32.cpp (internal to it and its tests).
//
// Packed B: the columns of B in panels of `width` columns (32 for AVX-512, 16 for AVX2); inside
// a panel, row k of B holds `width` consecutive floats at k * width, columns past B zero, so a
// kernel loads whole vectors and never tests for a ragged edge of B.
// Packed A: a block of rows of A in micro-panels of kernel-rows rows (12 for AVX-512, 6 for
// AVX2), in one of two layouts: K-major, A[r, k] at k * kernel_rows + r (from a transposed A:
// each k's rows are contiguous there), or row-pitched, A[r, k] at r * kPackedRowPitch + k (from
// a row-major A: a plain copy of each row, where K-major would need a transpose; the fixed
// pitch makes each row's offset a constant in the kernel's addressing). Rows past A are never
// read (the kernel is told how many rows it has).
//
// Every kernel sums each output as the f32 FMA chain k = 0, 1, ..., depth - 1 starting from
// zero, then adds the chain to C (or stores it) with one rounding: both paths give the same
// bits for the same K slices.
#pragma once

#include <cstdint>

namespace lamina::ops::cpu::gemm_f32_detail {

constexpr int kAvx512KernelRows = 12;     // 12 x 32 of C: 24 zmm accumulators
constexpr int kAvx512PanelColumns = 32;
constexpr int kAvx2KernelRows = 6;        // 6 x 16 of C: 12 ymm accumulators
constexpr int kAvx2PanelColumns = 16;
constexpr int64_t kDepthSlice = 256;              // K per slice (see gemm_f32.h)
constexpr int64_t kPackedRowPitch = kDepthSlice;  // floats per row of a row-pitched micro-panel

// C[rows, columns] (rows <= kernel rows, columns <= panel columns, row stride c_row_stride
// floats) = A[rows, depth] x B[depth, panel], or C += that when accumulate. `a` is one packed
// micro-panel (row-pitched when a_row_pitch, else K-major; depth <= kDepthSlice), `b` one packed
// panel (both starting at the slice's first k).
void avx512_kernel(int rows, const float* a, bool a_row_pitch, const float* b, int64_t depth, float* c,
                   int64_t c_row_stride, int columns, bool accumulate);
void avx2_kernel(int rows, const float* a, bool a_row_pitch, const float* b, int64_t depth, float* c,
                 int64_t c_row_stride, int columns, bool accumulate);

// Transposes with AVX-512F (for packing; pure data movement, so any path may use it): for each
// of `length` positions j, out[j * out_stride + l] = src[l * src_stride + j] for lines l < lines,
// and zero for lines <= l < store_lanes (lines <= store_lanes <= 16). Row-major A into a
// micro-panel: lines = rows, out_stride = kernel rows; a transposed B into a panel: lines =
// columns (16 at a time), out_stride = panel columns.
void avx512_transpose(const float* src, int64_t src_stride, int lines, int64_t length, float* out, int64_t out_stride,
                      int store_lanes);

// Packs with AVX-512F, reading the source in its own order (one pass, line after line):
// row-major B rows [0, depth) x `columns` columns (row k at src + k * row_stride) into
// ceil(columns / width) consecutive panels `panel_stride` floats apart, zero past columns;
void avx512_pack_b_rows(const float* src, int64_t row_stride, int64_t columns, int64_t depth, int width,
                        int64_t panel_stride, float* out);
// and a transposed A (A[i, k] at src[k * k_stride + i]), `rows` rows and `depth` K, into
// micro-panels of panel_rows (<= 16) rows, as in the packed A layout above.
void avx512_pack_a_columns(const float* src, int64_t k_stride, int64_t rows, int64_t depth, int panel_rows,
                           float* out);

// Tests only: make gemm_f32.cpp pack with its plain loops even where AVX-512F exists (the
// packed bits are the same either way), so that those loops are tested on such CPUs too.
void set_plain_packing(bool plain);

}  // namespace lamina::ops::cpu::gemm_f32_detail
