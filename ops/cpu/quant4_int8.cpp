// Integer decode products of 4-bit (NF4 / FP4) weights with int8 activations: the plain C++
// reference that defines the result (ops/cpu/quant4_int8.h spells out the summation order), an
// AVX2 path (vpmaddubsw) and an AVX-512 VNNI path (vpdpbusd), all giving the same bits; and the
// switch between this product and the f32 one (ops/quant4.h).
//
// The codes become int8 by one byte shuffle per 32 (AVX2) or 64 (VNNI) nibbles: the 16-entry
// table fits one 128-bit lane, and vpshufb looks up every byte of a register at once.
//
// Signs. Both instructions multiply an unsigned byte by a signed one, and the table and the
// activations are both signed.
// - AVX2 (the sign trick): multiply |t| (<= 127) by q with t's sign moved onto it (vpsignb;
//   |q| <= 127, so negating cannot overflow). vpmaddubsw saturates its int16 pair sums, but
//   2 * 127 * 127 = 32258 < 32767, so it never does here.
// - VNNI (the offset trick): the shuffle looks up t + 128 (1..255, unsigned) instead of t, so the
//   products carry an extra 128 * (sum of the lane's 4 q), taken off exactly by starting
//   vpdpbusd's int32 accumulator at -128 * that sum (computed once per activation row). No sign
//   juggling on the weight stream; vpdpbusd adds in int32 without saturation.
#include "ops/cpu/quant4_int8.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/gguf_matmul.h"
#include "tensor/parallel.h"

// GCC 12 reports its own intrinsics' deliberately undefined pass-through operands as maybe
// uninitialized once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#define LAMINA_Q4I8_X86 1
#define LAMINA_Q4I8_AVX2_TARGET __attribute__((target("avx2,fma")))
#define LAMINA_Q4I8_VNNI_TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

namespace lamina::ops {

namespace {

// What set_quant4_decode_product chose; `automatic` defers to $LAMINA_CPU_4BIT_DECODE, then int8.
std::atomic<Quant4DecodeProduct> forced_product{Quant4DecodeProduct::automatic};

Quant4DecodeProduct environment_product() {
  static const Quant4DecodeProduct product = [] {
    const char* text = std::getenv("LAMINA_CPU_4BIT_DECODE");
    if (text == nullptr || *text == '\0') return Quant4DecodeProduct::automatic;
    const std::string value = text;
    if (value == "auto") return Quant4DecodeProduct::automatic;
    if (value == "int8") return Quant4DecodeProduct::int8;
    if (value == "f32") return Quant4DecodeProduct::f32;
    throw Error(str_cat("LAMINA_CPU_4BIT_DECODE='", value, "' is not one of int8, f32, auto"));
  }();
  return product;
}

}  // namespace

const char* quant4_decode_product_name(Quant4DecodeProduct product) {
  switch (product) {
    case Quant4DecodeProduct::automatic:
      return "auto";
    case Quant4DecodeProduct::int8:
      return "int8";
    case Quant4DecodeProduct::f32:
      return "f32";
  }
  return "unknown";
}

void set_quant4_decode_product(Quant4DecodeProduct product) { forced_product.store(product); }

Quant4DecodeProduct quant4_decode_product() {
  Quant4DecodeProduct product = forced_product.load();
  if (product == Quant4DecodeProduct::automatic) product = environment_product();
  return product == Quant4DecodeProduct::automatic ? Quant4DecodeProduct::int8 : product;
}

std::array<int8_t, 16> quant4_int8_code_table(const std::array<float, 16>& code_values) {
  std::array<int8_t, 16> table{};
  for (size_t c = 0; c < 16; ++c) {
    const float value = code_values[c];
    LAMINA_CHECK(std::isfinite(value) && std::fabs(value) <= 1.0f, "quant4_int8_code_table: code ", c, " is ", value,
                 ", outside [-1, 1]");
    table[c] = int8_t(std::round(127.0 * double(value)));  // halves away from zero (FP4's 0.5 -> 64)
  }
  return table;
}

}  // namespace lamina::ops

