// The bf16 GEMM driver: path selection, packing, blocking and threads (the micro-kernels are
// in gemm_bf16_kernels.cpp, the packed layouts described in gemm_bf16_kernels.h).
//
// Blocking: B is packed whole, once per product, into panels (in parallel). C is cut into
// blocks of rows x columns, one parallel work item each; a block walks K in slices of
// kDepthBlock, packs the matching slice of its rows of A (the copy also absorbs any layout of
// A), and runs the micro-kernel over it for each pair of B panels, so that pair (kDepthBlock x 32
// bf16: 32 KiB) stays in L1 while the A slice (at most 64 x kDepthBlock bf16) stays in L2. C is
// read and written once per K slice (a bf16 C: an f32 scratch block is, and C is written once,
// rounded, when the block's K loop ends). The sizes were picked on the twelve products of the
// `lamina bench train` linear layers (K = 256 to 8192) with AMX on one Sapphire Rapids thread
// (thread CPU time, as the machine was loaded): K slices of 512 and blocks of 512 columns took
// about a sixth less time in all than 256 and 256; 64, 128 or 256 rows were within the noise.
#include "ops/cpu/gemm_bf16.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_bf16_kernels.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

using namespace gemm_bf16_detail;

constexpr int64_t kDepthBlock = 512;         // K per packed slice of A (a multiple of kDepthStep)
constexpr int64_t kColumnBlock = 512;        // columns of C per work item (a multiple of 32)
constexpr int64_t kAmxRowBlock = 64;         // rows of C per work item: two 32-row AMX kernels
constexpr int64_t kAvx512RowBlock = 4 * kAvx512KernelRows;
// Below this many multiply-adds a product finishes faster than the threads can be woken.
constexpr int64_t kMinParallelWork = int64_t(1) << 18;

int64_t round_up(int64_t value, int64_t step) { return (value + step - 1) / step * step; }
int64_t ceil_div(int64_t value, int64_t step) { return (value + step - 1) / step; }

const uint16_t* bits_of(const MatrixSpan& m) { return static_cast<const uint16_t*>(m.data); }

// Runs body over [0, count) on the threads, or inline when the product is too small to share.
template <typename Body>
void for_items(int64_t count, bool parallel, const Body& body) {
  if (parallel && count > 1) {
    parallel_for(0, count, 1, body);
  } else if (count > 0) {
    body(0, count);
  }
}

// One panel of packed B: columns [16 panel, 16 panel + 16) of b, `depth` rows (zero beyond b).
// Full panels of a row- or column-major b take the vector packers.
void pack_b_panel(const MatrixSpan& b, int64_t panel, int64_t depth, uint16_t* out) {
  const int64_t first = panel * kPanelColumns;
  const int64_t columns = std::clamp<int64_t>(b.cols - first, 0, kPanelColumns);
  const uint16_t* src = bits_of(b) + first * b.col_stride;
  if (columns == kPanelColumns && b.col_stride == 1) {
    return avx512_pack_b_from_rows(src, b.row_stride, b.rows, depth, out);
  }
  if (columns == kPanelColumns && b.row_stride == 1) {
    return avx512_pack_b_from_columns(src, b.col_stride, b.rows, depth, out);
  }
  std::memset(out, 0, size_t(depth * kPanelColumns) * sizeof(uint16_t));
  // Row k lands at out[(k / 2) * 32 + 2 n + k % 2].
  for (int64_t k = 0; k < b.rows; ++k) {
    const uint16_t* row = src + k * b.row_stride;
    uint16_t* destination = out + (k >> 1) * 2 * kPanelColumns + (k & 1);
    for (int64_t n = 0; n < columns; ++n) destination[2 * n] = row[n * b.col_stride];
  }
}

