// CPU kernels of the 4-bit ops (ops/quant4.h): decoding double-quantized scales, dequantizing,
// and the two fused products.
//
// Everything is built on one routine, dequantize_range (ops/cpu/quant4_decode.h), which turns
// any flat element range of the weight into f32 values exactly as dequantize_4bit does.
//
// Which path multiplies:
//   - f32, 1..15 input rows, in_features a multiple of 32, the int8 decode product chosen (the
//     default; the rule is documented in ops/quant4.h): the integer products of
//     ops/cpu/quant4_int8.cpp, activations quantized to int8 per 32 values.
//   - f32, at most 16 input rows otherwise, AVX-512: matmul_4bit decodes each weight row straight into
//     registers and multiplies it there (dot_weight_row): the weight streams once.
//   - f32 otherwise, AVX-512: the panel products of ops/cpu/quant4_panels.cpp (both ops), which
//     decode 32 columns of W at a time into the layout their register kernel reads; at training
//     sizes they run about 5% faster than Eigen's GEMM on the already dequantized weight.
//   - f64, or a build without AVX-512: a tile of weight rows is dequantized into a small
//     per-thread buffer and multiplied with Eigen (not multithreaded itself; the tiles are
//     spread over the thread pool):
//       matmul_4bit:            out[:, n0:n1]  = x @ tile^T            (tiles of rows of W)
//       matmul_4bit_input_grad: out[:, k0:k1] += grad[:, n0:n1] @ tile (each thread owns columns
//                               k0:k1 of the output, so no two threads add into one element)

// GCC 12 reports its own AVX-512 intrinsic headers (inlined here and in Eigen's GEMM) as
// -Wmaybe-uninitialized, the known false positive CMakeLists.txt silences for ops/cpu/matmul.cpp.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <Eigen/Core>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <vector>

#include "ops/cpu/quant4_decode.h"
#include "ops/cpu/quant4_int8.h"
#include "ops/cpu/quant4_panels.h"
#include "ops/quant4.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

using namespace quant4_detail;

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;

// Inputs of at most kDirectRows rows take the direct path below (decoding, and small batches),
// in groups of at most kDirectGroup rows: 2 accumulators a row, 16 of the 32 vector registers.
constexpr int64_t kDirectRows = 16;
constexpr int kDirectGroup = 8;

// out[m] = x[m] . W[row] for m < Rows <= kDirectGroup: the weight row is decoded straight into
// registers and multiplied there (on AVX-512), never stored, so the product streams the 4-bit
// bytes once and reads x from cache. Rows is a template argument so that the accumulators stay
// in registers; each row has two, for the two halves of a 32-element step, to halve the FMA
// dependency chain.
template <int Rows>
void dot_weight_row(const WeightView& w, int64_t row, int64_t in_features, const float* x, float* sums) {
  const int64_t begin = row * in_features, end = begin + in_features;
  double scalar[Rows] = {};
  int64_t i = begin;
  for (; i < end && (i & 31) != 0; ++i) {
    const float value = element_value(w, i);
    for (int m = 0; m < Rows; ++m) scalar[m] += double(value) * double(x[m * in_features + (i - begin)]);
  }
#if defined(__AVX512F__)
  const Decoder decoder(w.table);
  __m512 low_sums[Rows], high_sums[Rows];
  for (int m = 0; m < Rows; ++m) low_sums[m] = high_sums[m] = _mm512_setzero_ps();
  for (; i + 32 <= end; i += 32) {
    const Decoded32 values = decoder.decode32(w, i);
    const __m512 first = values.first, second = values.second;
    for (int m = 0; m < Rows; ++m) {
      const float* xm = x + m * in_features + (i - begin);
      low_sums[m] = _mm512_fmadd_ps(first, _mm512_loadu_ps(xm), low_sums[m]);
      high_sums[m] = _mm512_fmadd_ps(second, _mm512_loadu_ps(xm + 16), high_sums[m]);
    }
  }
  for (int m = 0; m < Rows; ++m) scalar[m] += double(_mm512_reduce_add_ps(_mm512_add_ps(low_sums[m], high_sums[m])));
#endif
  for (; i < end; ++i) {
    const float value = element_value(w, i);
    for (int m = 0; m < Rows; ++m) scalar[m] += double(value) * double(x[m * in_features + (i - begin)]);
  }
  for (int m = 0; m < Rows; ++m) sums[m] = float(scalar[m]);
}