namespace lamina::ops::cpu::quant4_int8 {

using quant4_detail::WeightView;

namespace {

constexpr int kMaxActivationRows = 4;  // activation rows that share one pass over a weight row
constexpr int kWeightRowsAtOnce = 4;   // weight rows that share one pass over a single activation row
// Weight bytes each thread's share should at least hold, so that small matrices are not split
// into pieces whose wake-up costs more than their work (as gguf_matmul).
constexpr int64_t kMinBytesPerThread = 32 * 1024;

// The code of flattened element i: the high nibble for even i (bitsandbytes' order).
inline int code_at(const uint8_t* codes, int64_t i) { return (i % 2 == 0) ? codes[i / 2] >> 4 : codes[i / 2] & 15; }

// The absmax of the blocks of the pair's two groups starting at element `first` (the second 0
// when the pair is only one group); one decode when both lie in one block (blocksize >= 64).
inline void pair_absmax(const WeightView& w, int64_t first, bool whole, float absmax[2]) {
  const int64_t block = first >> w.blocksize_shift;
  absmax[0] = w.scale(block);
  absmax[1] = 0.0f;
  if (whole) {
    const int64_t second = (first + kGroup) >> w.blocksize_shift;
    absmax[1] = second == block ? absmax[0] : w.scale(second);
  }
}

// The SIMD paths read block scales from here: the plain absmax, or for double quantization the
// scales of a tile's blocks decoded once into a buffer (WeightView::scale per pair would cost a
// 64-bit division and a volatile round trip each: 40% of a 4096 x 4096 decode product once).
struct BlockScales {
  const float* values;
  int64_t first_block;  // the block values[0] belongs to
  int shift;            // log2 of the blocksize

  // The pair's two scales as WeightView::scale gives them (the second 0 for a lone last group).
  void pair(int64_t first, bool whole, float absmax[2]) const {
    absmax[0] = values[(first >> shift) - first_block];
    absmax[1] = whole ? values[((first + kGroup) >> shift) - first_block] : 0.0f;
  }
};

// The scales of the blocks holding elements [begin, end) of w, valid until the next call on this
// thread: WeightView::scale's two f32 roundings (the product through a volatile, as there), with
// the nested block found once per nested block rather than divided out for each.
BlockScales block_scales(const WeightView& w, int64_t begin, int64_t end) {
  if (w.absmax != nullptr) return {w.absmax, 0, w.blocksize_shift};
  thread_local std::vector<float> decoded;
  const int64_t first_block = begin >> w.blocksize_shift, end_block = ((end - 1) >> w.blocksize_shift) + 1;
  decoded.resize(size_t(end_block - first_block));
  for (int64_t b = first_block; b < end_block;) {
    const int64_t nested = b / w.nested_blocksize;
    const int64_t stop = std::min(end_block, (nested + 1) * w.nested_blocksize);
    const float nested_scale = w.nested_absmax[nested];
    for (; b < stop; ++b) {
      volatile float product = w.nested_table[w.absmax_codes[b]] * nested_scale;
      decoded[size_t(b - first_block)] = product + w.nested_offset;
    }
  }
  return {decoded.data(), first_block, w.blocksize_shift};
}

float reduce_lanes(float lanes[16]) {
  for (int k = 0; k < 8; ++k) lanes[k] += lanes[k + 8];
  for (int k = 0; k < 4; ++k) lanes[k] += lanes[k + 4];
  for (int k = 0; k < 2; ++k) lanes[k] += lanes[k + 2];
  return lanes[0] + lanes[1];
}

// ---- reference ----

float reference_dot(const WeightView& w, const std::array<int8_t, 16>& table, int64_t row_first,
                    const PairedActivations& x, int64_t x_row) {
  const int64_t full_pairs = x.groups / 2;
  float lanes[16] = {};
  for (int64_t p = 0; p < x.pairs; ++p) {
    const int64_t first = row_first + 2 * p * kGroup;
    float absmax[2];
    pair_absmax(w, first, p < full_pairs, absmax);
    const int8_t* q = x.values.data() + (x_row * x.pairs + p) * 64;
    const float* unit_scales = x.unit_scales.data() + x_row * 2 * x.pairs + 2 * p;
    for (int half = 0; half < 2; ++half) {
      const bool present = 2 * p + half < x.groups;
      const float scale = absmax[half] * unit_scales[half];
      for (int parity = 0; parity < 2; ++parity) {
        for (int j = 0; j < 4; ++j) {
          int32_t product = 0;
          for (int t = 0; present && t < 4; ++t) {
            const int64_t e = 8 * j + 2 * t + parity;
            product += int32_t(table[size_t(code_at(w.codes, first + half * kGroup + e))]) *
                       int32_t(q[parity * 32 + half * 16 + 4 * j + t]);
          }
          float& lane = lanes[parity * 8 + half * 4 + j];
          lane = std::fma(float(product), scale, lane);
        }
      }
    }
  }
  return reduce_lanes(lanes);
}

void reference_rows(const WeightView& w, const std::array<int8_t, 16>& table, int64_t in_features,
                    const PairedActivations& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  for (int64_t r = row_begin; r < row_end; ++r)
    for (int64_t i = 0; i < x.rows; ++i) y[i * y_stride + r] = reference_dot(w, table, r * in_features, x, i);
}

#if LAMINA_Q4I8_X86

LAMINA_Q4I8_AVX2_TARGET inline float reduce_halves(__m256 low, __m256 high) {
  const __m256 eight = _mm256_add_ps(low, high);                                                   // k + k+8
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));  // k + k+4
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));                                  // k + k+2
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)));                              // 0 + 1
}

