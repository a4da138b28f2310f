// The AVX-512 BF16 and AMX micro-kernels of the bf16 GEMM. Each function names the instruction
// sets it uses in a target attribute, so that the file compiles (and the rest of lamina runs)
// on any x86-64 build; gemm_bf16.cpp only calls a kernel after cpu_features() found the
// instructions. On other architectures the kernels are never called and only say so.

// GCC 12's AVX-512 intrinsic headers trip false (maybe-)uninitialized warnings (their
// _mm*_undefined_* placeholders), as in Eigen's GEMM (see CMakeLists.txt).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "ops/cpu/gemm_bf16_kernels.h"

#include <cstring>
#include <stdexcept>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lamina::ops::cpu::gemm_bf16_detail {

#if defined(__x86_64__)
namespace {

#define LAMINA_AVX512_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define LAMINA_AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))

// Rows x 32 of C in 2 Rows zmm accumulators: per pair of K, two loads of B and one broadcast of
// an A pair per row feed 2 Rows vdpbf16ps.
template <int Rows>
LAMINA_AVX512_BF16_TARGET void avx512_tile(const uint16_t* a, int64_t a_row_elements, const uint16_t* b_panel0,
                                           const uint16_t* b_panel1, float* c, int64_t c_row_stride, int columns,
                                           int64_t depth, bool load_c) {
  // Lanes of C inside the product: columns 0-15 in mask0, 16-31 in mask1.
  const auto lanes = [](int count) {
    return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
  };
  const __mmask16 mask0 = lanes(columns), mask1 = lanes(columns - 16);
  __m512 left[Rows], right[Rows];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    left[r] = load_c ? _mm512_maskz_loadu_ps(mask0, c + r * c_row_stride) : _mm512_setzero_ps();
    right[r] = load_c ? _mm512_maskz_loadu_ps(mask1, c + r * c_row_stride + 16) : _mm512_setzero_ps();
  }
  const int64_t pairs = depth / 2;
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b_panel0 + q * 2 * kPanelColumns);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b_panel1 + q * 2 * kPanelColumns);
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * a_row_elements + 2 * q, sizeof(pair));
      const __m512bh broadcast = (__m512bh)_mm512_set1_epi32(pair);
      left[r] = _mm512_dpbf16_ps(left[r], broadcast, b0);
      right[r] = _mm512_dpbf16_ps(right[r], broadcast, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    _mm512_mask_storeu_ps(c + r * c_row_stride, mask0, left[r]);
    _mm512_mask_storeu_ps(c + r * c_row_stride + 16, mask1, right[r]);
  }
}

#define LAMINA_AVX512F_TARGET __attribute__((target("avx512f")))

// Transposes a 16 x 16 matrix of 32-bit words held one row per register: 32-bit then 64-bit
// interleaves inside each 128-bit lane, then two rounds of lane shuffles.
LAMINA_AVX512F_TARGET inline void transpose_16x16(__m512i rows[16]) {
  __m512i pairs[16], quads[16];
  for (int j = 0; j < 4; ++j) {
    pairs[4 * j + 0] = _mm512_unpacklo_epi32(rows[4 * j], rows[4 * j + 1]);
    pairs[4 * j + 1] = _mm512_unpackhi_epi32(rows[4 * j], rows[4 * j + 1]);
    pairs[4 * j + 2] = _mm512_unpacklo_epi32(rows[4 * j + 2], rows[4 * j + 3]);
    pairs[4 * j + 3] = _mm512_unpackhi_epi32(rows[4 * j + 2], rows[4 * j + 3]);
  }
  // quads[4 j + r], lane L: rows 4 j .. 4 j + 3 of column 4 L + r.
  for (int j = 0; j < 4; ++j) {
    quads[4 * j + 0] = _mm512_unpacklo_epi64(pairs[4 * j], pairs[4 * j + 2]);
    quads[4 * j + 1] = _mm512_unpackhi_epi64(pairs[4 * j], pairs[4 * j + 2]);
    quads[4 * j + 2] = _mm512_unpacklo_epi64(pairs[4 * j + 1], pairs[4 * j + 3]);
    quads[4 * j + 3] = _mm512_unpackhi_epi64(pairs[4 * j + 1], pairs[4 * j + 3]);
  }
  for (int r = 0; r < 4; ++r) {
    const __m512i even_top = _mm512_shuffle_i32x4(quads[r], quads[4 + r], 0x88);     // lanes 0, 2 of each
    const __m512i odd_top = _mm512_shuffle_i32x4(quads[r], quads[4 + r], 0xdd);      // lanes 1, 3
    const __m512i even_bottom = _mm512_shuffle_i32x4(quads[8 + r], quads[12 + r], 0x88);
    const __m512i odd_bottom = _mm512_shuffle_i32x4(quads[8 + r], quads[12 + r], 0xdd);
    rows[0 + r] = _mm512_shuffle_i32x4(even_top, even_bottom, 0x88);   // lane 0 of all four
    rows[8 + r] = _mm512_shuffle_i32x4(even_top, even_bottom, 0xdd);   // lane 2
    rows[4 + r] = _mm512_shuffle_i32x4(odd_top, odd_bottom, 0x88);     // lane 1
    rows[12 + r] = _mm512_shuffle_i32x4(odd_top, odd_bottom, 0xdd);    // lane 3
  }
}