template <int Rows>
void matmul_direct_rows(float* out_data, const float* x_data, const WeightView& w, int64_t out_features,
                        int64_t in_features) {
  parallel_for(0, out_features, 16, [&](int64_t first, int64_t last) {
    float sums[Rows];
    for (int64_t n = first; n < last; ++n) {
      dot_weight_row<Rows>(w, n, in_features, x_data, sums);
      for (int m = 0; m < Rows; ++m) out_data[m * out_features + n] = sums[m];
    }
  });
}

void matmul_direct(const Tensor& out, const Tensor& x, const WeightView& w, int64_t out_features,
                   int64_t in_features) {
  const int64_t rows = x.size(0);
  for (int64_t first = 0; first < rows; first += kDirectGroup) {
    const float* x_data = x.data<float>() + first * in_features;
    float* out_data = out.data<float>() + first * out_features;
    switch (std::min<int64_t>(kDirectGroup, rows - first)) {
      case 1: matmul_direct_rows<1>(out_data, x_data, w, out_features, in_features); break;
      case 2: matmul_direct_rows<2>(out_data, x_data, w, out_features, in_features); break;
      case 3: matmul_direct_rows<3>(out_data, x_data, w, out_features, in_features); break;
      case 4: matmul_direct_rows<4>(out_data, x_data, w, out_features, in_features); break;
      case 5: matmul_direct_rows<5>(out_data, x_data, w, out_features, in_features); break;
      case 6: matmul_direct_rows<6>(out_data, x_data, w, out_features, in_features); break;
      case 7: matmul_direct_rows<7>(out_data, x_data, w, out_features, in_features); break;
      default: matmul_direct_rows<8>(out_data, x_data, w, out_features, in_features); break;
    }
  }
}

// Rows of W per tile: about 64 KiB of f32 for a few input rows (the tile stays in L2 and the
// product is a matrix-vector one); for many, up to 256 rows within 4 MiB, so that Eigen's GEMM
// packs x once per wide panel rather than once per few rows (x is re-packed for every tile).
int64_t tile_rows_for(int64_t input_rows, int64_t in_features, int64_t out_features) {
  const int64_t per_row = std::max<int64_t>(in_features, 1) * int64_t(sizeof(float));
  int64_t rows = (int64_t(64) << 10) / per_row;
  if (input_rows > 8) rows = std::clamp<int64_t>((int64_t(4) << 20) / per_row, 16, 256);
  return std::clamp<int64_t>(rows, 1, std::max<int64_t>(out_features, 1));
}

// Moves the f32 tile into the compute type's buffer (a no-op view for f32).
template <typename T>
const T* in_compute_type(const std::vector<float>& tile, std::vector<T>& converted, int64_t count) {
  if constexpr (std::is_same_v<T, float>) {
    return tile.data();
  } else {
    converted.resize(size_t(count));
    for (int64_t i = 0; i < count; ++i) converted[size_t(i)] = T(tile[size_t(i)]);
    return converted.data();
  }
}

template <typename T>
void matmul_typed(const Tensor& out, const Tensor& x, const WeightView& w, int64_t out_features, int64_t in_features) {
  const int64_t rows = x.size(0);
  const T* x_data = static_cast<const T*>(x.raw_data());
  T* out_data = static_cast<T*>(out.raw_data());
  const int64_t tile_rows = tile_rows_for(rows, in_features, out_features);
  const int64_t tiles = (out_features + tile_rows - 1) / tile_rows;
  parallel_for(0, tiles, 1, [&](int64_t first_tile, int64_t end_tile) {
    std::vector<float> tile(size_t(tile_rows * in_features));
    std::vector<T> converted;
    const Eigen::Map<const RowMajor<T>> x_map(x_data, rows, in_features);
    for (int64_t t = first_tile; t < end_tile; ++t) {
      const int64_t n0 = t * tile_rows, n1 = std::min(out_features, n0 + tile_rows);
      dequantize_range(w, n0 * in_features, n1 * in_features, tile.data());
      const T* weights = in_compute_type<T>(tile, converted, (n1 - n0) * in_features);
      const Eigen::Map<const RowMajor<T>> w_map(weights, n1 - n0, in_features);
      Eigen::Map<RowMajor<T>, 0, Stride> out_map(out_data + n0, rows, n1 - n0, Stride(out_features));
      if (in_features == 0) out_map.setZero();
      else out_map.noalias() = x_map * w_map.transpose();
    }
  });
}