// The 32 code bytes of a pair (16 when `whole` is false, the rest zero) split into nibbles:
// `high` holds the even elements (group 0's 16, then group 1's), `low` the odd ones.
LAMINA_Q4I8_AVX2_TARGET inline void pair_nibbles(const uint8_t* codes, bool whole, __m256i& high, __m256i& low) {
  const __m256i bytes = whole ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes))
                              : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m256i mask = _mm256_set1_epi8(15);
  high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
  low = _mm256_and_si256(bytes, mask);
}

// ---- AVX2 ----

// WeightRows weight rows from `first_row` against ActivationRows activation rows from x_row.
template <int WeightRows, int ActivationRows>
LAMINA_Q4I8_AVX2_TARGET void avx2_tile(const WeightView& w, const BlockScales& scales, const std::array<int8_t, 16>& table,
                                       int64_t in_features,
                                       int64_t first_row, const PairedActivations& x, int64_t x_row, float* y,
                                       int64_t y_stride) {
  const __m256i signed_table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table.data())));
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i spread_pair = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const int64_t full_pairs = x.groups / 2;
  __m256 low_lanes[WeightRows][ActivationRows], high_lanes[WeightRows][ActivationRows];
  for (int k = 0; k < WeightRows; ++k)
    for (int i = 0; i < ActivationRows; ++i) low_lanes[k][i] = high_lanes[k][i] = _mm256_setzero_ps();
  for (int64_t p = 0; p < x.pairs; ++p) {
    const bool whole = p < full_pairs;
    __m256i even_q[ActivationRows], odd_q[ActivationRows];
    __m128 unit_scales[ActivationRows];
    for (int i = 0; i < ActivationRows; ++i) {
      const int8_t* q = x.values.data() + ((x_row + i) * x.pairs + p) * 64;
      even_q[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
      odd_q[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32));
      unit_scales[i] = _mm_castsi128_ps(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x.unit_scales.data() + (x_row + i) * 2 * x.pairs + 2 * p)));
    }
    for (int k = 0; k < WeightRows; ++k) {
      const int64_t first = (first_row + k) * in_features + 2 * p * kGroup;
      const uint8_t* codes = w.codes + first / 2;
      if (p + 16 < x.pairs) _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * kGroup), _MM_HINT_T0);
      __m256i high, low;
      pair_nibbles(codes, whole, high, low);
      const __m256i even_w = _mm256_shuffle_epi8(signed_table, high), odd_w = _mm256_shuffle_epi8(signed_table, low);
      const __m256i even_abs = _mm256_abs_epi8(even_w), odd_abs = _mm256_abs_epi8(odd_w);
      float absmax_pair[2];
      scales.pair(first, whole, absmax_pair);
      const __m128 absmax = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(absmax_pair)));
      for (int i = 0; i < ActivationRows; ++i) {
        const __m256i even = _mm256_madd_epi16(_mm256_maddubs_epi16(even_abs, _mm256_sign_epi8(even_q[i], even_w)), ones);
        const __m256i odd = _mm256_madd_epi16(_mm256_maddubs_epi16(odd_abs, _mm256_sign_epi8(odd_q[i], odd_w)), ones);
        // Lanes 0, 1: the same f32 products absmax * (d / 127) as the reference's, spread to 4 lanes each.
        const __m256 scale =
            _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_mul_ps(absmax, unit_scales[i])), spread_pair);
        low_lanes[k][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(even), scale, low_lanes[k][i]);
        high_lanes[k][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(odd), scale, high_lanes[k][i]);
      }
    }
  }
  for (int k = 0; k < WeightRows; ++k)
    for (int i = 0; i < ActivationRows; ++i)
      y[(x_row + i) * y_stride + first_row + k] = reduce_halves(low_lanes[k][i], high_lanes[k][i]);
}

