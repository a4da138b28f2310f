// The one rule by which every kernel, CPU or CUDA, stores a computed value in an element type
// (the CUDA kernels' device version in ops/cuda/common.cuh follows it exactly, and converts
// host scalars with this one).
#pragma once

#include <limits>
#include <type_traits>

#include "tensor/dtype.h"

namespace lamina::ops {

// Converts a compute value to element type Out. Float to integer truncates toward zero,
// saturates at the integer range and maps NaN to 0, so no conversion is undefined.
template <typename Out, typename Value>
inline Out convert(Value value) {
  if constexpr (std::is_same_v<Out, bool>) {
    return value != Value(0);
  } else if constexpr (std::is_integral_v<Out> && std::is_floating_point_v<Value>) {
    if (value != value) return Out(0);
    if (value <= Value(std::numeric_limits<Out>::lowest())) return std::numeric_limits<Out>::lowest();
    if (value >= Value(std::numeric_limits<Out>::max())) return std::numeric_limits<Out>::max();
    return Out(value);
  } else {
    return Out(compute_t<Out>(value));
  }
}

}  // namespace lamina::ops
