// exp for f32 written so that the compiler can vectorise loops that call it: no branches,
// no library calls. Accuracy: within 2 ulp of the correctly rounded result over the whole
// f32 range (tested against std::exp in f64), exp(-inf) = 0, exp(+inf) = inf, NaN in NaN out.
//
// Method: exp(x) = 2^n * exp(r) with n = round(x / ln 2) and r = x - n ln 2 (ln 2 split in a
// high part exact in few bits and a low correction, so r is accurate), |r| <= ln2/2, and
// exp(r) from its degree-7 Taylor polynomial (truncation error < 5e-9 relative). 2^n is
// applied as two factors so that n down to -150 (subnormal results) stays representable.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lamina::ops::cpu {

constexpr double kInvSqrt2 = 0.70710678118654752440;    // 1 / sqrt(2), for gelu
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi), gelu's derivative

inline float exp_f32(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693359375f;
  constexpr float kLn2Low = -2.12194440e-4f;
  const bool is_nan = x != x;
  float clamped = is_nan ? 0.0f : x;
  clamped = clamped < -104.0f ? -104.0f : clamped;
  clamped = clamped > 89.0f ? 89.0f : clamped;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (ties to even).
  constexpr float kRoundMagic = 12582912.0f;
  const float n = (clamped * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (clamped - n * kLn2High) - n * kLn2Low;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n as two factors 2^floor(n/2) * 2^ceil(n/2), each a normal float for n in [-150, 128].
  // At the clamp limits the product rounds to exactly 0 (x <= -104) and overflows to inf
  // (x > 88.72), so no extra selects are needed for the range ends.
  const int32_t exponent = int32_t(n);
  const int32_t low_half = exponent >> 1;
  const uint32_t bits_a = uint32_t(low_half + 127) << 23;
  const uint32_t bits_b = uint32_t(exponent - low_half + 127) << 23;
  float scale_a, scale_b;
  std::memcpy(&scale_a, &bits_a, 4);
  std::memcpy(&scale_b, &bits_b, 4);
  const float result = p * scale_a * scale_b;
  return is_nan ? x : result;
}

// exp in the compute type: the vectorisable f32 version, or std::exp for f64.
template <typename C>
inline C fast_exp(C x) {
  if constexpr (std::is_same_v<C, float>) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

template <typename C>
inline C fast_sigmoid(C x) {
  return C(1) / (C(1) + fast_exp(-x));
}

}  // namespace lamina::ops::cpu
