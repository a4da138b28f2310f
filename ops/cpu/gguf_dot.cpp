// Integer dot products of Q8_0 / Q4_0 / Q4_1 weight rows with int8-quantized activations: the
// plain C++ reference that defines the result, an AVX2 path (vpmaddubsw) and an AVX-512 VNNI path
// (vpdpbusd). The summation order is spelled out in gguf_dot.h; every path follows it exactly,
// so all three give the same bits.
//
// Signs. Both instructions multiply an unsigned byte by a signed one, while Q8_0 and Q4_0
// weights and the activations are signed.
// - AVX2 (as ggml does): multiply |w| (unsigned; 128 for w = -128 still fits a u8) by q with w's
//   sign moved onto it (vpsignb; |q| <= 127, so negating cannot overflow). vpmaddubsw saturates
//   its int16 pair sums, but 2 * 128 * 127 = 32512 < 32767, so it never does here.
// - VNNI (an offset trick): feed w + 128 (Q8_0, a xor of the sign bit) or the raw nibble (Q4_0,
//   whose weight is nibble - 8) as the unsigned operand; the products then carry an extra
//   128 * (sum of 4 q) or 8 * (sum of 4 q), which is subtracted using the per-lane sums of q
//   computed once when the activations are quantized. One vpdpbusd per two blocks, no sign
//   juggling on the weight stream; vpdpbusd adds in int32 without saturation, so it is exact.
#include "ops/cpu/gguf_dot.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tensor/tensor.h"

// GCC 12 reports its own intrinsics' deliberately undefined pass-through operands as maybe
// uninitialized once they are inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#if defined(__x86_64__)
#include <immintrin.h>
#define LAMINA_QDOT_X86 1
#define LAMINA_QDOT_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))
#define LAMINA_QDOT_VNNI_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))
#endif

namespace lamina::ops::cpu {

using ggml::BlockType;

namespace {

constexpr int64_t kBlock = 32;
constexpr int kMaxActivationRows = 4;  // activation rows that share one pass over a weight row
constexpr int kWeightRowsAtOnce = 4;   // weight rows that share one pass over a single activation row
static_assert(kWeightRowsAtOnce == 4, "the Q4_1 min transposes take exactly four rows");

int64_t bytes_of(BlockType type) {
  switch (type) {
    case BlockType::q8_0:
      return 34;
    case BlockType::q4_0:
      return 18;
    case BlockType::q4_1:
      return 20;
    default:
      break;
  }
  throw Error(str_cat("gguf_dot: no integer kernel for ", ggml::block_type_name(type)));
}

// ---- reference ----

// The integer weight of element e (0..31) of a block.
int weight_integer(BlockType type, const uint8_t* block, int e) {
  switch (type) {
    case BlockType::q8_0:
      return int(int8_t(block[2 + e]));
    case BlockType::q4_0:
      return (e < 16 ? block[2 + e] & 15 : block[2 + e - 16] >> 4) - 8;
    default:
      return e < 16 ? block[4 + e] & 15 : block[4 + e - 16] >> 4;  // q4_1
  }
}

float reduce_lanes(float lanes[16]) {
  for (int k = 0; k < 8; ++k) lanes[k] += lanes[k + 8];
  for (int k = 0; k < 4; ++k) lanes[k] += lanes[k + 4];
  for (int k = 0; k < 2; ++k) lanes[k] += lanes[k + 2];
  return lanes[0] + lanes[1];
}

float reference_dot(BlockType type, const uint8_t* row, int64_t blocks, const QuantizedActivations& x, int64_t x_row) {
  const int64_t block_bytes = bytes_of(type);
  const int8_t* q = x.values.data() + x_row * x.cols;
  const float* scales = x.scales.data() + x_row * blocks;
  const float* scaled_sums = x.scaled_sums.data() + x_row * blocks;
  float lanes[16] = {};
  float min_sum = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = row + b * block_bytes;
    const float scale = ggml::half_to_float(block) * scales[b];
    for (int j = 0; j < 8; ++j) {
      int32_t product = 0;
      for (int e = 4 * j; e < 4 * j + 4; ++e) product += weight_integer(type, block, e) * int32_t(q[b * kBlock + e]);
      float& lane = lanes[(b % 2) * 8 + j];
      lane = std::fma(float(product), scale, lane);
    }
    if (type == BlockType::q4_1) min_sum = std::fma(ggml::half_to_float(block + 2), scaled_sums[b], min_sum);
  }
  return reduce_lanes(lanes) + min_sum;
}

void reference_rows(BlockType type, const uint8_t* weights, int64_t cols, const QuantizedActivations& x,
                    int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  const int64_t blocks = cols / kBlock, row_bytes = blocks * bytes_of(type);
  for (int64_t r = row_begin; r < row_end; ++r)
    for (int64_t i = 0; i < x.rows; ++i)
      y[i * y_stride + r] = reference_dot(type, weights + r * row_bytes, blocks, x, i);
}

#if LAMINA_QDOT_X86

// The 32 weights of a block as bytes: signed integers for Q8_0 and Q4_0 (nibble - 8 when
// `subtract_eight`), raw nibbles (0..15) otherwise.
LAMINA_QDOT_AVX2_TARGET inline __m256i weight_bytes(BlockType type, const uint8_t* block, bool subtract_eight) {
  if (type == BlockType::q8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + (type == BlockType::q4_1 ? 4 : 2)));
  const __m128i low_mask = _mm_set1_epi8(15);
  const __m128i low = _mm_and_si128(packed, low_mask), high = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
  const __m256i nibbles = _mm256_set_m128i(high, low);
  return subtract_eight ? _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8)) : nibbles;
}