// ---- AVX-512 VNNI ----

template <int WeightRows, int ActivationRows>
LAMINA_Q4I8_VNNI_TARGET void vnni_tile(const WeightView& w, const BlockScales& scales, const std::array<int8_t, 16>& table,
                                       int64_t in_features,
                                       int64_t first_row, const PairedActivations& x, int64_t x_row, float* y,
                                       int64_t y_stride) {
  // t + 128 (1..255) as unsigned bytes, in every 128-bit lane.
  const __m128i offset_table =
      _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table.data())), _mm_set1_epi8(char(0x80)));
  const __m512i unsigned_table = _mm512_broadcast_i32x4(offset_table);
  const __m512i spread_pair = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
  const int64_t full_pairs = x.groups / 2;
  __m512 lanes[WeightRows][ActivationRows];
  for (int k = 0; k < WeightRows; ++k)
    for (int i = 0; i < ActivationRows; ++i) lanes[k][i] = _mm512_setzero_ps();
  for (int64_t p = 0; p < x.pairs; ++p) {
    const bool whole = p < full_pairs;
    __m512i q[ActivationRows], start[ActivationRows];
    __m128 unit_scales[ActivationRows];
    for (int i = 0; i < ActivationRows; ++i) {
      const int64_t pair = (x_row + i) * x.pairs + p;
      q[i] = _mm512_loadu_si512(x.values.data() + pair * 64);
      // vpdpbusd adds onto its first operand: starting at -128 * (lane sum) removes the offset.
      start[i] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(_mm512_loadu_si512(x.lane_sums.data() + pair * 16), 7));
      unit_scales[i] = _mm_castsi128_ps(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x.unit_scales.data() + (x_row + i) * 2 * x.pairs + 2 * p)));
    }
    for (int k = 0; k < WeightRows; ++k) {
      const int64_t first = (first_row + k) * in_features + 2 * p * kGroup;
      const uint8_t* codes = w.codes + first / 2;
      // The hardware prefetcher follows one stream per row; this only starts it sooner.
      if (p + 16 < x.pairs) _mm_prefetch(reinterpret_cast<const char*>(codes + 16 * kGroup), _MM_HINT_T0);
      __m256i high, low;
      pair_nibbles(codes, whole, high, low);
      // Bytes 0..31 the even elements, 32..63 the odd ones: the activations' pair layout.
      const __m512i nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(high), low, 1);
      const __m512i weights = _mm512_shuffle_epi8(unsigned_table, nibbles);
      float absmax_pair[2];
      scales.pair(first, whole, absmax_pair);
      const __m128 absmax = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(absmax_pair)));
      for (int i = 0; i < ActivationRows; ++i) {
        const __m512i products = _mm512_dpbusd_epi32(start[i], weights, q[i]);
        const __m512 scale = _mm512_permutexvar_ps(spread_pair, _mm512_castps128_ps512(_mm_mul_ps(absmax, unit_scales[i])));
        lanes[k][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scale, lanes[k][i]);
      }
    }
  }
  for (int k = 0; k < WeightRows; ++k)
    for (int i = 0; i < ActivationRows; ++i) {
      const __m256 low = _mm512_castps512_ps256(lanes[k][i]);
      const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes[k][i]), 1));
      y[(x_row + i) * y_stride + first_row + k] = reduce_halves(low, high);
    }
}

