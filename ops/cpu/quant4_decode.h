// Reading a 4-bit weight on the CPU: WeightView (what the kernels need of a Quantized4Bit) and
// dequantize_range, which turns any flat element range of the weight into f32 values,
// code_values[code] * absmax[block], the single f32 multiply bitsandbytes does, so every path
// built on it yields the same bits as dequantize_4bit. Shared by ops/cpu/quant4.cpp (dequantize,
// the matrix-vector and Eigen paths) and ops/cpu/quant4_panels.cpp (the AVX-512 panel products).
//
// On AVX-512 dequantize_range decodes 32 elements (16 bytes, always inside one block since
// blocks are multiples of 32) per step: the 16-entry table fits one register, so the lookup is
// one permute per 16 codes.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>

#include "ops/quant4.h"

namespace lamina::ops::cpu::quant4_detail {

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

inline WeightView view_of(const Quantized4Bit& q) {
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

inline float element_value(const WeightView& w, int64_t i) {
  const uint8_t byte = w.codes[i / 2];
  const uint8_t code = (i % 2 == 0) ? uint8_t(byte >> 4) : uint8_t(byte & 15);
  return w.table[code] * w.scale(i >> w.blocksize_shift);
}

#if defined(__AVX512F__)
// The 32 values of elements [i, i + 32), i a multiple of 32, as two registers in element order.
struct Decoded32 {
  __m512 first, second;
};

// The constants of decode32, loaded once per loop rather than once per step.
struct Decoder {
  __m512 table;
  __m512i low_mask, first_half, second_half;
  explicit Decoder(const float* code_values)
      : table(_mm512_loadu_ps(code_values)),
        low_mask(_mm512_set1_epi32(15)),
        // Interleave the high-nibble values (even elements) with the low-nibble ones (odd elements).
        first_half(_mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)),
        second_half(_mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)) {}

  Decoded32 decode32(const WeightView& w, int64_t i) const {
    const __m512 scale = _mm512_set1_ps(w.scale(i >> w.blocksize_shift));
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.codes + i / 2)));
    const __m512 even = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table), scale);
    const __m512 odd = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(bytes, low_mask), table), scale);
    return {_mm512_permutex2var_ps(even, first_half, odd), _mm512_permutex2var_ps(even, second_half, odd)};
  }
};
#endif

// Writes elements [begin, end) of the flattened weight to dst[0, end - begin).
inline void dequantize_range(const WeightView& w, int64_t begin, int64_t end, float* dst) {
  int64_t i = begin;
  for (; i < end && (i & 31) != 0; ++i) dst[i - begin] = element_value(w, i);
#if defined(__AVX512F__)
  const Decoder decoder(w.table);
  for (; i + 32 <= end; i += 32) {
    const Decoded32 values = decoder.decode32(w, i);
    _mm512_storeu_ps(dst + (i - begin), values.first);
    _mm512_storeu_ps(dst + (i - begin) + 16, values.second);
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

}  // namespace lamina::ops::cpu::quant4_detail