LAMINA_QDOT_AVX2_TARGET inline float block_scale(const uint8_t* block) {
  uint16_t bits;
  std::memcpy(&bits, block, 2);
  return _cvtsh_ss(bits);  // f16 -> f32 is exact, so this equals ggml::half_to_float
}

LAMINA_QDOT_AVX2_TARGET inline float reduce_halves(__m256 even, __m256 odd) {
  const __m256 eight = _mm256_add_ps(even, odd);                                                   // k + k+8
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));  // k + k+4
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));                                  // k + k+2
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)));                              // 0 + 1
}

// ---- AVX2 ----

LAMINA_QDOT_AVX2_TARGET inline __m256 avx2_lane_products(BlockType type, __m256i weights, const int8_t* q) {
  const __m256i activations = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  const __m256i pairs = type == BlockType::q4_1
                            ? _mm256_maddubs_epi16(weights, activations)
                            : _mm256_maddubs_epi16(_mm256_abs_epi8(weights), _mm256_sign_epi8(activations, weights));
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

// Block b of one weight row into `accumulators` (the even or the odd lanes) of `count` activation rows.
template <BlockType type, int count>
LAMINA_QDOT_AVX2_TARGET inline void avx2_block(const uint8_t* block, int64_t b, const int8_t* const* q,
                                               const float* const* scales, const float* const* scaled_sums,
                                               __m256* accumulators, float* min_sum) {
  const __m256i weights = weight_bytes(type, block, type == BlockType::q4_0);
  const float weight_scale = block_scale(block);
  for (int i = 0; i < count; ++i) {
    const __m256 products = avx2_lane_products(type, weights, q[i] + b * kBlock);
    accumulators[i] = _mm256_fmadd_ps(products, _mm256_set1_ps(weight_scale * scales[i][b]), accumulators[i]);
    if constexpr (type == BlockType::q4_1) min_sum[i] = std::fma(block_scale(block + 2), scaled_sums[i][b], min_sum[i]);
  }
}

template <BlockType type, int count>
LAMINA_QDOT_AVX2_TARGET void avx2_row(const uint8_t* row, int64_t blocks, const QuantizedActivations& x, int64_t x_row,
                                      float* y, int64_t y_stride) {
  constexpr int64_t block_bytes = type == BlockType::q8_0 ? 34 : type == BlockType::q4_0 ? 18 : 20;
  __m256 even[count], odd[count];
  float min_sum[count];
  const int8_t* q[count];
  const float* scales[count];
  const float* scaled_sums[count];
  for (int i = 0; i < count; ++i) {
    even[i] = odd[i] = _mm256_setzero_ps();
    min_sum[i] = 0;
    q[i] = x.values.data() + (x_row + i) * x.cols;
    scales[i] = x.scales.data() + (x_row + i) * blocks;
    scaled_sums[i] = x.scaled_sums.data() + (x_row + i) * blocks;
  }
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    if (b + 16 < blocks) _mm_prefetch(reinterpret_cast<const char*>(row + (b + 16) * block_bytes), _MM_HINT_T0);
    avx2_block<type, count>(row + b * block_bytes, b, q, scales, scaled_sums, even, min_sum);
    avx2_block<type, count>(row + (b + 1) * block_bytes, b + 1, q, scales, scaled_sums, odd, min_sum);
  }
  if (b < blocks) avx2_block<type, count>(row + b * block_bytes, b, q, scales, scaled_sums, even, min_sum);
  for (int i = 0; i < count; ++i) y[i * y_stride] = reduce_halves(even[i], odd[i]) + min_sum[i];
}