// Tiles over [row_begin, row_end) x every activation row: for one activation row (decode) four
// weight rows share each pass over it; for more, up to four activation rows share each pass over
// two weight rows. Each output is still one weight row against one activation row in the lane
// order above, so the tiling never changes a result.
template <bool vnni>
void simd_rows(const WeightView& w, const std::array<int8_t, 16>& table, int64_t in_features,
               const PairedActivations& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  auto tile = [&]<int weight_rows, int activation_rows>(int64_t r, int64_t i) {
    const BlockScales scales = block_scales(w, r * in_features, (r + weight_rows) * in_features);
    if constexpr (vnni)
      vnni_tile<weight_rows, activation_rows>(w, scales, table, in_features, r, x, i, y, y_stride);
    else
      avx2_tile<weight_rows, activation_rows>(w, scales, table, in_features, r, x, i, y, y_stride);
  };
  if (x.rows == 1) {
    int64_t r = row_begin;
    for (; r + kWeightRowsAtOnce <= row_end; r += kWeightRowsAtOnce) tile.template operator()<kWeightRowsAtOnce, 1>(r, 0);
    switch (row_end - r) {
      case 3: tile.template operator()<3, 1>(r, 0); break;
      case 2: tile.template operator()<2, 1>(r, 0); break;
      case 1: tile.template operator()<1, 1>(r, 0); break;
      default: break;
    }
    return;
  }
  auto activation_groups = [&]<int weight_rows>(int64_t r) {
    for (int64_t i = 0; i < x.rows; i += kMaxActivationRows) {
      switch (std::min<int64_t>(kMaxActivationRows, x.rows - i)) {
        case 1: tile.template operator()<weight_rows, 1>(r, i); break;
        case 2: tile.template operator()<weight_rows, 2>(r, i); break;
        case 3: tile.template operator()<weight_rows, 3>(r, i); break;
        default: tile.template operator()<weight_rows, 4>(r, i); break;
      }
    }
  };
  int64_t r = row_begin;
  for (; r + 2 <= row_end; r += 2) activation_groups.template operator()<2>(r);
  if (r < row_end) activation_groups.template operator()<1>(r);
}

#endif  // LAMINA_Q4I8_X86

DotKernel kernel_of(GgufDotPath path) {
  switch (path) {
    case GgufDotPath::vnni:
      return DotKernel::vnni;
    case GgufDotPath::avx2:
      return DotKernel::avx2;
    default:
      return DotKernel::reference;
  }
}

}  // namespace

