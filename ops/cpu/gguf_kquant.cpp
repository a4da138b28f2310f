// Q4_K and Q6_K matrix products on the CPU (see gguf_kquant.h for the arithmetic and its error).
//
// Shape of the work: the activations are quantized once (all paths share that step, so their
// integer sums can be compared exactly); then each thread takes a range of rows of W. For each
// row the chosen path's kernel walks the row's super-blocks once, unpacks each block into
// registers and computes the block's integer sums for every x row (four x rows at a time, so
// that their horizontal sums share shuffles). A weight byte is therefore read from memory once
// per product, and for decode (n = 1) the rows of W stream through exactly once.
//
// The kernels only produce integers; the f32 combination lives in the one driver function
// shared by every path, so no path can differ in a rounding (or in whether the compiler fused a
// multiply and an add).
#include "ops/cpu/gguf_kquant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ops/cpu/cpu_features.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

constexpr int64_t kSuperBlock = 256;
constexpr int64_t kQ4KBytes = 144;  // d, dmin (f16), 12 bytes of scales, 128 bytes of nibbles
constexpr int64_t kQ6KBytes = 210;  // 128 bytes low nibbles, 64 bytes high bits, 16 scales, d

// IEEE half to float, exact, without F16C (the driver that calls it is built for any x86-64).
// Moving the exponent and mantissa into a float's fields and multiplying by 2^112 rebiases the
// exponent (15 to 127) and turns half subnormals into the right float normals in one exact step;
// only infinities and NaNs, whose exponent field must stay all ones, need their own branch.
float half_bits_to_float(const uint8_t* p) {
  const uint32_t h = uint32_t(p[0]) | (uint32_t(p[1]) << 8);
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t bits = (h & 0x7FFFu) << 13;
  if ((h & 0x7C00u) == 0x7C00u) {
    bits = sign | 0x7F800000u | bits;
  } else {
    float magnitude;
    std::memcpy(&magnitude, &bits, 4);
    magnitude *= 0x1p112f;
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  }
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

// The activations of n rows, quantized per super-block: values[i * cols + k] (int8 in
// [-127, 127]), scale[i * blocks + b], and the sum of each 16 consecutive quantized values,
// sums16[(i * blocks + b) * 16 + j].
struct QuantizedActivations {
  int64_t n = 0, cols = 0, blocks = 0;
  std::vector<int8_t> values;
  std::vector<float> scale;
  std::vector<int16_t> sums16;
};

QuantizedActivations quantize_activations(const float* x, int64_t n, int64_t cols) {
  QuantizedActivations q;
  q.n = n;
  q.cols = cols;
  q.blocks = cols / kSuperBlock;
  q.values.resize(size_t(n * cols));
  q.scale.resize(size_t(n * q.blocks));
  q.sums16.resize(size_t(n * q.blocks * 16));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < q.blocks; ++b) {
      const float* source = x + i * cols + b * kSuperBlock;
      int8_t* target = q.values.data() + i * cols + b * kSuperBlock;
      float max_abs = 0.0f;
      bool finite = true;
      for (int64_t k = 0; k < kSuperBlock; ++k) {
        finite &= std::isfinite(source[k]);
        max_abs = std::max(max_abs, std::fabs(source[k]));
      }
      // A NaN or infinite activation makes the scale NaN, so every output of this x row is NaN
      // rather than a silently finite number.
      const bool usable = finite && max_abs > 0.0f;
      const float inverse = usable ? 127.0f / max_abs : 0.0f;
      // Round to nearest, ties to even, as lrint does in the default rounding mode: adding and
      // subtracting 1.5 * 2^23 leaves an integer in the f32 (|value| <= 127 is far below 2^22).
      // lrint itself is a library call per value, a tenth of a decode product's time.
      constexpr float kRounder = 12582912.0f;
      for (int64_t k = 0; k < kSuperBlock; ++k) {
        const float scaled = std::clamp(source[k] * inverse, -127.0f, 127.0f);
        target[k] = usable ? int8_t(int((scaled + kRounder) - kRounder)) : int8_t(0);
      }
      q.scale[size_t(i * q.blocks + b)] = finite ? max_abs / 127.0f : std::numeric_limits<float>::quiet_NaN();
      int16_t* sums = q.sums16.data() + (i * q.blocks + b) * 16;
      for (int j = 0; j < 16; ++j) {
        int sum = 0;
        for (int k = 0; k < 16; ++k) sum += target[16 * j + k];
        sums[j] = int16_t(sum);
      }
    }
  }
  return q;
}