// The rows' Q4_1 mins side by side: lane k of first_mins (second_mins) is lane 2 (3) of
// converted[k], row k's first (second) block's m.
LAMINA_QDOT_AVX2_TARGET inline void transpose_mins(const __m128* converted, __m128& first_mins, __m128& second_mins) {
  const __m128 rows01 = _mm_unpackhi_ps(converted[0], converted[1]);  // m1 r0, m1 r1, m2 r0, m2 r1
  const __m128 rows23 = _mm_unpackhi_ps(converted[2], converted[3]);
  first_mins = _mm_movelh_ps(rows01, rows23);
  second_mins = _mm_movehl_ps(rows23, rows01);
}

// The f16 d (and, for Q4_1, m) of two blocks as f32 d1 d2 m1 m2: the first 4 bytes of each block
// interleaved (for Q8_0 and Q4_0, lanes 2 and 3 are quant bytes and go unused); f16 -> f32 is exact.
LAMINA_QDOT_AVX2_TARGET inline __m128 pair_halves(const uint8_t* first, const uint8_t* second) {
  return _mm_cvtph_ps(_mm_unpacklo_epi16(_mm_loadu_si32(first), _mm_loadu_si32(second)));
}

// One activation row (decode) against `weight_rows` weight rows in one pass, with independent
// accumulators per row and Q4_1's min terms in the lanes of one vector (lane k follows row k's
// scalar chain of avx2_row exactly): the same summation order per row as avx2_row.
template <BlockType type, int weight_rows>
LAMINA_QDOT_AVX2_TARGET void avx2_weight_rows(const uint8_t* first_row, int64_t row_bytes, int64_t blocks,
                                              const QuantizedActivations& x, float* y) {
  static_assert(weight_rows >= 1 && weight_rows <= kWeightRowsAtOnce);
  constexpr int64_t block_bytes = type == BlockType::q8_0 ? 34 : type == BlockType::q4_0 ? 18 : 20;
  const int8_t* q = x.values.data();
  const float* scales = x.scales.data();
  const float* scaled_sums = x.scaled_sums.data();
  __m256 even[weight_rows], odd[weight_rows];
  for (int k = 0; k < weight_rows; ++k) even[k] = odd[k] = _mm256_setzero_ps();
  __m128 min_sums = _mm_setzero_ps();  // lane k: row k's min term (Q4_1)
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const __m128 activation_scales = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + b)));
    __m128 converted[kWeightRowsAtOnce];
    for (int k = 0; k < weight_rows; ++k) {
      const uint8_t* first = first_row + k * row_bytes + b * block_bytes;
      const uint8_t* second = first + block_bytes;
      converted[k] = pair_halves(first, second);
      const __m128 pair_scales = _mm_mul_ps(converted[k], activation_scales);  // lanes 0, 1: d_w * d_x
      const __m256 first_products =
          avx2_lane_products(type, weight_bytes(type, first, type == BlockType::q4_0), q + b * kBlock);
      const __m256 second_products =
          avx2_lane_products(type, weight_bytes(type, second, type == BlockType::q4_0), q + (b + 1) * kBlock);
      even[k] = _mm256_fmadd_ps(first_products, _mm256_broadcastss_ps(pair_scales), even[k]);
      odd[k] = _mm256_fmadd_ps(second_products, _mm256_broadcastss_ps(_mm_movehdup_ps(pair_scales)), odd[k]);
    }
    if constexpr (type == BlockType::q4_1) {
      for (int k = weight_rows; k < kWeightRowsAtOnce; ++k) converted[k] = _mm_setzero_ps();  // unused lanes
      __m128 first_mins, second_mins;
      transpose_mins(converted, first_mins, second_mins);
      min_sums = _mm_fmadd_ps(first_mins, _mm_set1_ps(scaled_sums[b]), min_sums);
      min_sums = _mm_fmadd_ps(second_mins, _mm_set1_ps(scaled_sums[b + 1]), min_sums);
    }
  }
  float min_sum[kWeightRowsAtOnce];
  _mm_storeu_ps(min_sum, min_sums);
  if (b < blocks) {  // a last even block
    for (int k = 0; k < weight_rows; ++k) {
      const uint8_t* block = first_row + k * row_bytes + b * block_bytes;
      const __m256 products =
          avx2_lane_products(type, weight_bytes(type, block, type == BlockType::q4_0), q + b * kBlock);
      even[k] = _mm256_fmadd_ps(products, _mm256_set1_ps(block_scale(block) * scales[b]), even[k]);
      if constexpr (type == BlockType::q4_1) min_sum[k] = std::fma(block_scale(block + 2), scaled_sums[b], min_sum[k]);
    }
  }
  for (int k = 0; k < weight_rows; ++k) y[k] = reduce_halves(even[k], odd[k]) + min_sum[k];
}

