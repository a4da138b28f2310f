// Random pieces of attention patterns (ops/attention_pattern.h) and checks of attention results,
// shared by the attention ops' CPU tests and their CUDA-vs-CPU tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "helpers.h"
#include "tensor/tensor.h"

namespace lamina::testing {

// Packed documents: runs of random lengths in [1, longest] per batch row, so documents of
// length 1 occur.
inline Tensor random_documents(int64_t batch, int64_t keys, int64_t longest, std::mt19937& rng) {
  std::vector<int64_t> ids;
  for (int64_t b = 0; b < batch; ++b) {
    int64_t id = 0;
    for (int64_t j = 0; j < keys;) {
      const int64_t length = std::uniform_int_distribution<int64_t>(1, longest)(rng);
      for (int64_t n = 0; n < length && j < keys; ++n, ++j) ids.push_back(id);
      ++id;
    }
  }
  return Tensor::from_vector(ids, {batch, keys});
}

// A random block layout over absolute positions with block row 0 all off, so that rows which
// see nothing (when no other component covers them) and empty tiles occur.
inline Tensor random_layout(int64_t heads, int64_t rows, int64_t columns, double density, std::mt19937& rng) {
  std::vector<uint8_t> bits(size_t(heads * rows * columns));
  std::bernoulli_distribution on(density);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < columns; ++c) bits[size_t((h * rows + r) * columns + c)] = r > 0 && on(rng);
  return Tensor::from_vector(bits, {heads, rows, columns}, DType::boolean);
}

// The largest finite |value| (the "scale" that tolerances are relative to).
inline double largest_magnitude(const Tensor& t) {
  double largest = 0;
  for (double x : t.to_vector<double>())
    if (std::isfinite(x)) largest = std::max(largest, std::abs(x));
  return largest;
}

// An absolute tolerance of `relative` times the expected tensor's scale (at least `floor`).
inline Tolerance relative_to_scale(const Tensor& expected, double relative, double floor = 0) {
  return {relative * std::max(floor, largest_magnitude(expected)), 0};
}

inline bool all_finite(const Tensor& t) {
  for (double x : t.to_vector<double>())
    if (!std::isfinite(x)) return false;
  return true;
}

// lse may be -inf (rows that see nothing) but never NaN or +inf.
inline bool valid_lse(const Tensor& t) {
  for (double x : t.to_vector<double>())
    if (std::isnan(x) || x == INFINITY) return false;
  return true;
}

// Equal element for element, NaN equal to NaN.
inline bool exactly_equal(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

}  // namespace lamina::testing