// 16 words (bf16 of row k, bf16 of row k + 1) from 16 consecutive bf16 of each row.
LAMINA_AVX512F_TARGET inline __m512i interleave_rows(const uint16_t* row, const uint16_t* next_row) {
  const __m512i low = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)));
  const __m512i high = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(next_row)));
  return _mm512_or_si512(low, _mm512_slli_epi32(high, 16));
}

// The layout ldtilecfg reads: palette 1, then bytes per row and rows of each tile.
struct alignas(64) TileConfig {
  uint8_t palette = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

}  // namespace

LAMINA_AVX512_BF16_TARGET void avx512_kernel(int rows, const uint16_t* a, int64_t a_row_elements,
                                             const uint16_t* b_panel0, const uint16_t* b_panel1, float* c,
                                             int64_t c_row_stride, int columns, int64_t depth, bool load_c) {
  static_assert(kAvx512KernelRows == 12);
  switch (rows) {
#define LAMINA_AVX512_ROWS(count) \
  case count: return avx512_tile<count>(a, a_row_elements, b_panel0, b_panel1, c, c_row_stride, columns, depth, load_c);
    LAMINA_AVX512_ROWS(1) LAMINA_AVX512_ROWS(2) LAMINA_AVX512_ROWS(3) LAMINA_AVX512_ROWS(4)
    LAMINA_AVX512_ROWS(5) LAMINA_AVX512_ROWS(6) LAMINA_AVX512_ROWS(7) LAMINA_AVX512_ROWS(8)
    LAMINA_AVX512_ROWS(9) LAMINA_AVX512_ROWS(10) LAMINA_AVX512_ROWS(11) LAMINA_AVX512_ROWS(12)
#undef LAMINA_AVX512_ROWS
    default: throw std::logic_error("avx512_kernel: rows out of range");
  }
}

LAMINA_AVX512F_TARGET void avx512_pack_b_from_rows(const uint16_t* src, int64_t row_stride, int64_t rows,
                                                   int64_t depth, uint16_t* out) {
  const int64_t full_pairs = rows / 2;
  for (int64_t q = 0; q < full_pairs; ++q) {
    _mm512_storeu_si512(out + q * 2 * kPanelColumns,
                        interleave_rows(src + 2 * q * row_stride, src + (2 * q + 1) * row_stride));
  }
  std::memset(out + full_pairs * 2 * kPanelColumns, 0, size_t(depth - 2 * full_pairs) * kPanelColumns * 2);
  if (rows % 2 == 1) {
    const uint16_t* last = src + (rows - 1) * row_stride;
    for (int64_t n = 0; n < kPanelColumns; ++n) out[full_pairs * 2 * kPanelColumns + 2 * n] = last[n];
  }
}

LAMINA_AVX512F_TARGET void avx512_pack_b_from_columns(const uint16_t* src, int64_t column_stride, int64_t rows,
                                                      int64_t depth, uint16_t* out) {
  // Word q of column n (k = 2q, 2q + 1) goes to out word q * 16 + n: a 32-bit transpose.
  const int64_t full_blocks = rows / 32;
  for (int64_t block = 0; block < full_blocks; ++block) {
    __m512i words[16];
    for (int n = 0; n < 16; ++n) words[n] = _mm512_loadu_si512(src + n * column_stride + block * 32);
    transpose_16x16(words);
    for (int q = 0; q < 16; ++q) _mm512_storeu_si512(out + (block * 16 + q) * 2 * kPanelColumns, words[q]);
  }
  const int64_t done = full_blocks * 32;
  std::memset(out + done * kPanelColumns, 0, size_t(depth - done) * kPanelColumns * 2);
  for (int64_t n = 0; n < kPanelColumns; ++n)
    for (int64_t k = done; k < rows; ++k)
      out[(k >> 1) * 2 * kPanelColumns + 2 * n + (k & 1)] = src[n * column_stride + k];
}