// ---- AVX-512 VNNI ----

// The unsigned operand of vpdpbusd: w + 128 for Q8_0 (the sign bit flipped), the raw nibbles for
// Q4_0 and Q4_1.
template <BlockType type>
LAMINA_QDOT_VNNI_TARGET inline __m256i vnni_unsigned_weights(const uint8_t* block) {
  const __m256i bytes = weight_bytes(type, block, false);
  return type == BlockType::q8_0 ? _mm256_xor_si256(bytes, _mm256_set1_epi8(char(0x80))) : bytes;
}

// The unsigned operands of two consecutive blocks in one register, lanes 0..7 from the first.
// For the 4-bit types both blocks' 16 packed bytes go into one YMM, which a qword permute spreads
// to [first, first, second, second] in 128-bit quarters; shifting the odd quarters right by 4
// and masking then gives low nibbles (elements 0..15) and high ones (16..31) in element order.
template <BlockType type>
LAMINA_QDOT_VNNI_TARGET inline __m512i vnni_unsigned_pair(const uint8_t* first, const uint8_t* second) {
  if constexpr (type == BlockType::q8_0) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(vnni_unsigned_weights<type>(first)),
                              vnni_unsigned_weights<type>(second), 1);
  } else {
    constexpr int offset = type == BlockType::q4_1 ? 4 : 2;
    const __m256i packed = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(first + offset))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(second + offset)), 1);
    const __m512i spread =
        _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), _mm512_castsi256_si512(packed));
    constexpr long long kFour = 0x0004000400040004;  // a shift of 4 in each 16-bit element
    const __m512i shifted = _mm512_srlv_epi16(spread, _mm512_set_epi64(kFour, kFour, 0, 0, kFour, kFour, 0, 0));
    return _mm512_and_si512(shifted, _mm512_set1_epi8(15));
  }
}

