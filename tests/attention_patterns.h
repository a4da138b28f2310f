// Random pieces of attention patterns (ops/attention_pattern.h) shared by the fused attention's
// CPU tests and its CUDA-vs-CPU tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

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

}  // namespace lamina::testing