// Rows [first_row, first_row + rows) and K [first_k, first_k + depth) of a, row-major with
// `depth` per row, zero beyond a; rows up to padded_rows are zero.
void pack_a_block(const MatrixSpan& a, int64_t first_row, int64_t rows, int64_t padded_rows, int64_t first_k,
                  int64_t depth, uint16_t* out) {
  const int64_t valid_k = std::clamp<int64_t>(a.cols - first_k, 0, depth);
  const uint16_t* src = bits_of(a) + first_row * a.row_stride + first_k * a.col_stride;
  if (a.col_stride == 1) {
    for (int64_t i = 0; i < rows; ++i) {
      std::memcpy(out + i * depth, src + i * a.row_stride, size_t(valid_k) * sizeof(uint16_t));
      std::fill(out + i * depth + valid_k, out + (i + 1) * depth, uint16_t(0));
    }
  } else {
    if (valid_k < depth) std::fill(out, out + rows * depth, uint16_t(0));
    if (a.row_stride == 1) {
      avx512_pack_a_from_columns(src, a.col_stride, rows, valid_k, depth, out);  // a transposed view
    } else {
      for (int64_t k = 0; k < valid_k; ++k)
        for (int64_t i = 0; i < rows; ++i) out[i * depth + k] = src[k * a.col_stride + i * a.row_stride];
    }
  }
  std::fill(out + rows * depth, out + padded_rows * depth, uint16_t(0));
}

// Per-thread scratch, grown on demand and kept for the next product.
struct ThreadScratch {
  std::unique_ptr<uint16_t[]> a_block;
  int64_t a_capacity = 0;
  alignas(64) float edge_tiles[4][16 * 16];

  std::unique_ptr<float[]> c_block;  // a block of C in f32 when C itself is bf16
  int64_t c_capacity = 0;

  uint16_t* a_buffer(int64_t elements) {
    if (elements > a_capacity) {
      a_block.reset(new uint16_t[size_t(elements)]);
      a_capacity = elements;
    }
    return a_block.get();
  }
  float* c_buffer(int64_t elements) {
    if (elements > c_capacity) {
      c_block.reset(new float[size_t(elements)]);
      c_capacity = elements;
    }
    return c_block.get();
  }
};

// Rows [first_row, first_row + rows) x columns [first_column, first_column + columns) of a bf16 C
// (bits, row-major with col_stride 1) to or from an f32 block with `columns` floats per row.
void widen_block(const MatrixSpan& c, int64_t first_row, int64_t first_column, int64_t rows, int64_t columns,
                 float* block) {
  const uint16_t* bits = static_cast<const uint16_t*>(c.data);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < columns; ++j)
      block[i * columns + j] = bf16::from_bits(bits[(first_row + i) * c.row_stride + first_column + j]);
}
void round_block(const float* block, int64_t rows, int64_t columns, const MatrixSpan& c, int64_t first_row,
                 int64_t first_column) {
  uint16_t* bits = static_cast<uint16_t*>(c.data);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < columns; ++j)
      bits[(first_row + i) * c.row_stride + first_column + j] = bf16(block[i * columns + j]).bits;
}

ThreadScratch& thread_scratch() {
  thread_local ThreadScratch scratch;
  return scratch;
}

// One 32x32 AMX step at rows [row, row + 32) and columns [column, column + 32) of C; a tile
// that reaches past C goes through a scratch tile, of which only the part inside C is copied.
void amx_step(const MatrixSpan& c, int64_t row, int64_t column, const uint16_t* a, int64_t a_row_elements,
              const uint16_t* b_panel0, const uint16_t* b_panel1, int64_t depth, bool load_c, ThreadScratch& scratch) {
  float* tiles[4];
  int64_t strides[4], valid_rows[4], valid_columns[4];
  bool through_scratch[4];
  float* c_data = static_cast<float*>(c.data);
  const auto corner = [&](int t) { return c_data + (row + 16 * (t / 2)) * c.row_stride + column + 16 * (t % 2); };
  for (int t = 0; t < 4; ++t) {
    valid_rows[t] = std::clamp<int64_t>(c.rows - (row + 16 * (t / 2)), 0, 16);
    valid_columns[t] = std::clamp<int64_t>(c.cols - (column + 16 * (t % 2)), 0, 16);
    through_scratch[t] = valid_rows[t] < 16 || valid_columns[t] < 16;
    if (!through_scratch[t]) {
      tiles[t] = corner(t);
      strides[t] = c.row_stride * int64_t(sizeof(float));
      continue;
    }
    tiles[t] = scratch.edge_tiles[t];
    strides[t] = 16 * int64_t(sizeof(float));
    std::fill(tiles[t], tiles[t] + 16 * 16, 0.0f);
    if (load_c) {
      for (int64_t i = 0; i < valid_rows[t]; ++i) {
        const float* source = corner(t) + i * c.row_stride;
        std::copy(source, source + valid_columns[t], tiles[t] + 16 * i);
      }
    }
  }
  amx_kernel(a, a_row_elements, b_panel0, b_panel1, tiles, strides, depth, load_c);
  for (int t = 0; t < 4; ++t) {
    if (!through_scratch[t]) continue;
    for (int64_t i = 0; i < valid_rows[t]; ++i)
      std::copy(tiles[t] + 16 * i, tiles[t] + 16 * i + valid_columns[t], corner(t) + i * c.row_stride);
  }
}

