// The AVX-512 panel products of the 4-bit weights (declared in ops/cpu/quant4_panels.h).
//
// Both products are C [rows, columns] = A [rows, depth] @ B [depth, columns] with B a view of W:
//   matmul_4bit:            A = x,    B = W^T: depth = in_features,  columns = out_features
//   matmul_4bit_input_grad: A = grad, B = W:   depth = out_features, columns = in_features
// C is computed in panels of 32 columns. For each piece of at most kDepthPiece along the depth,
// a panel of B is decoded once into a [depth][32] buffer (for W^T through a 16 x 16 register
// transpose of decoded rows; for W the 32 values are consecutive in a weight row), which stays
// in L1 while the kernel runs down every 14-row block of A: 28 accumulators (14 rows x 2
// registers of 16 columns), each A value broadcast once and multiplied into both. Eigen's GEMM
// would copy the decoded tile once more into its own packed layout, and kept only about 0.95x of
// its speed on the dequantized weight; here decoding is the only copy.
//
// Accuracy and determinism: each output element sums its products in order within a depth piece
// of kDepthPiece (256) and adds each piece's sum to C in order, the piece size ops::matmul uses
// for f32, so the result does not depend on the thread count (threads split panels and row
// blocks, never the depth) and errs no more than the dense product.

// GCC 12 reports its own AVX-512 intrinsic headers as -Wmaybe-uninitialized, the known false
// positive CMakeLists.txt silences for ops/cpu/matmul.cpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "ops/cpu/quant4_panels.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "tensor/error.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu::quant4_detail {