LAMINA_AVX512F_TARGET void avx512_pack_a_from_columns(const uint16_t* src, int64_t k_stride, int64_t rows,
                                                      int64_t valid_k, int64_t depth, uint16_t* out) {
  const int64_t full_k = valid_k / 32 * 32, full_rows = rows / 16 * 16;
  for (int64_t k = 0; k < full_k; k += 32) {
    for (int64_t i = 0; i < full_rows; i += 16) {
      // Word q: (A[i.., k + 2q], A[i.., k + 2q + 1]) for 16 rows; transposed, row i holds its
      // 16 pairs, the 32 bf16 at out[i * depth + k].
      __m512i words[16];
      for (int q = 0; q < 16; ++q)
        words[q] = interleave_rows(src + (k + 2 * q) * k_stride + i, src + (k + 2 * q + 1) * k_stride + i);
      transpose_16x16(words);
      for (int r = 0; r < 16; ++r) _mm512_storeu_si512(out + (i + r) * depth + k, words[r]);
    }
    for (int64_t kk = k; kk < k + 32; ++kk)
      for (int64_t i = full_rows; i < rows; ++i) out[i * depth + kk] = src[kk * k_stride + i];
  }
  for (int64_t k = full_k; k < valid_k; ++k)
    for (int64_t i = 0; i < rows; ++i) out[i * depth + k] = src[k * k_stride + i];
}

// Tiles 0-3 accumulate C, 4-5 hold two 16-row slices of A, 6-7 two panels of B; every tile is
// 16 rows of 64 bytes.
LAMINA_AMX_TARGET void amx_configure() {
  TileConfig config;
  config.palette = 1;
  for (int tile = 0; tile < 8; ++tile) {
    config.bytes_per_row[tile] = 64;
    config.rows[tile] = 16;
  }
  // GCC 12's _tile_loadconfig tells the compiler it reads only 8 bytes of the configuration, so
  // the stores to the rest could be dropped; this asm reads the whole structure.
  __asm__ volatile("ldtilecfg %0" ::"m"(config));
}

LAMINA_AMX_TARGET void amx_release() { _tile_release(); }

LAMINA_AMX_TARGET void amx_kernel(const uint16_t* a, int64_t a_row_elements, const uint16_t* b_panel0,
                                  const uint16_t* b_panel1, float* const c_tiles[4], const int64_t c_stride_bytes[4],
                                  int64_t depth, bool load_c) {
  if (load_c) {
    _tile_loadd(0, c_tiles[0], c_stride_bytes[0]);
    _tile_loadd(1, c_tiles[1], c_stride_bytes[1]);
    _tile_loadd(2, c_tiles[2], c_stride_bytes[2]);
    _tile_loadd(3, c_tiles[3], c_stride_bytes[3]);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t a_stride_bytes = a_row_elements * 2;
  const uint16_t* a_lower = a + 16 * a_row_elements;
  for (int64_t k = 0; k < depth; k += kDepthStep) {
    _tile_loadd(4, a + k, a_stride_bytes);
    _tile_loadd(6, b_panel0 + k * kPanelColumns, 64);
    _tile_loadd(7, b_panel1 + k * kPanelColumns, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a_lower + k, a_stride_bytes);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c_tiles[0], c_stride_bytes[0]);
  _tile_stored(1, c_tiles[1], c_stride_bytes[1]);
  _tile_stored(2, c_tiles[2], c_stride_bytes[2]);
  _tile_stored(3, c_tiles[3], c_stride_bytes[3]);
}

#else  // not x86-64: gemm_bf16.cpp never selects these paths.

void avx512_kernel(int, const uint16_t*, int64_t, const uint16_t*, const uint16_t*, float*, int64_t, int, int64_t,
                   bool) {
  throw std::logic_error("avx512_kernel: not an x86-64 build");
}
void avx512_pack_b_from_rows(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) {
  throw std::logic_error("avx512_pack_b_from_rows: not an x86-64 build");
}
void avx512_pack_b_from_columns(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*) {
  throw std::logic_error("avx512_pack_b_from_columns: not an x86-64 build");
}
void avx512_pack_a_from_columns(const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*) {
  throw std::logic_error("avx512_pack_a_from_columns: not an x86-64 build");
}
void amx_configure() { throw std::logic_error("amx_configure: not an x86-64 build"); }
void amx_release() {}
void amx_kernel(const uint16_t*, int64_t, const uint16_t*, const uint16_t*, float* const[4], const int64_t[4], int64_t,
                bool) {
  throw std::logic_error("amx_kernel: not an x86-64 build");
}

#endif

}  // namespace lamina::ops::cpu::gemm_bf16_detail