// Q4_K's eight 6-bit scales and eight 6-bit mins, unpacked from ggml's 12-byte packing into one
// byte each (byte j of `scales` is sub-block j's scale). Sub-blocks 0..3 keep the low 6 bits of
// bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits from a nibble of
// bytes 8..11 and their top 2 bits from the spare top bits of bytes 0..7. Done on 32-bit words,
// four sub-blocks at once, because it runs once per block and decode is short of time per block.
struct Q4KScales {
  uint64_t scales, mins;
};

Q4KScales q4k_unpack_scales(const uint8_t* packed) {
  uint32_t words[3];
  std::memcpy(words, packed, 12);
  const uint32_t six_bits = 0x3F3F3F3Fu, four_bits = 0x0F0F0F0Fu, two_bits = 0x03030303u;
  const uint32_t scales_low = words[0] & six_bits, mins_low = words[1] & six_bits;
  const uint32_t scales_high = (words[2] & four_bits) | (((words[0] >> 6) & two_bits) << 4);
  const uint32_t mins_high = ((words[2] >> 4) & four_bits) | (((words[1] >> 6) & two_bits) << 4);
  return {uint64_t(scales_low) | (uint64_t(scales_high) << 32), uint64_t(mins_low) | (uint64_t(mins_high) << 32)};
}

int32_t byte_of(uint64_t bytes, int j) { return int32_t((bytes >> (8 * j)) & 0xFF); }

// The arguments of every kernel: one row of W (`blocks` super-blocks of block_bytes each from
// `block`) and the n x rows (row i's quantized values at values + i * value_stride, its 16-sums
// at sums16 + i * sums_stride). For block b and x row i a kernel writes dots[b * n + i] (Q4_K:
// sum_j sc_j <q4_j, q8_j>; Q6_K: sum_j s_j <q6_j - 32, q8_j>) and, for Q4_K, mins[b * n + i] =
// sum_j m_j * sum(q8_j). A kernel call covers a whole row so that its constants and the call
// itself are paid once per row, not per block.
struct BlockArgs {
  const uint8_t* block;
  int64_t blocks, block_bytes;
  const int8_t* values;
  int64_t value_stride;
  const int16_t* sums16;
  int64_t sums_stride;
  int64_t n;
  int32_t* dots;
  int32_t* mins;

  // The arguments for block b alone.
  BlockArgs at(int64_t b) const {
    BlockArgs one = *this;
    one.block = block + b * block_bytes;
    one.blocks = 1;
    one.values = values + b * kSuperBlock;
    one.sums16 = sums16 + b * 16;
    one.dots = dots + b * n;
    one.mins = mins + b * n;
    return one;
  }
};
using RowKernel = void (*)(const BlockArgs&);

// The Q4_K min term, the same integer for every path.
void q4k_min_terms(const BlockArgs& a, uint64_t mins) {
  for (int64_t i = 0; i < a.n; ++i) {
    const int16_t* sums = a.sums16 + i * a.sums_stride;
    int32_t total = 0;
    for (int j = 0; j < 8; ++j) total += byte_of(mins, j) * (int32_t(sums[2 * j]) + int32_t(sums[2 * j + 1]));
    a.mins[i] = total;
  }
}

// ---- Plain C++ reference: defines the integer sums.

void q4k_row_reference(const BlockArgs& row) {
  for (int64_t b = 0; b < row.blocks; ++b) {
    const BlockArgs a = row.at(b);
    const Q4KScales unpacked = q4k_unpack_scales(a.block + 4);
    int32_t scales[8];
    for (int j = 0; j < 8; ++j) scales[j] = byte_of(unpacked.scales, j);
    const uint8_t* nibbles = a.block + 16;
    for (int64_t i = 0; i < a.n; ++i) {
      const int8_t* q8 = a.values + i * a.value_stride;
      int32_t total = 0;
      for (int chunk = 0; chunk < 4; ++chunk) {  // 64 values: sub-block 2c in the low nibbles, 2c+1 high
        int32_t low = 0, high = 0;
        for (int l = 0; l < 32; ++l) {
          const uint8_t byte = nibbles[32 * chunk + l];
          low += int32_t(byte & 0xF) * q8[64 * chunk + l];
          high += int32_t(byte >> 4) * q8[64 * chunk + 32 + l];
        }
        total += scales[2 * chunk] * low + scales[2 * chunk + 1] * high;
      }
      a.dots[i] = total;
    }
    q4k_min_terms(a, unpacked.mins);
  }
}

