// Matrix products on Eigen, and the dispatch of f32 products to lamina's own GEMM
// (gemm_f32.cpp) where it wins. On Eigen, lamina's part is layout: each operand is mapped in
// place as a row-major or column-major matrix (so transposed views cost nothing), batches and
// row blocks are spread over the threads, and Eigen's GEMM does the arithmetic.
#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Core>

#include <algorithm>
#include <type_traits>

#include "ops/cpu/gemm_f32.h"
#include "ops/cpu/kernels.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
using Stride = Eigen::OuterStride<>;

bool maps_row_major(const MatrixSpan& m) {
  return (m.col_stride == 1 || m.cols == 1) && (m.rows == 1 || m.row_stride >= m.cols);
}

bool maps_col_major(const MatrixSpan& m) {
  return (m.row_stride == 1 || m.rows == 1) && (m.cols == 1 || m.col_stride >= m.rows);
}

template <typename Matrix>
Stride outer_stride(const MatrixSpan& m) {
  if constexpr (Matrix::IsRowMajor) {
    return Stride(m.rows == 1 ? std::max<int64_t>(m.cols, 1) : m.row_stride);
  } else {
    return Stride(m.cols == 1 ? std::max<int64_t>(m.rows, 1) : m.col_stride);
  }
}

template <typename T, typename MatrixA, typename MatrixB>
void gemm_mapped(const MatrixSpan& a, const MatrixSpan& b, const MatrixSpan& c, bool accumulate) {
  const Eigen::Map<const MatrixA, 0, Stride> a_map(static_cast<const T*>(a.data), a.rows, a.cols,
                                                   outer_stride<MatrixA>(a));
  const Eigen::Map<const MatrixB, 0, Stride> b_map(static_cast<const T*>(b.data), b.rows, b.cols,
                                                   outer_stride<MatrixB>(b));
  Eigen::Map<RowMajor<T>, 0, Stride> c_map(static_cast<T*>(c.data), c.rows, c.cols,
                                           outer_stride<RowMajor<T>>(c));
  if (accumulate) {
    c_map.noalias() += a_map * b_map;
  } else {
    c_map.noalias() = a_map * b_map;
  }
}

template <typename T>
void gemm_typed(const MatrixSpan& a, const MatrixSpan& b, const MatrixSpan& c, bool accumulate) {
  if (a.cols == 0) {
    if (accumulate) return;
    for (int64_t i = 0; i < c.rows; ++i)
      for (int64_t j = 0; j < c.cols; ++j) static_cast<T*>(c.data)[i * c.row_stride + j] = T(0);
    return;
  }
  // f32 products sum their inner dimension in pieces of kInnerPiece, each piece added to C:
  // Eigen accumulates each output along the whole inner dimension in one register, and at
  // Llama widths (576 to 1536 and more) that lost twice transformers' accuracy. On SmolLM2
  // (730 tokens, f32 against the same model in f64) the mean per-token log-prob error fell
  // from 6.6e-6 to 3.0e-6 (transformers: 3.4e-6), for 5% more forward time on one thread and
  // 4% on two (a 731-token forward, idle; the extra passes over C). f64 needs no help.
  constexpr int64_t kInnerPiece = 256;
  if (std::is_same_v<T, float> && a.cols > kInnerPiece) {
    for (int64_t k = 0; k < a.cols; k += kInnerPiece) {
      const int64_t end = std::min(a.cols, k + kInnerPiece);
      MatrixSpan a_piece = a, b_piece = b;
      a_piece.data = static_cast<char*>(a.data) + k * a.col_stride * int64_t(sizeof(T));
      a_piece.cols = end - k;
      b_piece.data = static_cast<char*>(b.data) + k * b.row_stride * int64_t(sizeof(T));
      b_piece.rows = end - k;
      gemm_typed<T>(a_piece, b_piece, c, accumulate || k > 0);
    }
    return;
  }
  if (maps_row_major(a)) {
    if (maps_row_major(b)) return gemm_mapped<T, RowMajor<T>, RowMajor<T>>(a, b, c, accumulate);
    return gemm_mapped<T, RowMajor<T>, ColMajor<T>>(a, b, c, accumulate);
  }
  if (maps_row_major(b)) return gemm_mapped<T, ColMajor<T>, RowMajor<T>>(a, b, c, accumulate);
  return gemm_mapped<T, ColMajor<T>, ColMajor<T>>(a, b, c, accumulate);
}

MatrixSpan row_block(const MatrixSpan& m, int64_t begin, int64_t end, size_t element_size) {
  MatrixSpan block = m;
  block.data = static_cast<char*>(m.data) + begin * m.row_stride * int64_t(element_size);
  block.rows = end - begin;
  return block;
}

MatrixSpan col_block(const MatrixSpan& m, int64_t begin, int64_t end, size_t element_size) {
  MatrixSpan block = m;
  block.data = static_cast<char*>(m.data) + begin * m.col_stride * int64_t(element_size);
  block.cols = end - begin;
  return block;
}

}  // namespace

bool gemm_compatible(const MatrixSpan& m) { return maps_row_major(m) || maps_col_major(m); }

// f32 products go to lamina's own GEMM (gemm_f32.h) when their shape pays for its packing;
// the rest, and f64, to Eigen.
void gemm_batch(DType dtype, const std::vector<GemmTask>& tasks) {
  if (dtype == DType::f32 && !tasks.empty() && gemm_f32_prefers_kernels(tasks.front())) {
    return gemm_f32_batch(tasks);
  }
  gemm_batch_eigen(dtype, tasks);
}

// Splits independent products over the threads: whole products when there are enough of
// them, otherwise blocks of rows of C (or of columns when C has few rows).
void gemm_batch_eigen(DType dtype, const std::vector<GemmTask>& tasks) {
  const size_t element = dtype_size(dtype);
  auto run = [&](const MatrixSpan& a, const MatrixSpan& b, const MatrixSpan& c, bool accumulate) {
    if (dtype == DType::f64) {
      gemm_typed<double>(a, b, c, accumulate);
    } else {
      gemm_typed<float>(a, b, c, accumulate);
    }
  };
  const int64_t threads = num_threads();
  if (int64_t(tasks.size()) >= threads || tasks.empty()) {
    parallel_for(0, int64_t(tasks.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) run(tasks[size_t(t)].a, tasks[size_t(t)].b, tasks[size_t(t)].c, tasks[size_t(t)].accumulate);
    });
    return;
  }
  constexpr int64_t kMinBlock = 32;
  // Below this many multiply-adds a product finishes faster than the threads can be woken.
  constexpr int64_t kMinParallelWork = int64_t(1) << 18;
  for (const GemmTask& task : tasks) {
    if (task.c.rows * task.c.cols * task.a.cols < kMinParallelWork) {
      run(task.a, task.b, task.c, task.accumulate);
      continue;
    }
    const bool split_rows = task.c.rows >= task.c.cols || task.c.cols < 2 * kMinBlock;
    const int64_t extent = split_rows ? task.c.rows : task.c.cols;
    const int64_t grain = std::max<int64_t>(kMinBlock, (extent + threads - 1) / threads);
    parallel_for(0, extent, grain, [&](int64_t begin, int64_t end) {
      if (split_rows) {
        run(row_block(task.a, begin, end, element), task.b, row_block(task.c, begin, end, element), task.accumulate);
      } else {
        run(task.a, col_block(task.b, begin, end, element), col_block(task.c, begin, end, element), task.accumulate);
      }
    });
  }
}

}  // namespace lamina::ops::cpu
