// The f32 GEMM driver: path selection, packing, blocking and threads (the micro-kernels are in
// gemm_f32_kernels.cpp, the packed layouts described in gemm_f32_kernels.h).
//
// Blocking: K is cut into slices of 256 (the last shorter; they alone decide each output's
// summation order, so they depend on K only). For each slice, that slice of B is packed into
// panels of 32 (AVX-512) or 16 (AVX2) columns, in parallel, then the work items run over it:
// blocks of about 96 rows of C (a multiple of the thread count of them), each over all the
// columns (or, when there are too few row blocks for the threads, over a group of them), taken
// by the threads as they free up. An item packs its rows of A for the slice into micro-panels
// (a row-major A copied row by row, any other layout transposed into K-major order) and runs
// each micro-panel (12 x 256 floats: 12 KiB, held in L1) across 512 columns of packed B at a
// time (256 x 512 floats: 512 KiB, held in L2 for the item's micro-panels). Packing B slice by slice rather than whole (as the bf16
// GEMM does) made the weight gradient's products (K = 1024 tokens) 10-15% faster on Sapphire
// Rapids: the packed slice is read back from L2 instead of memory.
#include "ops/cpu/gemm_f32.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_f32_kernels.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

using namespace gemm_f32_detail;

constexpr int64_t kColumnBlock = 512;    // columns whose packed B slice (256 x 512 floats) stays in L2
constexpr int64_t kRowBlockTarget = 96;  // rows of C per work item, at most about
constexpr int64_t kItemsPerThread = 4;   // work items wanted per thread, for balance
// Below this many multiply-adds a product finishes faster than the threads can be woken.
constexpr int64_t kMinParallelWork = int64_t(1) << 18;

int64_t round_up(int64_t value, int64_t step) { return (value + step - 1) / step * step; }
int64_t ceil_div(int64_t value, int64_t step) { return (value + step - 1) / step; }

// The geometry of a kernel path.
struct KernelPath {
  int rows;     // rows of C per micro-kernel
  int columns;  // columns per packed B panel and micro-kernel
  void (*kernel)(int, const float*, bool, const float*, int64_t, float*, int64_t, int, bool);
};

KernelPath kernel_path(GemmF32Path path) {
  if (path == GemmF32Path::avx512) return {kAvx512KernelRows, kAvx512PanelColumns, avx512_kernel};
  return {kAvx2KernelRows, kAvx2PanelColumns, avx2_kernel};
}