void q6k_row_reference(const BlockArgs& row) {
  for (int64_t b = 0; b < row.blocks; ++b) {
    const BlockArgs a = row.at(b);
    // The 256 signed 6-bit values in natural order, as ggml's dequantization places them.
    int32_t weights[256];
    const uint8_t* low = a.block;
    const uint8_t* high = a.block + 128;
    for (int half = 0; half < 2; ++half) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t* ql = low + 64 * half;
        const uint8_t h = high[32 * half + l];
        int32_t* out = weights + 128 * half;
        out[l] = int32_t((ql[l] & 0xF) | ((h & 3) << 4)) - 32;
        out[l + 32] = int32_t((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) - 32;
        out[l + 64] = int32_t((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
        out[l + 96] = int32_t((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
      }
    }
    const int8_t* scales = reinterpret_cast<const int8_t*>(a.block + 192);
    for (int64_t i = 0; i < a.n; ++i) {
      const int8_t* q8 = a.values + i * a.value_stride;
      int32_t total = 0;
      for (int j = 0; j < 16; ++j) {
        int32_t dot = 0;
        for (int k = 0; k < 16; ++k) dot += weights[16 * j + k] * q8[16 * j + k];
        total += int32_t(scales[j]) * dot;
      }
      a.dots[i] = total;
    }
  }
}

#if defined(__x86_64__)

// ---- AVX2: vpmaddubsw (u8 weights x s8 activations, pairs to i16; no saturation since
// 2 * 63 * 127 < 32768), then vpmaddwd with the sub-block scale as i16 (pairs to i32).

#define LAMINA_KQUANT_AVX2 __attribute__((target("avx2,fma")))

// The x rows go through the kernels in groups of four so that the four horizontal sums share
// their shuffles. out[r] = the sum of lanes[r]'s 8 lanes, for r < count (count <= 4).
constexpr int kRowGroup = 4;

LAMINA_KQUANT_AVX2 void store_lane_sums(const __m256i lanes[kRowGroup], int32_t* out, int count) {
  if (count == 1) {  // decode: one row, a plain reduction is shorter
    __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(lanes[0]), _mm256_extracti128_si256(lanes[0], 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4E));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xB1));
    out[0] = _mm_cvtsi128_si32(sum);
    return;
  }
  const __m256i pairs01 = _mm256_hadd_epi32(lanes[0], lanes[1]);  // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256i pairs23 = _mm256_hadd_epi32(lanes[2], lanes[3]);
  const __m256i quads = _mm256_hadd_epi32(pairs01, pairs23);  // a0..3 b0..3 c0..3 d0..3 | a4..7 ...
  const __m128i sums = _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256(quads, 1));
  if (count == kRowGroup) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), sums);
  } else {
    alignas(16) int32_t all[kRowGroup];
    _mm_store_si128(reinterpret_cast<__m128i*>(all), sums);
    for (int r = 0; r < count; ++r) out[r] = all[r];
  }
}

// Q4_K's min term for one x row: the 16-sums times (m0, m0, m1, m1, ..., m7, m7), in 8 lanes.
LAMINA_KQUANT_AVX2 __m256i q4k_min_pairs_avx2(uint64_t mins) {
  const __m128i bytes = _mm_cvtsi64_si128(int64_t(mins));
  return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(bytes, bytes));
}
LAMINA_KQUANT_AVX2 __m256i load_sums16_avx2(const int16_t* sums) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums));
}

