// Element types. bf16 and f16 are stored as 16-bit patterns and computed in f32; conversions
// round to nearest even, the way every GPU and PyTorch do.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "tensor/error.h"

namespace lamina {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, u8, boolean };

inline constexpr DType kAllDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                       DType::i32, DType::i64, DType::u8,   DType::boolean};

namespace detail {
inline uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}
inline float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}
}  // namespace detail

// bfloat16: the top 16 bits of an IEEE f32.
struct bf16 {
  uint16_t bits = 0;

  bf16() = default;
  bf16(float value) : bits(from_float(value)) {}  // NOLINT: implicit like a builtin float
  operator float() const { return detail::bits_float(uint32_t(bits) << 16); }

  static bf16 from_bits(uint16_t raw) {
    bf16 out;
    out.bits = raw;
    return out;
  }
  // Round to nearest even (add 0x7fff plus the lowest kept bit, then truncate); a NaN keeps its
  // top bits, quieted (rounding it would carry an all-ones payload into the sign). Written as a
  // select, not a branch, so that loops converting arrays vectorize.
  static uint16_t from_float(float value) {
    const uint32_t bits = detail::float_bits(value);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
    return uint16_t((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
  }
};

// IEEE 754 binary16.
struct f16 {
  uint16_t bits = 0;

  f16() = default;
  f16(float value) : bits(from_float(value)) {}  // NOLINT: implicit like a builtin float
  operator float() const { return to_float(bits); }

  static f16 from_bits(uint16_t raw) {
    f16 out;
    out.bits = raw;
    return out;
  }
  static uint16_t from_float(float value) {
    uint32_t x = detail::float_bits(value);
    const uint32_t sign = x & 0x80000000u;
    x ^= sign;
    uint16_t magnitude;
    if (x >= (127u + 16u) << 23) {  // |value| >= 65536, inf or NaN
      magnitude = x > 0x7f800000u ? 0x7e00 : 0x7c00;
    } else if (x < 113u << 23) {  // result is subnormal or zero: |value| < 2^-14
      // Adding 0.5 (as 2^-1 with the right exponent) lets the FPU do the rounding.
      const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
      magnitude = uint16_t(detail::float_bits(detail::bits_float(x) + detail::bits_float(magic)) - magic);
    } else {
      const uint32_t mantissa_odd = (x >> 13) & 1u;
      x += ((15u - 127u) << 23) + 0xfffu + mantissa_odd;  // rebias exponent, round to nearest even
      magnitude = uint16_t(x >> 13);                      // overflow here correctly yields inf
    }
    return uint16_t(magnitude | (sign >> 16));
  }
  static float to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
      const float magnitude = float(mantissa) * 5.9604644775390625e-08f;
      return detail::bits_float(detail::float_bits(magnitude) | sign);
    }
    if (exponent == 31) return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));
    return detail::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
};

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(const std::string& name);  // "f32", "bf16", ...; throws on unknown
inline bool is_floating(DType d) {
  return d == DType::f32 || d == DType::f64 || d == DType::bf16 || d == DType::f16;
}
inline bool is_integral(DType d) { return d == DType::i32 || d == DType::i64 || d == DType::u8; }

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<f16>() { return DType::f16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<bool>() { return DType::boolean; }

// The type arithmetic happens in: f32 for the 16-bit floats, the type itself otherwise.
template <typename T>
using compute_t = std::conditional_t<std::is_same_v<T, bf16> || std::is_same_v<T, f16>, float, T>;

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) for the C++ type of `dtype`.
template <typename Fn>
decltype(auto) visit_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(TypeTag<float>{});
    case DType::f64: return fn(TypeTag<double>{});
    case DType::bf16: return fn(TypeTag<bf16>{});
    case DType::f16: return fn(TypeTag<f16>{});
    case DType::i32: return fn(TypeTag<int32_t>{});
    case DType::i64: return fn(TypeTag<int64_t>{});
    case DType::u8: return fn(TypeTag<uint8_t>{});
    case DType::boolean: return fn(TypeTag<bool>{});
  }
  throw Error("visit_dtype: corrupt dtype value");
}

// Like visit_dtype, restricted to the floating types; `op` names the caller in the error.
template <typename Fn>
decltype(auto) visit_floating(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(TypeTag<float>{});
    case DType::f64: return fn(TypeTag<double>{});
    case DType::bf16: return fn(TypeTag<bf16>{});
    case DType::f16: return fn(TypeTag<f16>{});
    default: break;
  }
  throw Error(str_cat(op, ": expected a floating dtype (f32, f64, bf16, f16), got ", dtype_name(dtype)));
}

// Floating types plus i32 and i64: the arithmetic types.
template <typename Fn>
decltype(auto) visit_arithmetic(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn(TypeTag<float>{});
    case DType::f64: return fn(TypeTag<double>{});
    case DType::bf16: return fn(TypeTag<bf16>{});
    case DType::f16: return fn(TypeTag<f16>{});
    case DType::i32: return fn(TypeTag<int32_t>{});
    case DType::i64: return fn(TypeTag<int64_t>{});
    default: break;
  }
  throw Error(str_cat(op, ": expected an arithmetic dtype (f32, f64, bf16, f16, i32, i64), got ",
                      dtype_name(dtype)));
}

// Integer index types accepted by gather-like ops.
template <typename Fn>
decltype(auto) visit_index(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::i32: return fn(TypeTag<int32_t>{});
    case DType::i64: return fn(TypeTag<int64_t>{});
    default: break;
  }
  throw Error(str_cat(op, ": expected integer indices (i32 or i64), got ", dtype_name(dtype)));
}

}  // namespace lamina