// 64-byte aligned float storage, so that packed rows start on cache lines.
struct AlignedFree {
  void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;
AlignedFloats aligned_floats(int64_t count) {
  return AlignedFloats(static_cast<float*>(::operator new[](size_t(count) * sizeof(float), std::align_val_t(64))));
}

const float* floats_of(const MatrixSpan& m) { return static_cast<const float*>(m.data); }

// Whether the packers may use AVX-512F (set_plain_packing turns it off for tests).
std::atomic<bool> plain_packing{false};
bool vector_packing() { return cpu_features().avx512f && !plain_packing.load(std::memory_order_relaxed); }

// Runs body(item) for every item in [0, count): on the threads, each taking the next item not
// yet taken (so a thread that another process delays takes fewer), or inline when the product
// is too small to share. Which thread computes a block never changes its sums.
template <typename Body>
void for_items(int64_t count, bool parallel, const Body& body) {
  if (!parallel || count <= 1) {
    for (int64_t item = 0; item < count; ++item) body(item);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(0, std::min<int64_t>(count, num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t item = next.fetch_add(1); item < count; item = next.fetch_add(1)) body(item);
  });
}

// Panels [first_panel, first_panel + panel_count) of packed b: panel p holds columns
// [width p, width p + width), row k at packed + p * depth * width + k * width, zero past b.
void pack_b_panels(const MatrixSpan& b, int64_t first_panel, int64_t panel_count, int64_t width, float* packed) {
  const int64_t depth = b.rows, panel_stride = depth * width;
  const int64_t first = first_panel * width;
  const int64_t columns = std::min(panel_count * width, b.cols - first);
  const float* src = floats_of(b) + first * b.col_stride;
  float* out = packed + first_panel * panel_stride;
  const bool row_major = b.col_stride == 1 || columns == 1;
  if (row_major && vector_packing()) {
    return avx512_pack_b_rows(src, b.row_stride, columns, depth, int(width), panel_stride, out);
  }
  for (int64_t p = 0; p < panel_count; ++p) {
    const int64_t panel_columns = std::min(width, columns - p * width);
    const float* panel_src = src + p * width * b.col_stride;
    float* panel = out + p * panel_stride;
    if (panel_columns < width) {
      for (int64_t k = 0; k < depth; ++k) std::fill(panel + k * width + panel_columns, panel + (k + 1) * width, 0.0f);
    }
    if (row_major) {
      for (int64_t k = 0; k < depth; ++k)
        std::memcpy(panel + k * width, panel_src + k * b.row_stride, size_t(panel_columns) * sizeof(float));
    } else if (b.row_stride == 1 && vector_packing()) {
      // A transposed view (column n contiguous in K), 16 columns at a time.
      for (int64_t n = 0; n < width; n += 16) {
        const int lines = int(std::clamp<int64_t>(panel_columns - n, 0, 16));
        avx512_transpose(lines > 0 ? panel_src + n * b.col_stride : panel_src, b.col_stride, lines, depth, panel + n,
                         width, 16);
      }
    } else if (b.row_stride == 1) {
      // The same without AVX-512: read each column in order, in chunks of K that keep the
      // written rows in L1.
      constexpr int64_t kChunk = 64;
      for (int64_t k0 = 0; k0 < depth; k0 += kChunk) {
        const int64_t k1 = std::min(depth, k0 + kChunk);
        for (int64_t n = 0; n < panel_columns; ++n) {
          const float* column = panel_src + n * b.col_stride;
          for (int64_t k = k0; k < k1; ++k) panel[k * width + n] = column[k];
        }
      }
    } else {
      for (int64_t k = 0; k < depth; ++k)
        for (int64_t n = 0; n < panel_columns; ++n)
          panel[k * width + n] = panel_src[k * b.row_stride + n * b.col_stride];
    }
  }
}

// Rows [first_row, first_row + rows) and K [first_k, first_k + depth) of a into micro-panels of
// `panel_rows` rows (depth <= kDepthSlice): row-pitched when a is row-major (a copy of each row,
// row i of the block at out + i * kPackedRowPitch), else K-major (micro-panel p at
// out + p * panel_rows * depth, A[r, k] at k * panel_rows + r). Returns whether row-pitched.
// The rows a last, short micro-panel lacks are left unwritten (its kernel never reads them).
bool pack_a_block(const MatrixSpan& a, int64_t first_row, int64_t rows, int64_t first_k, int64_t depth,
                  int64_t panel_rows, float* out) {
  const float* block = floats_of(a) + first_row * a.row_stride + first_k * a.col_stride;
  const bool k_major = a.row_stride == 1 || rows == 1;  // a transposed view: each k's rows contiguous
  if (!k_major && a.col_stride == 1) {
    // Each row is a separate 1 KiB run of a larger matrix: ask for the one 4 rows ahead while
    // copying this one (the hardware prefetcher does not cross to the next row soon enough:
    // without this the copy took 9% of the input gradient's product on Zen 5).
    constexpr int64_t kAhead = 4;
    for (int64_t i = 0; i < rows; ++i) {
      if (i + kAhead < rows) {
        const char* ahead = reinterpret_cast<const char*>(block + (i + kAhead) * a.row_stride);
        for (int64_t byte = 0; byte < depth * int64_t(sizeof(float)); byte += 64) __builtin_prefetch(ahead + byte);
      }
      std::memcpy(out + i * kPackedRowPitch, block + i * a.row_stride, size_t(depth) * sizeof(float));
    }
    return true;
  }
  if (k_major && vector_packing()) {
    avx512_pack_a_columns(block, a.col_stride, rows, depth, int(panel_rows), out);
    return false;
  }
  for (int64_t p = 0; p * panel_rows < rows; ++p) {
    const int64_t valid = std::min(panel_rows, rows - p * panel_rows);
    const float* src = block + p * panel_rows * a.row_stride;
    float* panel = out + p * panel_rows * depth;
    for (int64_t k = 0; k < depth; ++k)
      for (int64_t r = 0; r < valid; ++r) panel[k * panel_rows + r] = src[k * a.col_stride + r * a.row_stride];
  }
  return false;
}

// Per-thread scratch for packed A, grown on demand and kept for the next product.
struct ThreadScratch {
  AlignedFloats a_block;
  int64_t a_capacity = 0;
  float* a_buffer(int64_t elements) {
    if (elements > a_capacity) {
      a_block = aligned_floats(elements);
      a_capacity = elements;
    }
    return a_block.get();
  }
};

// Packed B for one product on the calling thread: kept for the next product up to
// kKeptPackedB floats (reused memory is already mapped and often still cached), fresh beyond.
constexpr int64_t kKeptPackedB = int64_t(8) << 20;
struct PackedB {
  AlignedFloats kept, oversized;
  int64_t kept_capacity = 0;
};
float* packed_b_buffer(int64_t elements) {
  thread_local PackedB buffers;
  if (elements > kKeptPackedB) {
    buffers.oversized = aligned_floats(elements);
    return buffers.oversized.get();
  }
  buffers.oversized.reset();
  if (elements > buffers.kept_capacity) {
    buffers.kept = aligned_floats(elements);
    buffers.kept_capacity = elements;
  }
  return buffers.kept.get();
}

ThreadScratch& thread_scratch() {
  thread_local ThreadScratch scratch;
  return scratch;
}

// The rows of C cut into work items of whole micro-kernel tiles: about kRowBlockTarget rows
// each, and, when the product is shared, a multiple of the thread count of them, so that
// the threads finish together (11 blocks of 96 rows on 2 threads left one idle for a twelfth
// of the product). Row block r holds tiles [r tiles / blocks, (r + 1) tiles / blocks).
struct RowBlocks {
  int64_t tiles = 0, count = 0, tile_rows = 0;
  int64_t first_row(int64_t block) const { return block * tiles / count * tile_rows; }
  int64_t end_row(int64_t block, int64_t rows) const {
    return std::min(rows, (block + 1) * tiles / count * tile_rows);
  }
  int64_t max_rows() const { return ceil_div(tiles, count) * tile_rows; }
};
RowBlocks row_blocks_of(int64_t rows, int64_t tile_rows, bool parallel) {
  RowBlocks blocks;
  blocks.tile_rows = tile_rows;
  blocks.tiles = ceil_div(rows, tile_rows);
  blocks.count = ceil_div(blocks.tiles, kRowBlockTarget / tile_rows);
  if (parallel && blocks.count > num_threads()) blocks.count = round_up(blocks.count, num_threads());
  blocks.count = std::min(blocks.count, blocks.tiles);
  return blocks;
}

// One product on a kernel path (K > 0, C not empty), K slice by K slice: pack the slice of B,
// then run the work items over it (so that the packed slice is still in cache when used).
void gemm_packed(const KernelPath& path, const GemmTask& task, bool parallel) {
  const MatrixSpan &a = task.a, &b = task.b, &c = task.c;
  const int64_t depth = a.cols;
  const int64_t width = path.columns;
  const int64_t panels = ceil_div(c.cols, width);

  // The K slices: kDepthSlice long but for a shorter last one, the pieces Eigen's path sums
  // in too (ops/cpu/matmul.cpp). Even slices (K = 576 as 3 x 192) would lower the error at such
  // K a little, but then the error would no longer be the same at every K (test_matmul.cpp).
  const int64_t slice_depth = std::min(depth, kDepthSlice);
  float* packed_b = packed_b_buffer(panels * slice_depth * width);
  constexpr int64_t kPanelsPerPackItem = 4;

  // Work items: blocks of rows, each over a group of columns: all of them unless there are too
  // few row blocks to keep the threads busy (each group packs the rows' A again).
  const RowBlocks blocks = row_blocks_of(c.rows, path.rows, parallel);
  const int64_t row_blocks = blocks.count;
  int64_t groups = 1;
  if (parallel) groups = std::clamp<int64_t>(ceil_div(kItemsPerThread * num_threads(), row_blocks), 1, panels);
  const int64_t group_panels = ceil_div(panels, groups);
  groups = ceil_div(panels, group_panels);
  // Inside a group, columns in sub-blocks whose slice of packed B stays in L2 while each
  // micro-panel of A runs across it.
  const int64_t sub_block_panels = std::max<int64_t>(1, kColumnBlock / width);

  float* c_data = static_cast<float*>(c.data);
  for (int64_t k = 0; k < depth; k += slice_depth) {
    const int64_t slice = std::min(slice_depth, depth - k);
    const bool accumulate = task.accumulate || k > 0;
    MatrixSpan b_slice = b;
    b_slice.data = const_cast<float*>(floats_of(b) + k * b.row_stride);
    b_slice.rows = slice;
    for_items(ceil_div(panels, kPanelsPerPackItem), parallel, [&](int64_t item) {
      const int64_t first = item * kPanelsPerPackItem;
      pack_b_panels(b_slice, first, std::min(kPanelsPerPackItem, panels - first), width, packed_b);
    });
    for_items(row_blocks * groups, parallel, [&](int64_t item) {
      float* a_block = thread_scratch().a_buffer(blocks.max_rows() * kDepthSlice);
      const int64_t first_row = blocks.first_row(item / groups);
      const int64_t rows = blocks.end_row(item / groups, c.rows) - first_row;
      const int64_t first_panel = (item % groups) * group_panels;
      const int64_t end_panel = std::min(panels, first_panel + group_panels);
      const bool row_pitch = pack_a_block(a, first_row, rows, k, slice, path.rows, a_block);
      for (int64_t sub = first_panel; sub < end_panel; sub += sub_block_panels) {
        const int64_t sub_end = std::min(end_panel, sub + sub_block_panels);
        for (int64_t i = 0; i < rows; i += path.rows) {
          const float* a_panel = a_block + i * (row_pitch ? kPackedRowPitch : slice);
          const int kernel_rows = int(std::min<int64_t>(path.rows, rows - i));
          float* c_row = c_data + (first_row + i) * c.row_stride;
          for (int64_t p = sub; p < sub_end; ++p) {
            path.kernel(kernel_rows, a_panel, row_pitch, packed_b + p * slice * width, slice, c_row + p * width,
                        c.row_stride, int(std::min(width, c.cols - p * width)), accumulate);
          }
        }
      }
    });
  }
}

void gemm_one(const KernelPath& path, const GemmTask& task, bool parallel) {
  const MatrixSpan& c = task.c;
  if (c.rows == 0 || c.cols == 0) return;
  if (task.a.cols == 0) {
    if (task.accumulate) return;
    for (int64_t i = 0; i < c.rows; ++i) {
      float* c_row = static_cast<float*>(c.data) + i * c.row_stride;
      std::fill(c_row, c_row + c.cols, 0.0f);
    }
    return;
  }
  parallel = parallel && c.rows * c.cols * task.a.cols >= kMinParallelWork;
  gemm_packed(path, task, parallel);
}

}  // namespace