LAMINA_KQUANT_AVX2 void q4k_row_avx2(const BlockArgs& row) {
  for (int64_t b = 0; b < row.blocks; ++b) {
    const BlockArgs a = row.at(b);
    const Q4KScales unpacked = q4k_unpack_scales(a.block + 4);
    const __m256i min_pairs = q4k_min_pairs_avx2(unpacked.mins);
    const __m256i low_mask = _mm256_set1_epi8(0xF);
    __m256i weights[8], scale_vectors[8];  // sub-block j: 32 values, 0..15
    for (int chunk = 0; chunk < 4; ++chunk) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.block + 16 + 32 * chunk));
      weights[2 * chunk] = _mm256_and_si256(bytes, low_mask);
      weights[2 * chunk + 1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_mask);
    }
    for (int j = 0; j < 8; ++j) scale_vectors[j] = _mm256_set1_epi16(int16_t(byte_of(unpacked.scales, j)));
    for (int64_t first = 0; first < a.n; first += kRowGroup) {
      const int count = int(std::min<int64_t>(kRowGroup, a.n - first));
      __m256i dot_lanes[kRowGroup], min_lanes[kRowGroup];
      for (int r = 0; r < kRowGroup; ++r) {
        dot_lanes[r] = min_lanes[r] = _mm256_setzero_si256();
        if (r >= count) continue;
        const int8_t* q8 = a.values + (first + r) * a.value_stride;
        for (int j = 0; j < 8; ++j) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * j));
          const __m256i pairs = _mm256_maddubs_epi16(weights[j], x);
          dot_lanes[r] = _mm256_add_epi32(dot_lanes[r], _mm256_madd_epi16(pairs, scale_vectors[j]));
        }
        min_lanes[r] = _mm256_madd_epi16(load_sums16_avx2(a.sums16 + (first + r) * a.sums_stride), min_pairs);
      }
      store_lane_sums(dot_lanes, a.dots + first, count);
      store_lane_sums(min_lanes, a.mins + first, count);
    }
  }
}

LAMINA_KQUANT_AVX2 void q6k_row_avx2(const BlockArgs& row) {
  for (int64_t b = 0; b < row.blocks; ++b) {
    const BlockArgs a = row.at(b);
    const int8_t* scales = reinterpret_cast<const int8_t*>(a.block + 192);
    const __m256i scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    const __m256i low_mask = _mm256_set1_epi8(0xF);
    const __m256i two_bits = _mm256_set1_epi8(3);
    __m256i weights[8], scale_vectors[8];  // 32 values each: sub-blocks 2g and 2g + 1
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = a.block + 64 * half;
      const __m256i low0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i low1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.block + 128 + 32 * half));
      // (h & 3) << 4 stays inside each byte, so 16-bit shifts are safe here.
      __m256i* out = weights + 4 * half;
      out[0] = _mm256_or_si256(_mm256_and_si256(low0, low_mask),
                               _mm256_slli_epi16(_mm256_and_si256(high, two_bits), 4));
      out[1] = _mm256_or_si256(_mm256_and_si256(low1, low_mask),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 2), two_bits), 4));
      out[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low0, 4), low_mask),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 4), two_bits), 4));
      out[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(low1, 4), low_mask),
                               _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(high, 6), two_bits), 4));
    }
    for (int g = 0; g < 8; ++g)
      scale_vectors[g] = _mm256_set_m128i(_mm_set1_epi16(scales[2 * g + 1]), _mm_set1_epi16(scales[2 * g]));
    for (int64_t first = 0; first < a.n; first += kRowGroup) {
      const int count = int(std::min<int64_t>(kRowGroup, a.n - first));
      __m256i dot_lanes[kRowGroup];
      for (int r = 0; r < kRowGroup; ++r) {
        dot_lanes[r] = _mm256_setzero_si256();
        if (r >= count) continue;
        const int8_t* q8 = a.values + (first + r) * a.value_stride;
        __m256i total = _mm256_setzero_si256();
        for (int g = 0; g < 8; ++g) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * g));
          total = _mm256_add_epi32(total, _mm256_madd_epi16(_mm256_maddubs_epi16(weights[g], x), scale_vectors[g]));
        }
        // The offset of 32: minus 32 * sum_j s_j * sum(q8_j), in 8 lanes.
        const __m256i offset = _mm256_madd_epi16(load_sums16_avx2(a.sums16 + (first + r) * a.sums_stride), scales16);
        dot_lanes[r] = _mm256_sub_epi32(total, _mm256_slli_epi32(offset, 5));
      }
      store_lane_sums(dot_lanes, a.dots + first, count);
    }
  }
}

