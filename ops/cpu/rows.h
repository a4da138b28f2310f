// Helpers for kernels that work row by row on contiguous [rows, width] data.
#pragma once

#include <algorithm>
#include <cmath>

#include "ops/cpu/map.h"
#include "ops/cpu/vec_math.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {

// body(row) for every row, rows spread over the threads in blocks of ~32K elements.
template <typename Body>
void for_each_row(int64_t rows, int64_t width, Body&& body) {
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, width));
  parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) body(row);
  });
}

// Maximum of a row in kLanes lanes (vectorisable; NaN-agnostic like std::max).
template <typename T>
compute_t<T> row_max(const T* x, int64_t n) {
  using C = compute_t<T>;
  C lanes[kLanes];
  for (C& lane : lanes) lane = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = std::max(lanes[lane], load(x[i + lane]));
  C best = -INFINITY;
  for (; i < n; ++i) best = std::max(best, load(x[i]));
  for (C lane : lanes) best = std::max(best, lane);
  return best;
}

// Sum of exp(x - shift) over a row, in kLanes lanes of the compute type.
template <typename T>
compute_t<T> row_sum_exp(const T* x, int64_t n, compute_t<T> shift) {
  using C = compute_t<T>;
  C lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += fast_exp(load(x[i + lane]) - shift);
  C total = 0;
  for (; i < n; ++i) total += fast_exp(load(x[i]) - shift);
  for (C lane : lanes) total += lane;
  return total;
}

// Sum of a[i] * b[i] over a row, in kLanes lanes of the compute type.
template <typename A, typename B>
compute_t<A> row_dot(const A* a, const B* b, int64_t n) {
  using C = compute_t<A>;
  C lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += load(a[i + lane]) * C(load(b[i + lane]));
  C total = 0;
  for (; i < n; ++i) total += load(a[i]) * C(load(b[i]));
  for (C lane : lanes) total += lane;
  return total;
}

}  // namespace lamina::ops::cpu
