// Strided loops for CPU kernels.
//
// for_each_run walks N operands that share one logical shape but have their own strides.
// It first merges dims that are laid out back to back for every operand (so a contiguous
// tensor of any rank becomes one long run), then hands the body runs of the innermost dim:
//
//   body(offsets, count, inner_strides)
//
// where offsets[k] is the element offset of the run's first element in operand k (relative
// to the operand's element [0, 0, ...]) and inner_strides[k] its step along the run. The
// element range is split across threads; every element is visited exactly once.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "ops/common/strided.h"
#include "tensor/parallel.h"
#include "tensor/shape.h"

namespace lamina::ops::cpu {

inline constexpr int64_t kElementwiseGrain = 32768;

// Row reductions keep this many independent partial results: enough for the compiler to use
// whole 512-bit registers and to hide the add latency, and a fixed number so that the
// summation order (hence the result) is the same on every machine and thread count.
inline constexpr int kLanes = 16;

template <size_t N, typename Body>
void for_each_run(const Shape& shape, const std::array<Shape, N>& strides, Body&& body,
                  int64_t grain = kElementwiseGrain) {
  const int64_t total = shape_numel(shape);
  if (total == 0) return;
  const Runs<N> runs = coalesce<N>(shape, strides);
  const size_t ndim = runs.shape.size();
  const int64_t inner = runs.shape.back();
  std::array<int64_t, N> inner_strides;
  for (size_t k = 0; k < N; ++k) inner_strides[k] = runs.strides[k].back();

  parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    // Multi-index of `begin`, then odometer steps run by run.
    Shape index(ndim, 0);
    int64_t rest = begin;
    for (size_t d = ndim; d-- > 0;) {
      index[d] = rest % runs.shape[d];
      rest /= runs.shape[d];
    }
    std::array<int64_t, N> offsets{};
    for (size_t k = 0; k < N; ++k)
      for (size_t d = 0; d < ndim; ++d) offsets[k] += index[d] * runs.strides[k][d];
    int64_t position = begin;
    while (position < end) {
      const int64_t count = std::min(inner - index[ndim - 1], end - position);
      body(offsets, count, inner_strides);
      position += count;
      if (position >= end) break;
      // Advance to the start of the next run.
      for (size_t k = 0; k < N; ++k) offsets[k] += (count - 1) * inner_strides[k];
      index[ndim - 1] += count - 1;
      for (size_t d = ndim; d-- > 0;) {
        if (++index[d] < runs.shape[d]) {
          for (size_t k = 0; k < N; ++k) offsets[k] += runs.strides[k][d];
          break;
        }
        for (size_t k = 0; k < N; ++k) offsets[k] -= runs.strides[k][d] * (runs.shape[d] - 1);
        index[d] = 0;
      }
    }
  });
}

}  // namespace lamina::ops::cpu