template <BlockType type, int count>
LAMINA_QDOT_VNNI_TARGET void vnni_row(const uint8_t* row, int64_t blocks, const QuantizedActivations& x, int64_t x_row,
                                      float* y, int64_t y_stride) {
  constexpr int64_t block_bytes = type == BlockType::q8_0 ? 34 : type == BlockType::q4_0 ? 18 : 20;
  constexpr int offset_shift = type == BlockType::q8_0 ? 7 : type == BlockType::q4_0 ? 3 : 0;  // 128 or 8
  __m512 accumulators[count];
  float min_sum[count];
  const int8_t* q[count];
  const int32_t* lane_sums[count];
  const float* scales[count];
  const float* scaled_sums[count];
  for (int i = 0; i < count; ++i) {
    accumulators[i] = _mm512_setzero_ps();
    min_sum[i] = 0;
    q[i] = x.values.data() + (x_row + i) * x.cols;
    lane_sums[i] = x.lane_sums.data() + (x_row + i) * (x.cols / 4);
    scales[i] = x.scales.data() + (x_row + i) * blocks;
    scaled_sums[i] = x.scaled_sums.data() + (x_row + i) * blocks;
  }
  const __m512i spread_pair = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const uint8_t* first = row + b * block_bytes;
    const uint8_t* second = first + block_bytes;
    // The hardware prefetcher follows one stream per row; this only starts it sooner.
    if (b + 16 < blocks) _mm_prefetch(reinterpret_cast<const char*>(first + 16 * block_bytes), _MM_HINT_T0);
    const __m512i weights = vnni_unsigned_pair<type>(first, second);
    // Both f16 weight scales converted at once; each product with the activation scales is the
    // same f32 multiplication as the reference's, then spread to lanes 0..7 and 8..15.
    uint16_t first_bits, second_bits;
    std::memcpy(&first_bits, first, 2);
    std::memcpy(&second_bits, second, 2);
    const __m128 weight_scales = _mm_cvtph_ps(_mm_cvtsi32_si128(int(first_bits | (uint32_t(second_bits) << 16))));
    for (int i = 0; i < count; ++i) {
      const __m512i activations = _mm512_loadu_si512(q[i] + b * kBlock);
      __m512i products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, activations);
      if constexpr (offset_shift != 0)
        products =
            _mm512_sub_epi32(products, _mm512_slli_epi32(_mm512_loadu_si512(lane_sums[i] + b * 8), offset_shift));
      const __m128 pair_scales =
          _mm_mul_ps(weight_scales, _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales[i] + b))));
      const __m512 scale = _mm512_permutexvar_ps(spread_pair, _mm512_castps128_ps512(pair_scales));
      accumulators[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scale, accumulators[i]);
      if constexpr (type == BlockType::q4_1) {
        min_sum[i] = std::fma(block_scale(first + 2), scaled_sums[i][b], min_sum[i]);
        min_sum[i] = std::fma(block_scale(second + 2), scaled_sums[i][b + 1], min_sum[i]);
      }
    }
  }
  if (b < blocks) {  // a last even block: only lanes 0..7 take it
    const uint8_t* block = row + b * block_bytes;
    const __m512i weights = _mm512_zextsi256_si512(vnni_unsigned_weights<type>(block));
    const float weight_scale = block_scale(block);
    for (int i = 0; i < count; ++i) {
      const __m512i activations =
          _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[i] + b * kBlock)));
      __m512i products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, activations);
      if constexpr (offset_shift != 0) {
        const __m512i sums =
            _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lane_sums[i] + b * 8)));
        products = _mm512_sub_epi32(products, _mm512_slli_epi32(sums, offset_shift));
      }
      accumulators[i] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(products), _mm512_set1_ps(weight_scale * scales[i][b]),
                                              accumulators[i], __mmask16(0x00FF));
      if constexpr (type == BlockType::q4_1)
        min_sum[i] = std::fma(block_scale(block + 2), scaled_sums[i][b], min_sum[i]);
    }
  }
  for (int i = 0; i < count; ++i) {
    const __m256 low = _mm512_castps512_ps256(accumulators[i]);
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(accumulators[i]), 1));
    y[i * y_stride] = reduce_halves(low, high) + min_sum[i];
  }
}

