// The AVX-512 and AVX2+FMA micro-kernels of the f32 GEMM. Each names its instruction sets in a
// target attribute, so that the file compiles (and the rest of lamina runs) on any x86-64 build
// without -march; gemm_f32.cpp calls a kernel only after cpu_features() found the instructions.
// On other architectures the kernels are never called and only say so.

// GCC 12's AVX-512 intrinsic headers trip false (maybe-)uninitialized warnings (their
// _mm*_undefined_* placeholders), as in gemm_bf16_kernels.cpp.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "ops/cpu/gemm_f32_kernels.h"

#include <algorithm>
#include <array>
#include <utility>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lamina::ops::cpu::gemm_f32_detail {

#if defined(__x86_64__)
namespace {

#define LAMINA_F32_AVX512_TARGET __attribute__((target("avx512f")))
#define LAMINA_F32_AVX2_TARGET __attribute__((target("avx2,fma")))

// Rows x 32 of C in 2 Rows zmm accumulators: per k, two loads of B and one broadcast of A per
// row feed 2 Rows FMAs (with Rows = 12: 24 FMAs for 14 loads, which the two load ports of any
// AVX-512 core sustain beside the two FMA ports).
template <int Rows, bool RowPitch>
LAMINA_F32_AVX512_TARGET void avx512_tile(const float* a, const float* b, int64_t depth, float* c,
                                          int64_t c_row_stride, int columns, bool accumulate) {
  const auto lanes = [](int count) {
    return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
  };
  // C is touched only after the K loop: fetch its rows now, while the FMAs run.
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * c_row_stride), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * c_row_stride + 16), _MM_HINT_T0);
  }
  __m512 left[Rows], right[Rows];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    left[r] = _mm512_setzero_ps();
    right[r] = _mm512_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < depth; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b + k * kAvx512PanelColumns);
    const __m512 b1 = _mm512_loadu_ps(b + k * kAvx512PanelColumns + 16);
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      const __m512 broadcast = _mm512_set1_ps(RowPitch ? a[r * kPackedRowPitch + k] : a[k * kAvx512KernelRows + r]);
      left[r] = _mm512_fmadd_ps(broadcast, b0, left[r]);
      right[r] = _mm512_fmadd_ps(broadcast, b1, right[r]);
    }
  }
  const __mmask16 mask0 = lanes(columns), mask1 = lanes(columns - 16);
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    float* row = c + r * c_row_stride;
    if (accumulate) {
      left[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(mask0, row), left[r]);
      right[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(mask1, row + 16), right[r]);
    }
    _mm512_mask_storeu_ps(row, mask0, left[r]);
    _mm512_mask_storeu_ps(row + 16, mask1, right[r]);
  }
}

// Rows x 16 of C in 2 Rows ymm accumulators (Rows = 6: 12 accumulators, two B vectors and a
// broadcast fill the 16 registers). Ragged columns go through vmaskmovps.
template <int Rows, bool RowPitch>
LAMINA_F32_AVX2_TARGET void avx2_tile(const float* a, const float* b, int64_t depth, float* c, int64_t c_row_stride,
                                      int columns, bool accumulate) {
  __m256 left[Rows], right[Rows];
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
    left[r] = _mm256_setzero_ps();
    right[r] = _mm256_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t k = 0; k < depth; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b + k * kAvx2PanelColumns);
    const __m256 b1 = _mm256_loadu_ps(b + k * kAvx2PanelColumns + 8);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const __m256 broadcast =
          _mm256_broadcast_ss(RowPitch ? a + r * kPackedRowPitch + k : a + k * kAvx2KernelRows + r);
      left[r] = _mm256_fmadd_ps(broadcast, b0, left[r]);
      right[r] = _mm256_fmadd_ps(broadcast, b1, right[r]);
    }
  }
  const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(columns), lane_index);
  const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(columns - 8), lane_index);
  const bool full = columns >= kAvx2PanelColumns;
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r) {
    float* row = c + r * c_row_stride;
    if (full) {
      if (accumulate) {
        left[r] = _mm256_add_ps(_mm256_loadu_ps(row), left[r]);
        right[r] = _mm256_add_ps(_mm256_loadu_ps(row + 8), right[r]);
      }
      _mm256_storeu_ps(row, left[r]);
      _mm256_storeu_ps(row + 8, right[r]);
    } else {
      if (accumulate) {
        left[r] = _mm256_add_ps(_mm256_maskload_ps(row, mask0), left[r]);
        right[r] = _mm256_add_ps(_mm256_maskload_ps(row + 8, mask1), right[r]);
      }
      _mm256_maskstore_ps(row, mask0, left[r]);
      _mm256_maskstore_ps(row + 8, mask1, right[r]);
    }
  }
}

