// Strided operands walked together, shared by the CPU and CUDA backends: coalesce() drops
// size-1 dims and merges dims that every operand steps through back to back, so that a
// contiguous tensor of any rank becomes one run (the CPU's for_each_run loops over the runs;
// a CUDA kernel receives them as its layout).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "tensor/shape.h"

namespace lamina::ops {

template <size_t N>
struct Runs {
  Shape shape;
  std::array<Shape, N> strides;
};

// Drops size-1 dims and merges dims that every operand steps through contiguously.
template <size_t N>
Runs<N> coalesce(const Shape& shape, const std::array<Shape, N>& strides) {
  Runs<N> runs;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool mergeable = !runs.shape.empty();
    for (size_t k = 0; k < N && mergeable; ++k)
      mergeable = runs.strides[k].back() == strides[k][d] * shape[d];
    if (mergeable) {
      runs.shape.back() *= shape[d];
      for (size_t k = 0; k < N; ++k) runs.strides[k].back() = strides[k][d];
    } else {
      runs.shape.push_back(shape[d]);
      for (size_t k = 0; k < N; ++k) runs.strides[k].push_back(strides[k][d]);
    }
  }
  if (runs.shape.empty()) {  // a single element
    runs.shape.push_back(1);
    for (size_t k = 0; k < N; ++k) runs.strides[k].push_back(1);
  }
  return runs;
}

}  // namespace lamina::ops
