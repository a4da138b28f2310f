// gguf_matmul_many (ops/gguf_matmul.h): several matrices times one x give gguf_matmul's results
// bit for bit, whatever the thread count, for the integer-kernel types, mixed types, a K-quant
// among them (which takes the one-at-a-time path) and a batch of rows past the panel threshold.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <vector>

#include "models/io/gguf_write.h"
#include "ops/gguf_matmul.h"
#include "ops/ops.h"
#include "tensor/parallel.h"

using namespace lamina;
using ops::GgufMatrix;
using ops::ggml::BlockType;

namespace {

std::vector<uint8_t> quantized(BlockType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<float> values(size_t(rows * cols));
  for (float& value : values) value = normal(rng);
  return gguf::encode(gguf::TensorType(uint32_t(type)), values.data(), values.size());
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.contiguous().data<float>(), b.contiguous().data<float>(),
                                               size_t(a.numel()) * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("gguf_matmul_many: each output equals its own gguf_matmul, bit for bit") {
  std::mt19937 rng(17);
  const int64_t cols = 256;
  const std::vector<std::vector<BlockType>> groups = {
      {BlockType::q4_1, BlockType::q4_1, BlockType::q4_1},
      {BlockType::q8_0, BlockType::q4_0, BlockType::q4_1},
      {BlockType::q4_1, BlockType::q4_k},  // a K-quant: one product at a time
  };
  for (const auto& types : groups) {
    std::vector<std::vector<uint8_t>> storage;
    std::vector<GgufMatrix> matrices;
    const int64_t rows[] = {96, 33, 7};
    for (size_t m = 0; m < types.size(); ++m) storage.push_back(quantized(types[m], rows[m], cols, rng));
    for (size_t m = 0; m < types.size(); ++m) matrices.push_back({types[m], rows[m], cols, storage[m].data()});
    std::vector<const GgufMatrix*> pointers;
    for (const GgufMatrix& matrix : matrices) pointers.push_back(&matrix);
    for (int64_t n : {1, 3, 20}) {
      CAPTURE(n);
      Generator generator{uint64_t(n)};
      const Tensor x = randn({1, n, cols}, generator);
      for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
        ThreadCountGuard guard(threads);
        const std::vector<Tensor> together = ops::gguf_matmul_many(x, pointers);
        REQUIRE(together.size() == matrices.size());
        for (size_t m = 0; m < matrices.size(); ++m) {
          CAPTURE(m);
          CHECK(together[m].shape() == Shape{1, n, rows[m]});
          CHECK(same_bits(together[m], ops::gguf_matmul(x, matrices[m])));
        }
      }
    }
  }
}

TEST_CASE("gguf_matmul_many: matrices of another width or an x of the wrong width are errors") {
  std::mt19937 rng(3);
  const std::vector<uint8_t> a = quantized(BlockType::q8_0, 4, 64, rng), b = quantized(BlockType::q8_0, 4, 96, rng);
  const GgufMatrix wa{BlockType::q8_0, 4, 64, a.data()}, wb{BlockType::q8_0, 4, 96, b.data()};
  Generator generator(1);
  // Different widths fall back to one product at a time, where x's width is checked per matrix.
  CHECK_THROWS_WITH(ops::gguf_matmul_many(randn({1, 64}, generator), {&wa, &wb}), doctest::Contains("96 columns"));
  CHECK_THROWS_WITH(ops::gguf_matmul_many(randn({1, 64}, generator), {}), doctest::Contains("no matrices"));
}