// A product on the AVX-512 BF16 or AMX kernels (K > 0, C not empty). A bf16 C is computed block
// by block in an f32 scratch block and rounded into C once its K loop ends (while the block is in
// cache), instead of an f32 C written whole and rounded by a second pass over memory.
void gemm_packed(GemmBf16Path path, const GemmTask& task, bool parallel, bool bf16_output) {
  const MatrixSpan &a = task.a, &b = task.b, &c = task.c;
  const bool amx = path == GemmBf16Path::amx;
  const int64_t depth = round_up(a.cols, kDepthStep);
  const int64_t panels = 2 * ceil_div(c.cols, 2 * kPanelColumns);
  const int64_t panel_elements = depth * kPanelColumns;
  std::unique_ptr<uint16_t[]> packed_b(new uint16_t[size_t(panels * panel_elements)]);
  for_items(panels, parallel, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) pack_b_panel(b, p, depth, packed_b.get() + p * panel_elements);
  });

  const int64_t row_block = amx ? kAmxRowBlock : kAvx512RowBlock;
  const int64_t row_blocks = ceil_div(c.rows, row_block), column_blocks = ceil_div(c.cols, kColumnBlock);
  for_items(row_blocks * column_blocks, parallel, [&](int64_t begin, int64_t end) {
    ThreadScratch& scratch = thread_scratch();
    uint16_t* a_block = scratch.a_buffer(round_up(row_block, 32) * kDepthBlock);
    if (amx) amx_configure();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t first_row = (item / column_blocks) * row_block;
      const int64_t first_column = (item % column_blocks) * kColumnBlock;
      const int64_t rows = std::min(row_block, c.rows - first_row);
      const int64_t columns = std::min(kColumnBlock, c.cols - first_column);
      const int64_t padded_rows = amx ? round_up(rows, 32) : rows;
      // Where this item accumulates: C itself, or (bf16 C) the scratch block at its origin.
      MatrixSpan target = c;
      int64_t target_row = first_row, target_column = first_column;
      if (bf16_output) {
        target = MatrixSpan{scratch.c_buffer(rows * columns), rows, columns, columns, 1};
        target_row = target_column = 0;
        if (task.accumulate) widen_block(c, first_row, first_column, rows, columns, static_cast<float*>(target.data));
      }
      for (int64_t k = 0; k < depth; k += kDepthBlock) {
        const int64_t slice = std::min(kDepthBlock, depth - k);
        const bool load_c = task.accumulate || k > 0;
        pack_a_block(a, first_row, rows, padded_rows, k, slice, a_block);
        for (int64_t j = 0; j < columns; j += 2 * kPanelColumns) {
          const int64_t panel = (first_column + j) / kPanelColumns;
          const uint16_t* b_panel0 = packed_b.get() + panel * panel_elements + k * kPanelColumns;
          const uint16_t* b_panel1 = b_panel0 + panel_elements;
          if (amx) {
            for (int64_t i = 0; i < rows; i += 32)
              amx_step(target, target_row + i, target_column + j, a_block + i * slice, slice, b_panel0, b_panel1,
                       slice, load_c, scratch);
          } else {
            const int width = int(std::min<int64_t>(2 * kPanelColumns, columns - j));
            float* c_corner =
                static_cast<float*>(target.data) + target_row * target.row_stride + target_column + j;
            for (int64_t i = 0; i < rows; i += kAvx512KernelRows)
              avx512_kernel(int(std::min<int64_t>(kAvx512KernelRows, rows - i)), a_block + i * slice, slice,
                            b_panel0, b_panel1, c_corner + i * target.row_stride, target.row_stride, width, slice,
                            load_c);
          }
        }
      }
      if (bf16_output) round_block(static_cast<const float*>(target.data), rows, columns, c, first_row, first_column);
    }
    if (amx) amx_release();
  });
}