#if defined(__AVX512F__)
namespace {

constexpr int kBlockRows = 14;         // rows of A (and C) per kernel call: 28 of the 32 registers
constexpr int64_t kPanelWidth = 32;    // columns of B (and C) per panel: two registers
constexpr int64_t kDepthPiece = 256;   // depth per decoded panel (32 KiB, L1), and per partial sum
constexpr int64_t kPrefetchSteps = 64;  // how far ahead the kernel prefetches A (1/4 of a piece)

// c[Rows, 32] = (accumulate ? c : 0) + a[Rows, depth] @ b[depth, 32], a packed [depth][14] (see
// pack_row_block), only the columns in the two masks stored (a partial last panel).
template <int Rows>
void panel_kernel(const float* a, const float* b, int64_t depth, float* c, int64_t c_stride,
                  __mmask16 low_mask, __mmask16 high_mask, bool accumulate, const float* next_c, int64_t next_rows) {
  // The next call's C rows are lines far apart that no hardware prefetcher predicts; asking for
  // them now hides their latency behind this call's multiplies (C often lives in L3).
  for (int64_t r = 0; r < next_rows; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(next_c + r * c_stride), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(next_c + r * c_stride + 16), _MM_HINT_T0);
  }
  __m512 low[Rows], high[Rows];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) low[r] = high[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < depth; ++k) {
    // A streams from L2: each line is asked for kPrefetchSteps steps before its use.
    _mm_prefetch(reinterpret_cast<const char*>(a + (k + kPrefetchSteps) * kBlockRows), _MM_HINT_T0);
    const __m512 b_low = _mm512_load_ps(b + kPanelWidth * k), b_high = _mm512_load_ps(b + kPanelWidth * k + 16);
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      const __m512 a_value = _mm512_set1_ps(a[k * kBlockRows + r]);
      low[r] = _mm512_fmadd_ps(a_value, b_low, low[r]);
      high[r] = _mm512_fmadd_ps(a_value, b_high, high[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r) {
    float* row = c + r * c_stride;
    if (accumulate) {
      low[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(low_mask, row), low[r]);
      high[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(high_mask, row + 16), high[r]);
    }
    _mm512_mask_storeu_ps(row, low_mask, low[r]);
    _mm512_mask_storeu_ps(row + 16, high_mask, high[r]);
  }
}

using PanelKernel = void (*)(const float*, const float*, int64_t, float*, int64_t, __mmask16, __mmask16,
                             bool, const float*, int64_t);

// The kernel for a block of `rows` rows (the full 14, or the last block's remainder).
PanelKernel kernel_for(int64_t rows) {
  static constexpr PanelKernel kernels[kBlockRows] = {
      panel_kernel<1>, panel_kernel<2>,  panel_kernel<3>,  panel_kernel<4>,  panel_kernel<5>,
      panel_kernel<6>, panel_kernel<7>,  panel_kernel<8>,  panel_kernel<9>,  panel_kernel<10>,
      panel_kernel<11>, panel_kernel<12>, panel_kernel<13>, panel_kernel<14>};
  return kernels[rows - 1];
}

// Transposes a 16 x 16 block held in registers: columns[j][i] = rows[i][j].
void transpose16(const __m512 (&rows)[16], __m512 (&columns)[16]) {
  __m512 pairs[16], quads[16];
  // Within each 128-bit lane L: pairs interleave two rows, then quads[4g + j] holds column 4L + j
  // of rows 4g..4g+3.
  for (int i = 0; i < 16; i += 2) {
    pairs[i] = _mm512_unpacklo_ps(rows[i], rows[i + 1]);
    pairs[i + 1] = _mm512_unpackhi_ps(rows[i], rows[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    quads[g] = _mm512_shuffle_ps(pairs[g], pairs[g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    quads[g + 1] = _mm512_shuffle_ps(pairs[g], pairs[g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    quads[g + 2] = _mm512_shuffle_ps(pairs[g + 1], pairs[g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    quads[g + 3] = _mm512_shuffle_ps(pairs[g + 1], pairs[g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // Gather lane L of the four row groups: column 4L + j.
  for (int j = 0; j < 4; ++j) {
    const __m512 even_lanes_01 = _mm512_shuffle_f32x4(quads[j], quads[4 + j], 0x88);  // lanes 0, 2 of groups 0, 1
    const __m512 odd_lanes_01 = _mm512_shuffle_f32x4(quads[j], quads[4 + j], 0xdd);   // lanes 1, 3
    const __m512 even_lanes_23 = _mm512_shuffle_f32x4(quads[8 + j], quads[12 + j], 0x88);
    const __m512 odd_lanes_23 = _mm512_shuffle_f32x4(quads[8 + j], quads[12 + j], 0xdd);
    columns[0 + j] = _mm512_shuffle_f32x4(even_lanes_01, even_lanes_23, 0x88);
    columns[8 + j] = _mm512_shuffle_f32x4(even_lanes_01, even_lanes_23, 0xdd);
    columns[4 + j] = _mm512_shuffle_f32x4(odd_lanes_01, odd_lanes_23, 0x88);
    columns[12 + j] = _mm512_shuffle_f32x4(odd_lanes_01, odd_lanes_23, 0xdd);
  }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i, j < 16.
void transpose16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 rows[16], columns[16];
  for (int i = 0; i < 16; ++i) rows[i] = _mm512_loadu_ps(src + i * src_stride);
  transpose16(rows, columns);
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * dst_stride, columns[j]);
}

// A block of A, packed: dst[k][r] = a[r * a_stride + k] for r < rows (<= 14), k < depth, 0 for
// the rows past `rows`. The kernel then reads one sequential stream that it can prefetch.
void pack_row_block(const float* a, int64_t a_stride, int64_t rows, int64_t depth, float* dst) {
  constexpr __mmask16 kBlockMask = (1u << kBlockRows) - 1;
  int64_t k = 0;
  for (; k + 16 <= depth; k += 16) {
    __m512 loaded[16], columns[16];
    for (int r = 0; r < 16; ++r) loaded[r] = r < rows ? _mm512_loadu_ps(a + r * a_stride + k) : _mm512_setzero_ps();
    transpose16(loaded, columns);
    // Each store writes 14 lanes; the next k's store starts right after them.
    for (int j = 0; j < 16; ++j) _mm512_mask_storeu_ps(dst + (k + j) * kBlockRows, kBlockMask, columns[j]);
  }
  for (; k < depth; ++k)
    for (int64_t r = 0; r < kBlockRows; ++r) dst[k * kBlockRows + r] = r < rows ? a[r * a_stride + k] : 0.0f;
}

// The B panel of matmul_4bit: panel[k][j] = W[first_row + j][first_column + k] for k < depth,
// j < 32 (0 past the last weight row). The rows are decoded into `rows` first ([32][depth]).
void pack_transposed_panel(const WeightView& w, int64_t in_features, int64_t out_features, int64_t first_row,
                           int64_t first_column, int64_t depth, float* rows, float* panel) {
  for (int64_t j = 0; j < kPanelWidth; ++j) {
    const int64_t row = first_row + j;
    if (row < out_features) {
      const int64_t begin = row * in_features + first_column;
      dequantize_range(w, begin, begin + depth, rows + j * depth);
    } else {
      std::memset(rows + j * depth, 0, size_t(depth) * sizeof(float));
    }
  }
  int64_t k = 0;
  for (; k + 16 <= depth; k += 16) {
    transpose16(rows + k, depth, panel + k * kPanelWidth, kPanelWidth);
    transpose16(rows + 16 * depth + k, depth, panel + k * kPanelWidth + 16, kPanelWidth);
  }
  for (; k < depth; ++k)
    for (int64_t j = 0; j < kPanelWidth; ++j) panel[k * kPanelWidth + j] = rows[j * depth + k];
}

// The B panel of matmul_4bit_input_grad: panel[k][j] = W[first_row + k][first_column + j] for
// k < depth, j < 32 (0 past the last weight column).
void pack_panel(const WeightView& w, int64_t in_features, int64_t first_row, int64_t first_column, int64_t depth,
                float* panel) {
  const int64_t width = std::min(kPanelWidth, in_features - first_column);
  const Decoder decoder(w.table);
  for (int64_t k = 0; k < depth; ++k) {
    const int64_t begin = (first_row + k) * in_features + first_column;
    float* dst = panel + k * kPanelWidth;
    if (width == kPanelWidth && (begin & 31) == 0) {
      const Decoded32 values = decoder.decode32(w, begin);
      _mm512_store_ps(dst, values.first);
      _mm512_store_ps(dst + 16, values.second);
    } else {
      dequantize_range(w, begin, begin + width, dst);
      for (int64_t j = width; j < kPanelWidth; ++j) dst[j] = 0.0f;
    }
  }
}

// A float buffer whose data starts on a 64-byte boundary (the kernel's aligned panel loads).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t count) : storage_(size_t(count) + 16) {
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    data_ = storage_.data() + ((64 - address % 64) % 64) / sizeof(float);
  }
  float* data() { return data_; }

 private:
  std::vector<float> storage_;
  float* data_ = nullptr;
};

// C [rows, columns] = A [rows, depth] @ B, B given by pack(panel, first_depth, depth, scratch,
// out) which writes panel `panel`'s [depth][32] slice starting at first_depth.
template <typename PackPanel>
void panel_product(float* c, const float* a, int64_t rows, int64_t depth, int64_t columns, const PackPanel& pack) {
  if (rows == 0 || columns == 0) return;
  if (depth == 0) {
    std::fill(c, c + rows * columns, 0.0f);
    return;
  }
  const int64_t panels = (columns + kPanelWidth - 1) / kPanelWidth;
  const int64_t row_blocks = (rows + kBlockRows - 1) / kBlockRows;
  // Split the rows too when the panels alone would leave threads idle (a narrow C); each work
  // item decodes its panel once per depth piece, so row chunks stay long.
  const int64_t wanted_items = 2 * int64_t(num_threads());
  const int64_t row_chunks = std::clamp<int64_t>((wanted_items + panels - 1) / panels, 1, (row_blocks + 3) / 4);
  const int64_t blocks_per_chunk = (row_blocks + row_chunks - 1) / row_chunks;
  // The slack keeps the kernel's prefetches ahead of A inside the buffer.
  const int64_t packed_size = row_blocks * kBlockRows * std::min(kDepthPiece, depth) + kPrefetchSteps * kBlockRows;
  std::vector<float> packed_rows(static_cast<size_t>(packed_size));
  for (int64_t first_depth = 0; first_depth < depth; first_depth += kDepthPiece) {
    const int64_t piece = std::min(kDepthPiece, depth - first_depth);
    const bool accumulate = first_depth > 0;
    parallel_for(0, row_blocks, 8, [&](int64_t first_block, int64_t end_block) {
      for (int64_t block = first_block; block < end_block; ++block) {
        const int64_t first_row = block * kBlockRows;
        pack_row_block(a + first_row * depth + first_depth, depth, std::min<int64_t>(kBlockRows, rows - first_row),
                       piece, packed_rows.data() + block * kBlockRows * piece);
      }
    });
    parallel_for(0, panels * row_chunks, 1, [&](int64_t first_item, int64_t end_item) {
      AlignedBuffer scratch(kPanelWidth * kDepthPiece), panel_buffer(kPanelWidth * kDepthPiece);
      int64_t packed = -1;
      for (int64_t item = first_item; item < end_item; ++item) {
        const int64_t panel = item / row_chunks, chunk = item % row_chunks;
        if (panel != packed) {
          pack(panel, first_depth, piece, scratch.data(), panel_buffer.data());
          packed = panel;
        }
        const int64_t first_column = panel * kPanelWidth;
        const int64_t width = std::min(kPanelWidth, columns - first_column);
        const auto mask_of = [](int64_t lanes) {
          return lanes >= 16 ? __mmask16(0xffff) : lanes <= 0 ? __mmask16(0) : __mmask16((1u << lanes) - 1);
        };
        const __mmask16 low_mask = mask_of(width), high_mask = mask_of(width - 16);
        const int64_t end_block = std::min(row_blocks, (chunk + 1) * blocks_per_chunk);
        for (int64_t block = chunk * blocks_per_chunk; block < end_block; ++block) {
          const int64_t first_row = block * kBlockRows;
          const int64_t block_rows = std::min<int64_t>(kBlockRows, rows - first_row);
          float* c_block = c + first_row * columns + first_column;
          const int64_t next_rows =
              block + 1 < end_block ? std::min<int64_t>(kBlockRows, rows - first_row - kBlockRows) : 0;
          kernel_for(block_rows)(packed_rows.data() + block * kBlockRows * piece, panel_buffer.data(), piece, c_block,
                                 columns, low_mask, high_mask, accumulate, c_block + kBlockRows * columns, next_rows);
        }
      }
    });
  }
}

}  // namespace

bool panel_products_available() { return true; }

void panel_matmul(float* out, const float* x, int64_t rows, const WeightView& w, int64_t out_features,
                  int64_t in_features) {
  panel_product(out, x, rows, in_features, out_features,
                [&](int64_t panel, int64_t first_depth, int64_t depth, float* scratch, float* buffer) {
                  pack_transposed_panel(w, in_features, out_features, panel * kPanelWidth, first_depth, depth,
                                        scratch, buffer);
                });
}

void panel_input_grad(float* out, const float* grad, int64_t rows, const WeightView& w, int64_t out_features,
                      int64_t in_features) {
  panel_product(out, grad, rows, out_features, in_features,
                [&](int64_t panel, int64_t first_depth, int64_t depth, float*, float* buffer) {
                  pack_panel(w, in_features, first_depth, panel * kPanelWidth, depth, buffer);
                });
}

#else

bool panel_products_available() { return false; }

void panel_matmul(float*, const float*, int64_t, const WeightView&, int64_t, int64_t) {
  throw Error("quant4 panel_matmul: this build has no AVX-512");
}

void panel_input_grad(float*, const float*, int64_t, const WeightView&, int64_t, int64_t) {
  throw Error("quant4 panel_input_grad: this build has no AVX-512");
}

#endif

}  // namespace lamina::ops::cpu::quant4_detail
