// CPU kernels of the 4-bit ops (ops/quant4.h): decoding double-quantized scales, dequantizing,
// and the two fused products.
//
// Everything is built on one routine, dequantize_range, which turns any flat element range
// [begin, end) of the weight into f32 values: code_values[code] * absmax[block], the single f32
// multiply bitsandbytes does, so every path yields the same bits as dequantize_4bit. On AVX-512
// it decodes 32 elements (16 bytes, always inside one block since blocks are multiples of 32)
// per step: the 16-entry table fits one register, so the lookup is one permute per 16 codes.
//
// With at most 16 input rows (decoding, small batches) and AVX-512, matmul_4bit decodes each
// weight row straight into registers and multiplies it there (dot_weight_row). Otherwise the
// products dequantize a tile of weight rows into a small per-thread buffer and multiply it with
// Eigen (not multithreaded itself; the tiles are spread over the thread pool):
//   matmul_4bit:            out[:, n0:n1]  = x @ tile^T            (tiles of rows of W)
//   matmul_4bit_input_grad: out[:, k0:k1] += grad[:, n0:n1] @ tile (each thread owns columns
//                           k0:k1 of the output, so no two threads add into one element)

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
#include <cstring>
#include <vector>

#include "ops/quant4.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;

// What the kernels read of a 4-bit weight: the codes, and the scales either as f32 or as 8-bit
// codes decoded on the fly (one decode per 32 elements, cheaper than a pass over all of them).
struct WeightView {
  const uint8_t* codes;
  const float* table;
  int blocksize_shift;
  const float* absmax;          // plain scales, or null with double quantization
  const uint8_t* absmax_codes;  // double quantization: the 8-bit scale codes,
  const float* nested_absmax;   //   their per-nested-block scale,
  const float* nested_table;    //   the dynamic map,
  float nested_offset;          //   and the mean added back
  int64_t nested_blocksize;

  // The scale of block b, with the same two f32 roundings as bitsandbytes: the product goes
  // through a volatile so that no compiler contracts it and the add into one fused
  // multiply-add (GCC does at -O3 with -march=native, even through an f64 detour).
  float scale(int64_t block) const {
    if (absmax != nullptr) return absmax[block];
    volatile float product = nested_table[absmax_codes[block]] * nested_absmax[block / nested_blocksize];
    return product + nested_offset;
  }
};

inline float element_value(const WeightView& w, int64_t i) {
  const uint8_t byte = w.codes[i / 2];
  const uint8_t code = (i % 2 == 0) ? uint8_t(byte >> 4) : uint8_t(byte & 15);
  return w.table[code] * w.scale(i >> w.blocksize_shift);
}

// Writes elements [begin, end) of the flattened weight to dst[0, end - begin).
void dequantize_range(const WeightView& w, int64_t begin, int64_t end, float* dst) {
  int64_t i = begin;
  for (; i < end && (i & 31) != 0; ++i) dst[i - begin] = element_value(w, i);
#if defined(__AVX512F__)
  const __m512 table = _mm512_loadu_ps(w.table);
  const __m512i low_mask = _mm512_set1_epi32(15);
  // Interleave the high-nibble values (even elements) with the low-nibble ones (odd elements).
  const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (; i + 32 <= end; i += 32) {
    const __m512 scale = _mm512_set1_ps(w.scale(i >> w.blocksize_shift));
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.codes + i / 2)));
    const __m512i high = _mm512_srli_epi32(bytes, 4);
    const __m512i low = _mm512_and_si512(bytes, low_mask);
    const __m512 even = _mm512_mul_ps(_mm512_permutexvar_ps(high, table), scale);
    const __m512 odd = _mm512_mul_ps(_mm512_permutexvar_ps(low, table), scale);
    _mm512_storeu_ps(dst + (i - begin), _mm512_permutex2var_ps(even, first_half, odd));
    _mm512_storeu_ps(dst + (i - begin) + 16, _mm512_permutex2var_ps(even, second_half, odd));
  }
#else
  for (; i + 32 <= end; i += 32) {
    const float scale = w.scale(i >> w.blocksize_shift);
    const uint8_t* bytes = w.codes + i / 2;
    float* out = dst + (i - begin);
    for (int j = 0; j < 16; ++j) {
      out[2 * j] = w.table[bytes[j] >> 4] * scale;
      out[2 * j + 1] = w.table[bytes[j] & 15] * scale;
    }
  }
#endif
  for (; i < end; ++i) dst[i - begin] = element_value(w, i);
}

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
  const __m512 table = _mm512_loadu_ps(w.table);
  const __m512i low_mask = _mm512_set1_epi32(15);
  const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  __m512 low_sums[Rows], high_sums[Rows];
  for (int m = 0; m < Rows; ++m) low_sums[m] = high_sums[m] = _mm512_setzero_ps();
  for (; i + 32 <= end; i += 32) {
    const __m512 scale = _mm512_set1_ps(w.scale(i >> w.blocksize_shift));
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.codes + i / 2)));
    const __m512 even = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table), scale);
    const __m512 odd = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(bytes, low_mask), table), scale);
    const __m512 first = _mm512_permutex2var_ps(even, first_half, odd);
    const __m512 second = _mm512_permutex2var_ps(even, second_half, odd);
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

WeightView view_of(const Quantized4Bit& q) {
  WeightView w{};
  w.codes = q.codes.data<uint8_t>();
  w.table = q.code_values.data<float>();
  while ((int64_t(1) << w.blocksize_shift) < q.blocksize) ++w.blocksize_shift;
  if (q.double_quant) {
    w.absmax_codes = q.absmax.data<uint8_t>();
    w.nested_absmax = q.nested_absmax.data<float>();
    w.nested_table = q.nested_code_values.data<float>();
    w.nested_offset = q.nested_offset;
    w.nested_blocksize = q.nested_blocksize;
  } else {
    w.absmax = q.absmax.data<float>();
  }
  return w;
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
#if defined(__AVX512F__)
  else if (x.size(0) <= kDirectRows) matmul_direct(out, x, w, out_features, in_features);
#endif
  else matmul_typed<float>(out, x, w, out_features, in_features);
}

void quant4_matmul_input_grad(const Tensor& out, const Tensor& grad, const Quantized4Bit& q) {
  const WeightView w = view_of(q);
  const int64_t out_features = q.out_features(), in_features = q.in_features();
  if (grad.dtype() == DType::f64) input_grad_typed<double>(out, grad, w, out_features, in_features);
  else input_grad_typed<float>(out, grad, w, out_features, in_features);
}

}  // namespace lamina::ops::cpu