// The reference: B widened to f32 once, then each row of C summed over k in order (k outer, j
// inner keeps every output's order k = 0, 1, ... while the inner loop vectorizes). Each product
// of two bf16 values is exact in f32, so fused or separate multiply-adds give the same sums.
void gemm_reference(const GemmTask& task, bool parallel) {
  const MatrixSpan &a = task.a, &b = task.b, &c = task.c;
  const int64_t depth = a.cols, width = c.cols;
  std::unique_ptr<float[]> b_wide(new float[size_t(depth * width)]);
  for_items(depth, parallel, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      for (int64_t n = 0; n < width; ++n)
        b_wide[size_t(k * width + n)] = bf16::from_bits(bits_of(b)[k * b.row_stride + n * b.col_stride]);
  });
  for_items(c.rows, parallel, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* c_row = static_cast<float*>(c.data) + i * c.row_stride;
      if (!task.accumulate) std::fill(c_row, c_row + width, 0.0f);
      for (int64_t k = 0; k < depth; ++k) {
        const float a_value = bf16::from_bits(bits_of(a)[i * a.row_stride + k * a.col_stride]);
        const float* b_row = b_wide.get() + k * width;
        for (int64_t n = 0; n < width; ++n) c_row[n] += a_value * b_row[n];
      }
    }
  });
}

// The reference into a bf16 C: the f32 result in a scratch matrix (C widened into it when
// accumulating), rounded into C.
void gemm_reference_to_bf16(const GemmTask& task, bool parallel) {
  const MatrixSpan& c = task.c;
  std::unique_ptr<float[]> wide(new float[size_t(c.rows * c.cols)]);
  if (task.accumulate) widen_block(c, 0, 0, c.rows, c.cols, wide.get());
  GemmTask f32_task = task;
  f32_task.c = MatrixSpan{wide.get(), c.rows, c.cols, c.cols, 1};
  gemm_reference(f32_task, parallel);
  round_block(wide.get(), c.rows, c.cols, c, 0, 0);
}

void gemm_one(GemmBf16Path path, const GemmTask& task, bool parallel, bool bf16_output) {
  const MatrixSpan& c = task.c;
  if (c.rows == 0 || c.cols == 0) return;
  if (task.a.cols == 0) {
    if (task.accumulate) return;
    for (int64_t i = 0; i < c.rows; ++i) {
      if (bf16_output) {
        uint16_t* c_row = static_cast<uint16_t*>(c.data) + i * c.row_stride;
        std::fill(c_row, c_row + c.cols, bf16(0.0f).bits);
      } else {
        float* c_row = static_cast<float*>(c.data) + i * c.row_stride;
        std::fill(c_row, c_row + c.cols, 0.0f);
      }
    }
    return;
  }
  parallel = parallel && c.rows * c.cols * task.a.cols >= kMinParallelWork;
  if (path == GemmBf16Path::reference)
    return bf16_output ? gemm_reference_to_bf16(task, parallel) : gemm_reference(task, parallel);
  gemm_packed(path, task, parallel, bf16_output);
}

}  // namespace

const char* gemm_bf16_path_name(GemmBf16Path path) {
  switch (path) {
    case GemmBf16Path::automatic: return "auto";
    case GemmBf16Path::amx: return "amx";
    case GemmBf16Path::avx512bf16: return "avx512bf16";
    case GemmBf16Path::reference: return "reference";
  }
  return "?";
}

GemmBf16Path gemm_bf16_path_from_name(const std::string& name, const std::string& what) {
  for (GemmBf16Path path :
       {GemmBf16Path::automatic, GemmBf16Path::amx, GemmBf16Path::avx512bf16, GemmBf16Path::reference}) {
    if (name == gemm_bf16_path_name(path)) return path;
  }
  throw Error(str_cat(what, ": unknown bf16 GEMM path '", name, "' (expected amx, avx512bf16, reference or auto)"));
}