// ---- AVX-512 VNNI: vpdpbusd (u8 weights x s8 activations, four products to i32 per lane),
// then each lane times its sub-block's scale.

#define LAMINA_KQUANT_VNNI __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vnni")))

// The 16 lanes added pairwise into 8. (The maskz forms here and below avoid GCC 12's intrinsics
// whose "undefined" pass-through operand trips -Wuninitialized; the mask selects every lane.)
LAMINA_KQUANT_VNNI __m256i add_halves(__m512i v) {
  return _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xFF, v, 0), _mm512_maskz_extracti64x4_epi64(0xFF, v, 1));
}

// The 32 bytes at `p` in both halves, the upper half shifted right by `shift` bits (per 64-bit
// word: callers mask away the bits that cross a byte).
LAMINA_KQUANT_VNNI __m512i both_halves(const uint8_t* p, int64_t shift) {
  const __m512i twice = _mm512_maskz_broadcast_i64x4(0xFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_maskz_srlv_epi64(0xFF, twice, _mm512_set_epi64(shift, shift, shift, shift, 0, 0, 0, 0));
}

// Lane l of the result is source lane first + l / lanes_per_value, kept to its low 16 bits as
// an (i16 scale, 0) pair. The lanes of vpdpbusd's result fit in an i16 (four products: at most
// 4 * 63 * 127 = 32004 in magnitude), so vpmaddwd with these pairs is the exact 32-bit product
// lane * scale, one cheap instruction where vpmulld costs two.
LAMINA_KQUANT_VNNI __m512i spread_lanes(__m512i source, int first, int lanes_per_value) {
  alignas(64) int32_t index[16];
  for (int l = 0; l < 16; ++l) index[l] = first + l / lanes_per_value;
  const __m512i spread = _mm512_maskz_permutexvar_epi32(0xFFFF, _mm512_load_si512(index), source);
  return _mm512_and_si512(spread, _mm512_set1_epi32(0xFFFF));
}

LAMINA_KQUANT_VNNI void q4k_row_vnni(const BlockArgs& row) {
  for (int64_t b = 0; b < row.blocks; ++b) {
    const BlockArgs a = row.at(b);
    const Q4KScales unpacked = q4k_unpack_scales(a.block + 4);
    const __m256i min_pairs = q4k_min_pairs_avx2(unpacked.mins);
    const __m512i all_scales = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_cvtsi64_si128(int64_t(unpacked.scales)));
    const __m512i low_mask = _mm512_set1_epi8(0xF);
    __m512i weights[4], scale_vectors[4];  // 64 values each: low half sub-block 2c, high half 2c + 1
    for (int chunk = 0; chunk < 4; ++chunk) {
      weights[chunk] = _mm512_and_si512(both_halves(a.block + 16 + 32 * chunk, 4), low_mask);
      scale_vectors[chunk] = spread_lanes(all_scales, 2 * chunk, 8);
    }
    for (int64_t first = 0; first < a.n; first += kRowGroup) {
      const int count = int(std::min<int64_t>(kRowGroup, a.n - first));
      __m256i dot_lanes[kRowGroup], min_lanes[kRowGroup];
      for (int r = 0; r < kRowGroup; ++r) {
        dot_lanes[r] = min_lanes[r] = _mm256_setzero_si256();
        if (r >= count) continue;
        const int8_t* q8 = a.values + (first + r) * a.value_stride;
        __m512i total = _mm512_setzero_si512();
        for (int chunk = 0; chunk < 4; ++chunk) {
          const __m512i x = _mm512_loadu_si512(q8 + 64 * chunk);
          const __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights[chunk], x);
          total = _mm512_add_epi32(total, _mm512_madd_epi16(dots, scale_vectors[chunk]));
        }
        dot_lanes[r] = add_halves(total);
        min_lanes[r] = _mm256_madd_epi16(load_sums16_avx2(a.sums16 + (first + r) * a.sums_stride), min_pairs);
      }
      store_lane_sums(dot_lanes, a.dots + first, count);
      store_lane_sums(min_lanes, a.mins + first, count);
    }
  }
}