// The 64-bit interleaves of transpose_16x16 (functions, not lambdas: a lambda does not inherit
// the enclosing function's target attribute, and without -march it would not compile).
LAMINA_F32_AVX512_TARGET inline __m512 low(__m512 x, __m512 y) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
}
LAMINA_F32_AVX512_TARGET inline __m512 high(__m512 x, __m512 y) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
}

// Transposes a 16 x 16 block of floats held one row per register: 32-bit then 64-bit
// interleaves inside each 128-bit lane, then two rounds of lane shuffles.
LAMINA_F32_AVX512_TARGET inline void transpose_16x16(__m512 rows[16]) {
  __m512 pairs[16], quads[16];
  for (int j = 0; j < 4; ++j) {
    pairs[4 * j + 0] = _mm512_unpacklo_ps(rows[4 * j], rows[4 * j + 1]);
    pairs[4 * j + 1] = _mm512_unpackhi_ps(rows[4 * j], rows[4 * j + 1]);
    pairs[4 * j + 2] = _mm512_unpacklo_ps(rows[4 * j + 2], rows[4 * j + 3]);
    pairs[4 * j + 3] = _mm512_unpackhi_ps(rows[4 * j + 2], rows[4 * j + 3]);
  }
  // quads[4 j + c], 128-bit lane L: rows 4 j .. 4 j + 3 of column 4 L + c.
  for (int j = 0; j < 4; ++j) {
    quads[4 * j + 0] = low(pairs[4 * j], pairs[4 * j + 2]);
    quads[4 * j + 1] = high(pairs[4 * j], pairs[4 * j + 2]);
    quads[4 * j + 2] = low(pairs[4 * j + 1], pairs[4 * j + 3]);
    quads[4 * j + 3] = high(pairs[4 * j + 1], pairs[4 * j + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    // Lanes 0 and 2 (then 1 and 3) of rows 0-3 and 4-7, and of rows 8-11 and 12-15.
    const __m512 even_upper = _mm512_shuffle_f32x4(quads[c], quads[4 + c], 0x88);
    const __m512 odd_upper = _mm512_shuffle_f32x4(quads[c], quads[4 + c], 0xdd);
    const __m512 even_lower = _mm512_shuffle_f32x4(quads[8 + c], quads[12 + c], 0x88);
    const __m512 odd_lower = _mm512_shuffle_f32x4(quads[8 + c], quads[12 + c], 0xdd);
    rows[c] = _mm512_shuffle_f32x4(even_upper, even_lower, 0x88);
    rows[8 + c] = _mm512_shuffle_f32x4(even_upper, even_lower, 0xdd);
    rows[4 + c] = _mm512_shuffle_f32x4(odd_upper, odd_lower, 0x88);
    rows[12 + c] = _mm512_shuffle_f32x4(odd_upper, odd_lower, 0xdd);
  }
}

}  // namespace

LAMINA_F32_AVX512_TARGET void avx512_transpose(const float* src, int64_t src_stride, int lines, int64_t length,
                                               float* out, int64_t out_stride, int store_lanes) {
  const __mmask16 store_mask = __mmask16((1u << store_lanes) - 1u);
  __m512 block[16];
  for (int64_t j0 = 0; j0 < length; j0 += 16) {
    const int count = int(std::min<int64_t>(16, length - j0));
    const __mmask16 load_mask = __mmask16((1u << count) - 1u);
    // 16 lines read side by side: fetch each a few cache lines ahead.
    if (j0 + 64 < length)
      for (int l = 0; l < lines; ++l) _mm_prefetch(reinterpret_cast<const char*>(src + l * src_stride + j0 + 64), _MM_HINT_T0);
    for (int l = 0; l < 16; ++l)
      block[l] = l < lines ? _mm512_maskz_loadu_ps(load_mask, src + l * src_stride + j0) : _mm512_setzero_ps();
    transpose_16x16(block);
    for (int j = 0; j < count; ++j) _mm512_mask_storeu_ps(out + (j0 + j) * out_stride, store_mask, block[j]);
  }
}

namespace {
__mmask16 lane_mask(int64_t count) {
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
}
}  // namespace

LAMINA_F32_AVX512_TARGET void avx512_pack_b_rows(const float* src, int64_t row_stride, int64_t columns,
                                                 int64_t depth, int width, int64_t panel_stride, float* out) {
  const int64_t padded = (columns + width - 1) / width * width;
  constexpr int64_t kAhead = 8;  // rows fetched ahead, as in avx512_pack_a_columns
  for (int64_t k = 0; k < depth; ++k) {
    const float* row = src + k * row_stride;
    if (k + kAhead < depth)
      for (int64_t n = 0; n < columns; n += 16) _mm_prefetch(reinterpret_cast<const char*>(row + kAhead * row_stride + n), _MM_HINT_T0);
    for (int64_t n = 0; n < padded; n += 16) {
      const __m512 values = _mm512_maskz_loadu_ps(lane_mask(columns - n), row + n);
      _mm512_storeu_ps(out + (n / width) * panel_stride + k * width + n % width, values);
    }
  }
}

LAMINA_F32_AVX512_TARGET void avx512_pack_a_columns(const float* src, int64_t k_stride, int64_t rows, int64_t depth,
                                                    int panel_rows, float* out) {
  // Each k reads a short run (the block's rows) of a long line: the hardware prefetcher does not
  // follow such strides, and without asking for line k + 8 here the packing of the weight
  // gradient's transposed operand took 20% of its product on Zen 5 (13% less with it).
  constexpr int64_t kAhead = 8;
  for (int64_t k = 0; k < depth; ++k) {
    const float* line = src + k * k_stride;
    if (k + kAhead < depth)
      for (int64_t i = 0; i < rows; i += 16) _mm_prefetch(reinterpret_cast<const char*>(line + kAhead * k_stride + i), _MM_HINT_T0);
    for (int64_t i = 0, p = 0; i < rows; i += panel_rows, ++p) {
      const __mmask16 mask = lane_mask(std::min<int64_t>(panel_rows, rows - i));
      _mm512_mask_storeu_ps(out + p * panel_rows * depth + k * panel_rows, mask, _mm512_maskz_loadu_ps(mask, line + i));
    }
  }
}

namespace {

// The kernel for `rows` rows (1 .. Rows) and A layout, from a table built at compile time.
template <typename Kernel, template <int, bool> class Tile, int... Rows>
constexpr std::array<std::array<Kernel, 2>, sizeof...(Rows)> tile_table(std::integer_sequence<int, Rows...>) {
  return {{{Tile<Rows + 1, false>::run, Tile<Rows + 1, true>::run}...}};
}

using KernelFunction = void (*)(const float*, const float*, int64_t, float*, int64_t, int, bool);
template <int Rows, bool RowPitch>
struct Avx512Tile {
  static void run(const float* a, const float* b, int64_t depth, float* c, int64_t c_row_stride, int columns,
                  bool accumulate) {
    avx512_tile<Rows, RowPitch>(a, b, depth, c, c_row_stride, columns, accumulate);
  }
};
template <int Rows, bool RowPitch>
struct Avx2Tile {
  static void run(const float* a, const float* b, int64_t depth, float* c, int64_t c_row_stride, int columns,
                  bool accumulate) {
    avx2_tile<Rows, RowPitch>(a, b, depth, c, c_row_stride, columns, accumulate);
  }
};

constexpr auto kAvx512Tiles =
    tile_table<KernelFunction, Avx512Tile>(std::make_integer_sequence<int, kAvx512KernelRows>());
constexpr auto kAvx2Tiles = tile_table<KernelFunction, Avx2Tile>(std::make_integer_sequence<int, kAvx2KernelRows>());

}  // namespace

void avx512_kernel(int rows, const float* a, bool a_row_pitch, const float* b, int64_t depth, float* c,
                   int64_t c_row_stride, int columns, bool accumulate) {
  if (rows < 1 || rows > kAvx512KernelRows) throw std::logic_error("gemm_f32 avx512_kernel: rows out of range");
  kAvx512Tiles[size_t(rows - 1)][a_row_pitch ? 1 : 0](a, b, depth, c, c_row_stride, columns, accumulate);
}

void avx2_kernel(int rows, const float* a, bool a_row_pitch, const float* b, int64_t depth, float* c,
                 int64_t c_row_stride, int columns, bool accumulate) {
  if (rows < 1 || rows > kAvx2KernelRows) throw std::logic_error("gemm_f32 avx2_kernel: rows out of range");
  kAvx2Tiles[size_t(rows - 1)][a_row_pitch ? 1 : 0](a, b, depth, c, c_row_stride, columns, accumulate);
}

#else  // not x86-64: gemm_f32.cpp never selects these paths.

void avx512_kernel(int, const float*, bool, const float*, int64_t, float*, int64_t, int, bool) {
  throw std::logic_error("gemm_f32 avx512_kernel: not an x86-64 build");
}
void avx2_kernel(int, const float*, bool, const float*, int64_t, float*, int64_t, int, bool) {
  throw std::logic_error("gemm_f32 avx2_kernel: not an x86-64 build");
}
void avx512_pack_b_rows(const float*, int64_t, int64_t, int64_t, int, int64_t, float*) {
  throw std::logic_error("gemm_f32 avx512_pack_b_rows: not an x86-64 build");
}
void avx512_pack_a_columns(const float*, int64_t, int64_t, int64_t, int, float*) {
  throw std::logic_error("gemm_f32 avx512_pack_a_columns: not an x86-64 build");
}
void avx512_transpose(const float*, int64_t, int, int64_t, float*, int64_t, int) {
  throw std::logic_error("gemm_f32 avx512_transpose: not an x86-64 build");
}

#endif

}  // namespace lamina::ops::cpu::gemm_f32_detail