// One activation row (decode) against kWeightRowsAtOnce weight rows in one pass: the activation
// blocks and their offsets are loaded once for all of them, and each weight row has its own
// accumulator, so the rows' FMA chains are independent. The weights' f16 scales (and Q4_1's
// mins) of two blocks are converted by one vcvtph2ps, and Q4_1's min terms of the rows run in the
// lanes of one vector, lane k following exactly row k's scalar chain of vnni_row. Nothing in the
// summation order of any one row changes, so results equal vnni_row's (and the reference's).

template <BlockType type, int weight_rows>
LAMINA_QDOT_VNNI_TARGET void vnni_weight_rows(const uint8_t* first_row, int64_t row_bytes, int64_t blocks,
                                              const QuantizedActivations& x, float* y) {
  static_assert(weight_rows >= 1 && weight_rows <= kWeightRowsAtOnce);
  constexpr int64_t block_bytes = type == BlockType::q8_0 ? 34 : type == BlockType::q4_0 ? 18 : 20;
  constexpr int offset_shift = type == BlockType::q8_0 ? 7 : type == BlockType::q4_0 ? 3 : 0;  // 128 or 8
  const int8_t* q = x.values.data();
  const int32_t* lane_sums = x.lane_sums.data();
  const float* scales = x.scales.data();
  const float* scaled_sums = x.scaled_sums.data();
  __m512 accumulators[weight_rows];
  for (int k = 0; k < weight_rows; ++k) accumulators[k] = _mm512_setzero_ps();
  __m128 min_sums = _mm_setzero_ps();  // lane k: row k's min term (Q4_1)
  const __m512i spread_pair = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const __m512i activations = _mm512_loadu_si512(q + b * kBlock);
    // vpdpbusd adds onto its first operand, so starting from minus the offsets subtracts them
    // exactly (the same integers as vnni_row's separate subtraction).
    __m512i start = _mm512_setzero_si512();
    if constexpr (offset_shift != 0)
      start = _mm512_sub_epi32(start, _mm512_slli_epi32(_mm512_loadu_si512(lane_sums + b * 8), offset_shift));
    const __m128 activation_scales = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + b)));
    // Per row: lanes 0, 1 the two blocks' weight scales d; for Q4_1 lanes 2, 3 their mins m.
    __m128 converted[kWeightRowsAtOnce];
    for (int k = 0; k < weight_rows; ++k) {
      const uint8_t* first = first_row + k * row_bytes + b * block_bytes;
      const uint8_t* second = first + block_bytes;
      // The hardware prefetcher follows one stream per row; this only starts it sooner.
      if (b + 16 < blocks) _mm_prefetch(reinterpret_cast<const char*>(first + 16 * block_bytes), _MM_HINT_T0);
      converted[k] = pair_halves(first, second);  // d1 d2 (m1 m2)
      const __m512i weights = vnni_unsigned_pair<type>(first, second);
      const __m512i products = _mm512_dpbusd_epi32(start, weights, activations);
      // Lanes 0, 1: the same f32 products d_w * d_x as the reference's.
      const __m128 pair_scales = _mm_mul_ps(converted[k], activation_scales);
      const __m512 scale = _mm512_permutexvar_ps(spread_pair, _mm512_castps128_ps512(pair_scales));
      accumulators[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scale, accumulators[k]);
    }
    if constexpr (type == BlockType::q4_1) {
      for (int k = weight_rows; k < kWeightRowsAtOnce; ++k) converted[k] = _mm_setzero_ps();  // unused lanes
      __m128 first_mins, second_mins;
      transpose_mins(converted, first_mins, second_mins);
      min_sums = _mm_fmadd_ps(first_mins, _mm_set1_ps(scaled_sums[b]), min_sums);
      min_sums = _mm_fmadd_ps(second_mins, _mm_set1_ps(scaled_sums[b + 1]), min_sums);
    }
  }
  float min_sum[kWeightRowsAtOnce];
  _mm_storeu_ps(min_sum, min_sums);
  if (b < blocks) {  // a last even block: only lanes 0..7 take it
    const __m512i activations =
        _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + b * kBlock)));
    __m512i offsets = _mm512_setzero_si512();
    if constexpr (offset_shift != 0)
      offsets = _mm512_slli_epi32(
          _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lane_sums + b * 8))),
          offset_shift);
    for (int k = 0; k < weight_rows; ++k) {
      const uint8_t* block = first_row + k * row_bytes + b * block_bytes;
      const __m512i weights = _mm512_zextsi256_si512(vnni_unsigned_weights<type>(block));
      __m512i products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, activations);
      if constexpr (offset_shift != 0) products = _mm512_sub_epi32(products, offsets);
      accumulators[k] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(products),
                                              _mm512_set1_ps(block_scale(block) * scales[b]), accumulators[k],
                                              __mmask16(0x00FF));
      if constexpr (type == BlockType::q4_1) min_sum[k] = std::fma(block_scale(block + 2), scaled_sums[b], min_sum[k]);
    }
  }
  for (int k = 0; k < weight_rows; ++k) {
    const __m256 low = _mm512_castps512_ps256(accumulators[k]);
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(accumulators[k]), 1));
    y[k] = reduce_halves(low, high) + min_sum[k];
  }
}