// vdpbf16ps does two multiply-adds per f32 lane, but Intel's cores without AMX issue it at half
// the rate of an f32 FMA, so that widening to f32 for Eigen wins there: on Sapphire Rapids with
// AMX off (one thread, idle) it gave 110 GFLOP/s against 219 for FMA, and the AVX-512 BF16 path
// ran at 97 against Eigen's 176 (Cooper Lake, the other such core, has the same one port for
// it). AMD's cores issue it as fast as FMA: Zen 4, and Zen 5 at 437 GFLOP/s against 250 (one
// thread, `lamina bench ops --filter cpu_peak`). The choice is made from the vendor, not timed
// at start-up as it once was: a 2 ms race lost by bf16 in 5 of 100 processes on an idle Zen 5
// (17 under load), so the same command trained in bf16 or in f32 by chance.
bool avx512bf16_at_full_rate() { return cpu_features().amd; }

bool gemm_bf16_has_fast_path() {
  if (const char* variable = std::getenv("LAMINA_CPU_GEMM"); variable != nullptr && *variable != '\0') {
    if (gemm_bf16_path_from_name(variable, "LAMINA_CPU_GEMM") != GemmBf16Path::automatic) return true;
  }
  if (gemm_bf16_path_available(GemmBf16Path::amx)) return true;
  return gemm_bf16_path_available(GemmBf16Path::avx512bf16) && avx512bf16_at_full_rate();
}

bool gemm_bf16_path_available(GemmBf16Path path) {
  switch (path) {
    case GemmBf16Path::amx: return cpu_features().amx_bf16 && cpu_features().avx512f;  // AVX-512F packs
    case GemmBf16Path::avx512bf16: return cpu_features().avx512bf16;
    default: return true;
  }
}

GemmBf16Path gemm_bf16_resolve(GemmBf16Path requested) {
  std::string source = "gemm_bf16";
  if (requested == GemmBf16Path::automatic) {
    if (const char* variable = std::getenv("LAMINA_CPU_GEMM"); variable != nullptr && *variable != '\0') {
      requested = gemm_bf16_path_from_name(variable, "LAMINA_CPU_GEMM");
      source = "LAMINA_CPU_GEMM";
    }
  }
  if (requested == GemmBf16Path::automatic) {
    if (cpu_features().amx_bf16) return GemmBf16Path::amx;
    if (cpu_features().avx512bf16) return GemmBf16Path::avx512bf16;
    return GemmBf16Path::reference;
  }
  if (!gemm_bf16_path_available(requested)) {
    throw Error(str_cat(source, ": the bf16 GEMM path '", gemm_bf16_path_name(requested), "' needs ",
                        requested == GemmBf16Path::amx ? "AMX-BF16 (with the tile state granted by the OS)"
                                                       : "AVX-512 BF16",
                        ", which this CPU lacks (available: ",
                        cpu_features().amx_bf16 ? "amx, " : "", cpu_features().avx512bf16 ? "avx512bf16, " : "",
                        "reference)"));
  }
  return requested;
}

void gemm_bf16_batch(const std::vector<GemmTask>& tasks, GemmBf16Path path, DType c_dtype) {
  LAMINA_CHECK(c_dtype == DType::f32 || c_dtype == DType::bf16, "gemm_bf16: c must be f32 or bf16, got ",
               dtype_name(c_dtype));
  const bool bf16_output = c_dtype == DType::bf16;
  const GemmBf16Path resolved = gemm_bf16_resolve(path);
  for (const GemmTask& task : tasks) {
    LAMINA_CHECK(task.a.cols == task.b.rows && task.c.rows == task.a.rows && task.c.cols == task.b.cols,
                 "gemm_bf16: shapes do not chain: a [", task.a.rows, ", ", task.a.cols, "], b [", task.b.rows, ", ",
                 task.b.cols, "], c [", task.c.rows, ", ", task.c.cols, "]");
    LAMINA_CHECK(task.c.col_stride == 1 || task.c.cols <= 1, "gemm_bf16: c must be row-major (col_stride 1), got ",
                 task.c.col_stride);
  }
  if (tasks.size() > 1 && int64_t(tasks.size()) >= num_threads()) {
    parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) gemm_one(resolved, tasks[size_t(t)], false, bf16_output);
    });
    return;
  }
  for (const GemmTask& task : tasks) gemm_one(resolved, task, true, bf16_output);
}

}  // namespace lamina::ops::cpu