void pair_activations(const float* x, int64_t rows, int64_t cols, PairedActivations& out) {
  QuantizedActivations quantized;  // ggml's Q8_0 of x, in element order
  quantize_activations(x, rows, cols, quantized);
  out.rows = rows;
  out.cols = cols;
  out.groups = cols / kGroup;
  out.pairs = (out.groups + 1) / 2;
  out.values.assign(size_t(rows * out.pairs * 64), 0);
  out.unit_scales.assign(size_t(rows * out.pairs * 2), 0.0f);
  out.lane_sums.assign(size_t(rows * out.pairs * 16), 0);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t g = 0; g < out.groups; ++g) {
      const int8_t* q = quantized.values.data() + i * cols + g * kGroup;
      int8_t* pair = out.values.data() + (i * out.pairs + g / 2) * 64;
      const int half = int(g % 2);
      for (int e = 0; e < kGroup; ++e) pair[(e % 2) * 32 + half * 16 + e / 2] = q[e];
      // A group holding an infinity or a NaN has a NaN scale (quantize_activations): every
      // product with it is NaN, as in f32.
      out.unit_scales[size_t(i * 2 * out.pairs + g)] = quantized.scales[size_t(i * out.groups + g)] / 127.0f;
    }
    for (int64_t p = 0; p < out.pairs; ++p) {
      const int8_t* pair = out.values.data() + (i * out.pairs + p) * 64;
      int32_t* sums = out.lane_sums.data() + (i * out.pairs + p) * 16;
      for (int k = 0; k < 16; ++k)
        sums[k] = int32_t(pair[4 * k]) + pair[4 * k + 1] + pair[4 * k + 2] + pair[4 * k + 3];
    }
  }
}

void dot_rows(DotKernel kernel, const WeightView& w, const std::array<int8_t, 16>& table, int64_t in_features,
              const PairedActivations& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  LAMINA_CHECK(in_features % kGroup == 0 && x.cols == in_features, "matmul_4bit (int8): activations have ", x.cols,
               " columns, the weight rows ", in_features);
#if LAMINA_Q4I8_X86
  if (kernel == DotKernel::vnni) return simd_rows<true>(w, table, in_features, x, row_begin, row_end, y, y_stride);
  if (kernel == DotKernel::avx2) return simd_rows<false>(w, table, in_features, x, row_begin, row_end, y, y_stride);
#else
  LAMINA_CHECK(kernel == DotKernel::reference, "matmul_4bit (int8): only the reference kernel exists on this architecture");
#endif
  reference_rows(w, table, in_features, x, row_begin, row_end, y, y_stride);
}

bool applies(int64_t rows, const Quantized4Bit& q) {
  if (rows < 1 || rows > kMaxRows) return false;
  if (q.in_features() == 0 || q.in_features() % kGroup != 0) return false;
  if (quant4_decode_product() != Quant4DecodeProduct::int8) return false;
  const float* values = q.code_values.data<float>();
  return std::all_of(values, values + 16, [](float v) { return std::isfinite(v) && std::fabs(v) <= 1.0f; });
}

void matmul(float* out, const float* x, int64_t rows, const Quantized4Bit& q) {
  const int64_t out_features = q.out_features(), in_features = q.in_features();
  std::array<float, 16> code_values{};
  std::copy_n(q.code_values.data<float>(), 16, code_values.begin());
  const std::array<int8_t, 16> table = quant4_int8_code_table(code_values);
  const DotKernel kernel = kernel_of(gguf_dot_path());  // throws for a forced path this CPU lacks
  const WeightView w = quant4_detail::view_of(q);
  PairedActivations activations;
  pair_activations(x, rows, in_features, activations);
  // Every output is one row of W against one row of x, computed whole by one thread, so the
  // split never changes a result. A chunk holds at least kMinBytesPerThread of codes counted once
  // per x row.
  const int64_t row_bytes = in_features / 2;
  const int64_t grain = std::max<int64_t>(1, kMinBytesPerThread / std::max<int64_t>(1, row_bytes * rows));
  parallel_for(0, out_features, grain, [&](int64_t first, int64_t last) {
    dot_rows(kernel, w, table, in_features, activations, first, last, out, out_features);
  });
}

}  // namespace lamina::ops::cpu::quant4_int8