LAMINA_KQUANT_VNNI void q6k_row_vnni(const BlockArgs& row) {
  for (int64_t b = 0; b < row.blocks; ++b) {
    const BlockArgs a = row.at(b);
    const int8_t* scales = reinterpret_cast<const int8_t*>(a.block + 192);
    const __m128i scale_bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));
    const __m256i scales16 = _mm256_cvtepi8_epi16(scale_bytes);
    const __m512i all_scales = _mm512_maskz_cvtepi8_epi32(0xFFFF, scale_bytes);
    const __m512i low_mask = _mm512_set1_epi8(0xF);
    const __m512i two_bits = _mm512_set1_epi8(3);
    __m512i weights[4], scale_vectors[4];  // 64 values each: sub-blocks 4g .. 4g + 3
    for (int half = 0; half < 2; ++half) {
      // Bytes 0..31 of `low` serve values 0..31 (low nibbles) and 64..95 (high nibbles), bytes
      // 32..63 values 32..63 and 96..127; `high` pairs them with qh and qh >> 2.
      const __m512i low = _mm512_loadu_si512(a.block + 64 * half);
      const __m512i high = both_halves(a.block + 128 + 32 * half, 2);
      weights[2 * half] = _mm512_or_si512(_mm512_and_si512(low, low_mask),
                                          _mm512_slli_epi16(_mm512_and_si512(high, two_bits), 4));
      weights[2 * half + 1] =
          _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(low, 4), low_mask),
                          _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(high, 4), two_bits), 4));
    }
    for (int g = 0; g < 4; ++g) scale_vectors[g] = spread_lanes(all_scales, 4 * g, 4);
    for (int64_t first = 0; first < a.n; first += kRowGroup) {
      const int count = int(std::min<int64_t>(kRowGroup, a.n - first));
      __m256i dot_lanes[kRowGroup];
      for (int r = 0; r < kRowGroup; ++r) {
        dot_lanes[r] = _mm256_setzero_si256();
        if (r >= count) continue;
        const int8_t* q8 = a.values + (first + r) * a.value_stride;
        __m512i total = _mm512_setzero_si512();
        for (int g = 0; g < 4; ++g) {
          const __m512i x = _mm512_loadu_si512(q8 + 64 * g);
          const __m512i dots = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights[g], x);
          total = _mm512_add_epi32(total, _mm512_madd_epi16(dots, scale_vectors[g]));
        }
        const __m256i offset = _mm256_madd_epi16(load_sums16_avx2(a.sums16 + (first + r) * a.sums_stride), scales16);
        dot_lanes[r] = _mm256_sub_epi32(add_halves(total), _mm256_slli_epi32(offset, 5));
      }
      store_lane_sums(dot_lanes, a.dots + first, count);
    }
  }
}

#endif  // __x86_64__

// cpu_features() also checks that the OS saves the YMM/ZMM state, which cpuid alone does not say.
bool cpu_has_avx2() { return cpu_features().avx2_fma; }
bool cpu_has_vnni() { return cpu_features().avx512vnni; }

const char* path_name(GgufDotPath path) {
  switch (path) {
    case GgufDotPath::vnni: return "AVX-512 VNNI";
    case GgufDotPath::avx2: return "AVX2";
    case GgufDotPath::reference: return "reference";
    default: return "automatic";
  }
}

RowKernel kernel_for(bool q6k, GgufDotPath path) {
  switch (path) {
#if defined(__x86_64__)
    case GgufDotPath::vnni: return q6k ? q6k_row_vnni : q4k_row_vnni;
    case GgufDotPath::avx2: return q6k ? q6k_row_avx2 : q4k_row_avx2;
#endif
    default: return q6k ? q6k_row_reference : q4k_row_reference;
  }
}

}  // namespace

bool gguf_kquant_path_available(GgufDotPath path) {
  switch (path) {
    case GgufDotPath::vnni: return cpu_has_vnni();
    case GgufDotPath::avx2: return cpu_has_avx2();
    default: return true;
  }
}

void gguf_kquant_matmul(const float* x, int64_t n, const GgufMatrix& w, float* y) {
  gguf_kquant_matmul(x, n, w, y, GgufDotPath::automatic);
}