// One weight row against every activation row, kMaxActivationRows at a time, so that each
// weight block is loaded and unpacked once per group; a single activation row (decode) goes to
// vnni_weight_rows / avx2_weight_rows instead, kWeightRowsAtOnce weight rows at a time.
template <BlockType type, bool vnni>
void simd_rows(const uint8_t* weights, int64_t cols, const QuantizedActivations& x, int64_t row_begin, int64_t row_end,
               float* y, int64_t y_stride) {
  constexpr int64_t block_bytes = type == BlockType::q8_0 ? 34 : type == BlockType::q4_0 ? 18 : 20;
  const int64_t blocks = cols / kBlock, row_bytes = blocks * block_bytes;
  if (x.rows == 1) {  // decode: several weight rows share each pass over the activation row
    auto run = [&]<int weight_rows>(int64_t r) {
      if constexpr (vnni)
        vnni_weight_rows<type, weight_rows>(weights + r * row_bytes, row_bytes, blocks, x, y + r);
      else
        avx2_weight_rows<type, weight_rows>(weights + r * row_bytes, row_bytes, blocks, x, y + r);
    };
    int64_t r = row_begin;
    for (; r + kWeightRowsAtOnce <= row_end; r += kWeightRowsAtOnce) run.template operator()<kWeightRowsAtOnce>(r);
    switch (row_end - r) {
      case 3:
        run.template operator()<3>(r);
        break;
      case 2:
        run.template operator()<2>(r);
        break;
      case 1:
        run.template operator()<1>(r);
        break;
      default:
        break;
    }
    return;
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = weights + r * row_bytes;
    for (int64_t i = 0; i < x.rows; i += kMaxActivationRows) {
      float* out = y + i * y_stride + r;
      const int64_t group = std::min<int64_t>(kMaxActivationRows, x.rows - i);
      auto run = [&]<int count>() {
        if constexpr (vnni)
          vnni_row<type, count>(row, blocks, x, i, out, y_stride);
        else
          avx2_row<type, count>(row, blocks, x, i, out, y_stride);
      };
      switch (group) {
        case 1:
          run.template operator()<1>();
          break;
        case 2:
          run.template operator()<2>();
          break;
        case 3:
          run.template operator()<3>();
          break;
        default:
          run.template operator()<4>();
          break;
      }
    }
  }
}