namespace gemm_f32_detail {
void set_plain_packing(bool plain) { plain_packing.store(plain, std::memory_order_relaxed); }
}  // namespace gemm_f32_detail

const char* gemm_f32_path_name(GemmF32Path path) {
  switch (path) {
    case GemmF32Path::automatic: return "auto";
    case GemmF32Path::avx512: return "avx512";
    case GemmF32Path::avx2: return "avx2";
    case GemmF32Path::eigen: return "eigen";
  }
  return "?";
}

GemmF32Path gemm_f32_path_from_name(const std::string& name, const std::string& what) {
  for (GemmF32Path path : {GemmF32Path::automatic, GemmF32Path::avx512, GemmF32Path::avx2, GemmF32Path::eigen}) {
    if (name == gemm_f32_path_name(path)) return path;
  }
  throw Error(str_cat(what, ": unknown f32 GEMM path '", name, "' (expected avx512, avx2, eigen or auto)"));
}

bool gemm_f32_path_available(GemmF32Path path) {
  switch (path) {
    case GemmF32Path::avx512: return cpu_features().avx512f;
    case GemmF32Path::avx2: return cpu_features().avx2_fma;
    default: return true;
  }
}

namespace {

// The path $LAMINA_CPU_GEMM_F32 names (automatic when unset or empty).
GemmF32Path variable_path() {
  const char* variable = std::getenv("LAMINA_CPU_GEMM_F32");
  if (variable == nullptr || *variable == '\0') return GemmF32Path::automatic;
  return gemm_f32_path_from_name(variable, "LAMINA_CPU_GEMM_F32");
}

}  // namespace