void gguf_kquant_matmul(const float* x, int64_t n, const GgufMatrix& w, float* y, GgufDotPath path) {
  const bool q6k = w.type == ggml::BlockType::q6_k;
  LAMINA_CHECK(q6k || w.type == ggml::BlockType::q4_k, "gguf_kquant_matmul: weight type id ", uint32_t(w.type),
               " is not Q4_K or Q6_K");
  LAMINA_CHECK(w.rows >= 0 && w.cols >= 0 && n >= 0, "gguf_kquant_matmul: negative size (rows ", w.rows, ", cols ",
               w.cols, ", n ", n, ")");
  LAMINA_CHECK(w.cols % kSuperBlock == 0, "gguf_kquant_matmul: ", w.cols, " columns are not whole super-blocks of ",
               kSuperBlock);
  if (path == GgufDotPath::automatic) {
    path = cpu_has_vnni() ? GgufDotPath::vnni : cpu_has_avx2() ? GgufDotPath::avx2 : GgufDotPath::reference;
  }
  LAMINA_CHECK(gguf_kquant_path_available(path), "gguf_kquant_matmul: this CPU cannot run the ",
               path_name(path), " path");
  if (n == 0 || w.rows == 0) return;
  LAMINA_CHECK(w.data != nullptr && x != nullptr && y != nullptr, "gguf_kquant_matmul: null data pointer");
  if (w.cols == 0) {
    std::fill(y, y + n * w.rows, 0.0f);
    return;
  }
  const QuantizedActivations activations = quantize_activations(x, n, w.cols);
  const RowKernel kernel = kernel_for(q6k, path);
  const int64_t blocks = activations.blocks;
  const int64_t block_bytes = q6k ? kQ6KBytes : kQ4KBytes;
  const int64_t row_bytes = blocks * block_bytes;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (w.cols * n));
  parallel_for(0, w.rows, grain, [&](int64_t row_begin, int64_t row_end) {
    std::vector<int32_t> dots(static_cast<size_t>(blocks * n)), mins(static_cast<size_t>(blocks * n));
    std::vector<float> block_d(static_cast<size_t>(blocks)), block_dmin(static_cast<size_t>(blocks));
    for (int64_t row = row_begin; row < row_end; ++row) {
      const uint8_t* row_data = w.data + row * row_bytes;
      kernel(BlockArgs{row_data, blocks, block_bytes, activations.values.data(), w.cols, activations.sums16.data(),
                       blocks * 16, n, dots.data(), mins.data()});
      // The one f32 combination for every path (see the file comment): for each x row, the
      // blocks in order, the running sum kept in a register (through memory it would be a
      // store-to-load chain per block, a third of a decode product's time). The fused
      // multiply-adds are written out because GCC contracts `a * b + c` into one wherever it
      // likes in C++ (-ffp-contract=fast, even under -std=c++20): written as `sum += s * dots`,
      // Q6_K's sum was rounded one way in the vectorised loop and another in its scalar tail.
      // Spelled out, the bits are the same for every compiler and target, and the CUDA kernels
      // (ops/cuda/gguf_matmul.cu) reproduce them.
      for (int64_t b = 0; b < blocks; ++b) {
        const uint8_t* block = row_data + b * block_bytes;
        block_d[size_t(b)] = half_bits_to_float(q6k ? block + 208 : block);
        block_dmin[size_t(b)] = q6k ? 0.0f : half_bits_to_float(block + 2);
      }
      for (int64_t i = 0; i < n; ++i) {
        const float* x_scales = activations.scale.data() + i * blocks;
        float sum = 0.0f;
        if (q6k) {
          for (int64_t b = 0; b < blocks; ++b)
            sum = std::fma(x_scales[b] * block_d[size_t(b)], float(dots[size_t(b * n + i)]), sum);
        } else {
          for (int64_t b = 0; b < blocks; ++b) {
            const float scale = x_scales[b] * block_d[size_t(b)], min_scale = x_scales[b] * block_dmin[size_t(b)];
            const float min_term = min_scale * float(mins[size_t(b * n + i)]);
            sum += std::fma(scale, float(dots[size_t(b * n + i)]), -min_term);
          }
        }
        y[i * w.rows + row] = sum;
      }
    }
  });
}

}  // namespace lamina::ops::cpu