template <bool vnni>
void simd_dispatch(BlockType type, const uint8_t* weights, int64_t cols, const QuantizedActivations& x,
                   int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  switch (type) {
    case BlockType::q8_0:
      return simd_rows<BlockType::q8_0, vnni>(weights, cols, x, row_begin, row_end, y, y_stride);
    case BlockType::q4_0:
      return simd_rows<BlockType::q4_0, vnni>(weights, cols, x, row_begin, row_end, y, y_stride);
    case BlockType::q4_1:
      return simd_rows<BlockType::q4_1, vnni>(weights, cols, x, row_begin, row_end, y, y_stride);
    default:
      break;
  }
  throw Error(str_cat("gguf_dot: no integer kernel for ", ggml::block_type_name(type)));
}

#endif  // LAMINA_QDOT_X86

}  // namespace

void quantize_activations(const float* x, int64_t rows, int64_t cols, QuantizedActivations& out) {
  LAMINA_CHECK(cols % kBlock == 0, "gguf_dot: ", cols, " activations a row are not whole blocks of 32");
  const int64_t blocks = cols / kBlock;
  out.rows = rows;
  out.cols = cols;
  out.values.resize(size_t(rows * cols));
  out.scales.resize(size_t(rows * blocks));
  out.scaled_sums.resize(size_t(rows * blocks));
  out.lane_sums.resize(size_t(rows * cols / 4));
  for (int64_t block = 0; block < rows * blocks; ++block) {
    const float* values = x + block * kBlock;
    int8_t* q = out.values.data() + block * kBlock;
    // std::max would skip a NaN (every comparison with it is false), so finiteness is its own test.
    float largest = 0;
    bool finite = true;
    for (int e = 0; e < kBlock; ++e) {
      finite = finite && std::isfinite(values[e]);
      largest = std::max(largest, std::fabs(values[e]));
    }
    int32_t sum = 0;
    if (finite) {
      const float scale = largest / 127.0f;
      const float inverse = scale != 0 ? 1.0f / scale : 0.0f;
      for (int e = 0; e < kBlock; ++e) {
        // Round half to even; |values[e] * inverse| <= 127 (up to rounding of the inverse, which
        // cannot reach 127.5), so the byte never overflows.
        q[e] = int8_t(std::nearbyint(values[e] * inverse));
        sum += q[e];
      }
      out.scales[size_t(block)] = scale;
    } else {
      // An infinite or NaN activation: a NaN scale makes every product with this block NaN, as
      // the f32 product would be (or an infinity's sign would be lost anyway).
      std::memset(q, 0, kBlock);
      out.scales[size_t(block)] = std::nanf("");
    }
    out.scaled_sums[size_t(block)] = out.scales[size_t(block)] * float(sum);
    for (int j = 0; j < 8; ++j)
      out.lane_sums[size_t(block * 8 + j)] = int32_t(q[4 * j]) + q[4 * j + 1] + q[4 * j + 2] + q[4 * j + 3];
  }
}

void gguf_dot_rows(DotKernel kernel, BlockType type, const uint8_t* weights, int64_t cols,
                   const QuantizedActivations& x, int64_t row_begin, int64_t row_end, float* y, int64_t y_stride) {
  LAMINA_CHECK(cols % kBlock == 0 && x.cols == cols, "gguf_dot: activations have ", x.cols, " columns, weights ", cols);
#if LAMINA_QDOT_X86
  if (kernel == DotKernel::vnni) return simd_dispatch<true>(type, weights, cols, x, row_begin, row_end, y, y_stride);
  if (kernel == DotKernel::avx2) return simd_dispatch<false>(type, weights, cols, x, row_begin, row_end, y, y_stride);
#else
  LAMINA_CHECK(kernel == DotKernel::reference, "gguf_dot: only the reference kernel exists on this architecture");
#endif
  reference_rows(type, weights, cols, x, row_begin, row_end, y, y_stride);
}

}  // namespace lamina::ops::cpu