GemmF32Path gemm_f32_resolve(GemmF32Path requested) {
  std::string source = "gemm_f32";
  if (requested == GemmF32Path::automatic) {
    requested = variable_path();
    if (requested != GemmF32Path::automatic) source = "LAMINA_CPU_GEMM_F32";
  }
  if (requested == GemmF32Path::automatic) {
    if (cpu_features().avx512f) return GemmF32Path::avx512;
    if (cpu_features().avx2_fma) return GemmF32Path::avx2;
    return GemmF32Path::eigen;
  }
  if (!gemm_f32_path_available(requested)) {
    throw Error(str_cat(source, ": the f32 GEMM path '", gemm_f32_path_name(requested), "' needs ",
                        requested == GemmF32Path::avx512 ? "AVX-512F" : "AVX2 and FMA",
                        ", which this CPU lacks (available: ", cpu_features().avx512f ? "avx512, " : "",
                        cpu_features().avx2_fma ? "avx2, " : "", "eigen)"));
  }
  return requested;
}

bool gemm_f32_prefers_kernels(const GemmTask& task) {
  const GemmF32Path forced = variable_path();
  if (forced != GemmF32Path::automatic) return forced != GemmF32Path::eigen;
  if (gemm_f32_resolve() == GemmF32Path::eigen) return false;
  const int64_t m = task.c.rows, n = task.c.cols, k = task.a.cols;
  // Measured on Sapphire Rapids (one thread, A [M, K] x B^T with N = K = 512): the kernels win
  // from about M = 128 up (7-14% at the `lamina bench train` Linear shapes); below, packing B
  // for few rows costs more than it gains (M = 64: 3% slower, M = 16: 5%).
  return m >= 128 && n >= 64 && k >= 64;
}

void gemm_f32_batch(const std::vector<GemmTask>& tasks, GemmF32Path path) {
  const GemmF32Path resolved = gemm_f32_resolve(path);
  if (resolved == GemmF32Path::eigen) return gemm_batch_eigen(DType::f32, tasks);
  for (const GemmTask& task : tasks) {
    LAMINA_CHECK(task.a.cols == task.b.rows && task.c.rows == task.a.rows && task.c.cols == task.b.cols,
                 "gemm_f32: shapes do not chain: a [", task.a.rows, ", ", task.a.cols, "], b [", task.b.rows, ", ",
                 task.b.cols, "], c [", task.c.rows, ", ", task.c.cols, "]");
    LAMINA_CHECK(task.c.col_stride == 1 || task.c.cols <= 1, "gemm_f32: c must be row-major (col_stride 1), got ",
                 task.c.col_stride);
  }
  const KernelPath kernels = kernel_path(resolved);
  if (tasks.size() > 1 && int64_t(tasks.size()) >= num_threads()) {
    parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) gemm_one(kernels, tasks[size_t(t)], false);
    });
    return;
  }
  for (const GemmTask& task : tasks) gemm_one(kernels, task, true);
}

}  // namespace lamina::ops::cpu