template <typename T>
void input_grad_typed(const Tensor& out, const Tensor& grad, const WeightView& w, int64_t out_features,
                      int64_t in_features) {
  if (in_features == 0) return;
  const int64_t rows = grad.size(0);
  const T* grad_data = static_cast<const T*>(grad.raw_data());
  T* out_data = static_cast<T*>(out.raw_data());
  const int64_t column_chunk = std::min<int64_t>(in_features, 256);
  const int64_t chunks = (in_features + column_chunk - 1) / column_chunk;
  const int64_t tile_rows = std::clamp<int64_t>(rows > 8 ? 128 : 64, 1, std::max<int64_t>(out_features, 1));
  parallel_for(0, chunks, 1, [&](int64_t first_chunk, int64_t end_chunk) {
    std::vector<float> tile(size_t(tile_rows * column_chunk));
    std::vector<T> converted;
    for (int64_t c = first_chunk; c < end_chunk; ++c) {
      const int64_t k0 = c * column_chunk, k1 = std::min(in_features, k0 + column_chunk), width = k1 - k0;
      Eigen::Map<RowMajor<T>, 0, Stride> out_map(out_data + k0, rows, width, Stride(in_features));
      if (out_features == 0) out_map.setZero();
      for (int64_t n0 = 0; n0 < out_features; n0 += tile_rows) {
        const int64_t n1 = std::min(out_features, n0 + tile_rows);
        for (int64_t n = n0; n < n1; ++n)
          dequantize_range(w, n * in_features + k0, n * in_features + k1, tile.data() + (n - n0) * width);
        const T* weights = in_compute_type<T>(tile, converted, (n1 - n0) * width);
        const Eigen::Map<const RowMajor<T>> w_map(weights, n1 - n0, width);
        const Eigen::Map<const RowMajor<T>, 0, Stride> grad_map(grad_data + n0, rows, n1 - n0, Stride(out_features));
        if (n0 == 0) out_map.noalias() = grad_map * w_map;
        else out_map.noalias() += grad_map * w_map;
      }
    }
  });
}

}  // namespace

void quant4_decode_absmax(const Tensor& out, const Quantized4Bit& q) {
  const WeightView w = view_of(q);
  float* dst = out.data<float>();
  for (int64_t j = 0; j < q.block_count(); ++j) dst[j] = w.scale(j);
}

void quant4_dequantize(const Tensor& out, const Quantized4Bit& q) {
  const WeightView w = view_of(q);
  float* dst = out.data<float>();
  parallel_for(0, out.numel(), int64_t(1) << 16,
               [&](int64_t begin, int64_t end) { dequantize_range(w, begin, end, dst + begin); });
}

void quant4_matmul(const Tensor& out, const Tensor& x, const Quantized4Bit& q) {
  const WeightView w = view_of(q);
  const int64_t out_features = q.out_features(), in_features = q.in_features();
  if (x.dtype() == DType::f64) matmul_typed<double>(out, x, w, out_features, in_features);
  else if (quant4_int8::applies(x.size(0), q)) quant4_int8::matmul(out.data<float>(), x.data<float>(), x.size(0), q);
#if defined(__AVX512F__)
  else if (x.size(0) <= kDirectRows) matmul_direct(out, x, w, out_features, in_features);
#endif
  else if (panel_products_available())
    panel_matmul(out.data<float>(), x.data<float>(), x.size(0), w, out_features, in_features);
  else matmul_typed<float>(out, x, w, out_features, in_features);
}

void quant4_matmul_input_grad(const Tensor& out, const Tensor& grad, const Quantized4Bit& q) {
  const WeightView w = view_of(q);
  const int64_t out_features = q.out_features(), in_features = q.in_features();
  if (grad.dtype() == DType::f64) input_grad_typed<double>(out, grad, w, out_features, in_features);
  else if (panel_products_available())
    panel_input_grad(out.data<float>(), grad.data<float>(), grad.size(0), w, out_features, in_features);
  else input_grad_typed<float>(out, grad, w, out_features, in_features);
}

}  // namespace lamina::ops::cpu
