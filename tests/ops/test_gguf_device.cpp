// Where a GGUF matrix's bytes live (GgufMatrix::device, GgufWeight::to): the CPU ops refuse a
// matrix whose bytes are in device memory (they would read addresses the host cannot), naming
// both devices, before touching any byte; moving a weight to where it already is changes nothing;
// and, in a build without the CUDA backend, asking for a GPU copy or computing with a GPU matrix
// is an error that says so. The CUDA kernels themselves are tested in tests/cuda/test_gguf_matmul.cpp.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "ops/gguf_matmul.h"
#include "ops/ops.h"

using namespace lamina;
using ops::GgufMatrix;
using ops::GgufWeight;
using ops::ggml::BlockType;

namespace {

// Q8_0 blocks with scale 1 and quants 1: every weight is 1.
std::vector<uint8_t> ones_q8_0(int64_t rows, int64_t cols) {
  std::vector<uint8_t> bytes(size_t(rows * cols / 32 * 34));
  for (size_t offset = 0; offset < bytes.size(); offset += 34) {
    const uint16_t one = f16(1.0f).bits;
    std::memcpy(&bytes[offset], &one, 2);
    std::memset(&bytes[offset + 2], 1, 32);
  }
  return bytes;
}

// A matrix that claims to lie on a GPU. Its pointer is host memory that the checks must never
// read: they refuse the pair of devices first.
GgufMatrix on_gpu(const std::vector<uint8_t>& bytes, int64_t rows, int64_t cols) {
  return GgufMatrix{BlockType::q8_0, rows, cols, bytes.data(), Device::cuda(0)};
}

}  // namespace

TEST_CASE("gguf ops: a matrix in device memory is refused by the CPU paths, naming both devices") {
  const std::vector<uint8_t> bytes = ones_q8_0(4, 64);
  const GgufMatrix w = on_gpu(bytes, 4, 64);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul(ones({2, 64}), w), doctest::Contains("x is on cpu but the Q8_0 matrix [4, 64] is on cuda:0"),
                       Error);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul_many(ones({1, 64}), {&w}), doctest::Contains("is on cuda:0"), Error);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul_input_grad(ones({3, 4}), w),
                       doctest::Contains("grad is on cpu but the Q8_0 matrix [4, 64] is on cuda:0"), Error);
  CHECK_THROWS_WITH_AS(ops::gguf_rows(Tensor::from_vector(std::vector<int64_t>{0, 3}, {2}), w),
                       doctest::Contains("ids is on cpu but the Q8_0 matrix [4, 64] is on cuda:0"), Error);
  // A group of matrices where only one is on the GPU: the fused CPU product is not taken, and the
  // per-matrix product refuses the GPU one.
  const std::vector<uint8_t> host_bytes = ones_q8_0(4, 64);
  const GgufMatrix host{BlockType::q8_0, 4, 64, host_bytes.data()};
  CHECK_THROWS_WITH_AS(ops::gguf_matmul_many(ones({1, 64}), {&host, &w}), doctest::Contains("is on cuda:0"), Error);
}

TEST_CASE("gguf ops: host matrices are unchanged by the device field (default cpu)") {
  const std::vector<uint8_t> bytes = ones_q8_0(3, 64);
  const GgufMatrix w{BlockType::q8_0, 3, 64, bytes.data()};
  CHECK(w.device == Device::cpu());
  CHECK(ops::gguf_matrix_bytes(w) == 3 * 2 * 34);
  // Every weight 1 and x = 1: each output is 64 (exact: the activation scale is 1/127 and q = 127).
  const std::vector<float> y = ops::gguf_matmul(ones({2, 64}), w).to_vector<float>();
  REQUIRE(y.size() == 6);
  for (size_t i = 0; i < y.size(); ++i) {
    CAPTURE(i);
    CHECK(y[i] == doctest::Approx(64.0).epsilon(1e-6));
  }
  CHECK(ops::gguf_rows(Tensor::from_vector(std::vector<int64_t>{2}, {1}), w).device() == Device::cpu());
}

TEST_CASE("GgufWeight::to: the same device is the weight itself; no CUDA backend is a clear error") {
  const auto bytes = std::make_shared<std::vector<uint8_t>>(ones_q8_0(2, 32));
  const GgufWeight weight{{BlockType::q8_0, 2, 32, bytes->data()}, bytes};
  const GgufWeight same = weight.to(Device::cpu());
  CHECK(same.matrix.data == weight.matrix.data);
  CHECK(same.owner == weight.owner);
#if !LAMINA_WITH_CUDA
  CHECK_THROWS_WITH_AS(weight.to(Device::cuda(0)), doctest::Contains("CUDA backend not built"), Error);
  // A hand-made matrix claiming device memory cannot be computed with either, and says why.
  const std::vector<uint8_t> raw = ones_q8_0(4, 64);
  const GgufMatrix w = on_gpu(raw, 4, 64);
  CHECK_THROWS_WITH_AS(ops::gguf_dequantize(w), doctest::Contains("this build has no CUDA backend"), Error);
#endif
}
