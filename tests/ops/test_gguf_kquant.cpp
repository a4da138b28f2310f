// The Q4_K / Q6_K products of ops/cpu/gguf_kquant.h against ggml's dequantization (the GGUF
// reader's gguf::dequantize) and an f64 product, on random blocks: random bytes for every nibble,
// high-bit pair and packed scale, and small finite random f16 d / dmin, so every bit of both
// layouts takes both values somewhere.
//
// Two references per output y[i][r]:
//  - with the exact x: the kernel may differ by the activation rounding, bounded by
//      sum over super-blocks b of (d_x,b / 2) * sum_{k in b} |w_k|      (d_x,b = max|x in b| / 127)
//    plus the f32 rounding allowance below;
//  - with x replaced by its documented quantization (q = round(x * 127 / max|x|), times max|x|/127):
//    only the f32 rounding allowance remains, (blocks + 4) * 2^-23 * sum_k M_k * (|x_k| + d_x),
//    M_k being the size of the terms the kernel forms (Q4_K: |d sc q| + |dmin m|; Q6_K: |w_k|).
//    That one is tight enough to see a single wrong weight.
// Every path this CPU has must give the same bits (the integer sums are exact and the f32
// combination is shared), and the thread count must not change a bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "models/io/gguf.h"
#include "ops/cpu/gguf_kquant.h"
#include "tensor/error.h"
#include "tensor/parallel.h"

using namespace lamina;
using lamina::ops::GgufDotPath;
using lamina::ops::GgufMatrix;
using lamina::ops::ggml::BlockType;

namespace {

constexpr int64_t kBlock = 256;

int64_t bytes_per_block(BlockType type) { return type == BlockType::q4_k ? 144 : 210; }

// Which f16 block scales to write: normal ones with magnitude in [2^-9, 2^-3), or subnormal
// ones and zeros (exponent field 0), which the kernels' own f16 decoding must get right too.
enum class Scales { normal, subnormal };

// A random finite f16 of that kind, either sign.
void write_small_half(std::mt19937& random, uint8_t* out, Scales kind) {
  const uint32_t exponent = kind == Scales::normal ? 6 + random() % 6 : 0;  // biased: 2^(e - 15)
  const uint32_t mantissa = kind == Scales::normal || random() % 8 != 0 ? random() & 0x3FF : 0;
  const uint32_t bits = ((random() & 1) << 15) | (exponent << 10) | mantissa;
  out[0] = uint8_t(bits & 0xFF);
  out[1] = uint8_t(bits >> 8);
}

std::vector<uint8_t> random_blocks(BlockType type, int64_t rows, int64_t cols, uint32_t seed,
                                   Scales kind = Scales::normal) {
  std::mt19937 random(seed);
  const int64_t block_bytes = bytes_per_block(type);
  std::vector<uint8_t> data(size_t(rows * cols / kBlock * block_bytes));
  for (uint8_t& byte : data) byte = uint8_t(random());
  for (size_t offset = 0; offset < data.size(); offset += size_t(block_bytes)) {
    if (type == BlockType::q4_k) {
      write_small_half(random, &data[offset], kind);      // d
      write_small_half(random, &data[offset + 2], kind);  // dmin
    } else {
      write_small_half(random, &data[offset + 208], kind);  // d
    }
  }
  return data;
}

gguf::TensorType gguf_type(BlockType type) {
  return type == BlockType::q4_k ? gguf::TensorType::q4_k : gguf::TensorType::q6_k;
}

std::vector<float> dequantized(BlockType type, const std::vector<uint8_t>& data, int64_t rows, int64_t cols) {
  std::vector<float> w(size_t(rows * cols));
  gguf::dequantize(gguf_type(type), data.data(), uint64_t(rows * cols), w.data());
  return w;
}

// M_k of the file comment: for Q4_K the blocks with d = 0 dequantize to -dmin * m, so
// |d sc q| = |w - that| and M_k = |w - w0| + |w0|.
std::vector<double> term_sizes(BlockType type, const std::vector<uint8_t>& data, const std::vector<float>& w,
                               int64_t rows, int64_t cols) {
  std::vector<double> sizes(w.size());
  if (type == BlockType::q6_k) {
    for (size_t k = 0; k < w.size(); ++k) sizes[k] = std::fabs(double(w[k]));
    return sizes;
  }
  std::vector<uint8_t> without_d = data;
  for (size_t offset = 0; offset < data.size(); offset += 144) without_d[offset] = without_d[offset + 1] = 0;
  const std::vector<float> min_part = dequantized(type, without_d, rows, cols);
  for (size_t k = 0; k < w.size(); ++k)
    sizes[k] = std::fabs(double(w[k]) - double(min_part[k])) + std::fabs(double(min_part[k]));
  return sizes;
}

// The documented activation quantization, redone here: the value the kernel multiplies instead
// of x, and d_x per super-block.
void quantize_like_kernel(const std::vector<float>& x, int64_t n, int64_t cols, std::vector<double>& rounded,
                          std::vector<double>& step) {
  rounded.assign(x.size(), 0.0);
  step.assign(size_t(n * cols / kBlock), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < cols / kBlock; ++b) {
      const float* source = x.data() + i * cols + b * kBlock;
      float max_abs = 0.0f;
      for (int64_t k = 0; k < kBlock; ++k) max_abs = std::max(max_abs, std::fabs(source[k]));
      const float scale = max_abs / 127.0f;
      step[size_t(i * (cols / kBlock) + b)] = scale;
      if (max_abs == 0.0f) continue;
      const float inverse = 127.0f / max_abs;
      for (int64_t k = 0; k < kBlock; ++k)
        rounded[size_t(i * cols + b * kBlock + k)] = double(std::lrint(source[k] * inverse)) * double(scale);
    }
  }
}

std::vector<float> random_activations(int64_t n, int64_t cols, uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> x(size_t(n * cols));
  for (float& value : x) value = uniform(random);
  // One super-block of small values and one of zeros, so the per-block scale matters.
  if (cols >= 2 * kBlock) {
    for (int64_t k = 0; k < kBlock; ++k) x[size_t(k)] *= 1e-3f;
    for (int64_t k = kBlock; k < 2 * kBlock; ++k) x[size_t(k)] = 0.0f;
  }
  return x;
}

std::vector<float> run(const std::vector<float>& x, int64_t n, const GgufMatrix& w, GgufDotPath path) {
  std::vector<float> y(size_t(n * w.rows), std::numeric_limits<float>::quiet_NaN());
  ops::cpu::gguf_kquant_matmul(x.data(), n, w, y.data(), path);
  return y;
}

std::vector<GgufDotPath> available_paths() {
  std::vector<GgufDotPath> paths{GgufDotPath::reference};
  for (GgufDotPath path : {GgufDotPath::avx2, GgufDotPath::vnni}) {
    if (ops::cpu::gguf_kquant_path_available(path)) paths.push_back(path);
    else MESSAGE("this CPU lacks the ", path == GgufDotPath::vnni ? "AVX-512 VNNI" : "AVX2", " path; not tested");
  }
  return paths;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs every path on one random matrix and checks it against both references (file comment).
void check_against_dequantized(BlockType type, int64_t rows, int64_t cols, int64_t n, uint32_t seed,
                               const std::vector<GgufDotPath>& paths, Scales kind = Scales::normal) {
  CAPTURE(int(type));
  CAPTURE(rows);
  CAPTURE(cols);
  CAPTURE(n);
  const std::vector<uint8_t> data = random_blocks(type, rows, cols, seed, kind);
  const GgufMatrix matrix{type, rows, cols, data.data()};
  const std::vector<float> w = dequantized(type, data, rows, cols);
  const std::vector<double> sizes = term_sizes(type, data, w, rows, cols);
  const std::vector<float> x = random_activations(n, cols, seed * 7919);
  std::vector<double> x_rounded, x_step;
  quantize_like_kernel(x, n, cols, x_rounded, x_step);
  const int64_t blocks = cols / kBlock;

  const std::vector<float> reference = run(x, n, matrix, GgufDotPath::reference);
  for (GgufDotPath path : paths) {
    CAPTURE(int(path));
    const std::vector<float> y = path == GgufDotPath::reference ? reference : run(x, n, matrix, path);
    CHECK(same_bits(y, reference));
    double worst_exact = 0, worst_rounded = 0;  // error / allowance, must stay <= 1
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t r = 0; r < rows; ++r) {
        double exact = 0, with_rounded_x = 0, quantization = 0, rounding = 0;
        for (int64_t k = 0; k < cols; ++k) {
          const size_t wk = size_t(r * cols + k), xk = size_t(i * cols + k);
          const double step = x_step[size_t(i * blocks + k / kBlock)];
          exact += double(w[wk]) * double(x[xk]);
          with_rounded_x += double(w[wk]) * x_rounded[xk];
          quantization += step / 2 * std::fabs(double(w[wk]));
          rounding += sizes[wk] * (std::fabs(double(x[xk])) + step);
        }
        rounding *= double(blocks + 4) * std::ldexp(1.0, -23);
        const double got = y[size_t(i * rows + r)];
        worst_exact = std::max(worst_exact, std::fabs(got - exact) / (quantization + rounding));
        worst_rounded = std::max(worst_rounded, std::fabs(got - with_rounded_x) / rounding);
      }
    }
    CHECK(worst_exact <= 1.0);
    CHECK(worst_rounded <= 1.0);
  }
}

}  // namespace

TEST_CASE("gguf_kquant: every path and both types against ggml's dequantization and an f64 product") {
  const std::vector<GgufDotPath> paths = available_paths();
  uint32_t seed = 1;
  for (BlockType type : {BlockType::q4_k, BlockType::q6_k})
    for (int64_t rows : {1, 7, 33})
      for (int64_t cols : {256, 512, 1536})
        for (int64_t n : {1, 2, 9}) check_against_dequantized(type, rows, cols, n, ++seed, paths);
}

TEST_CASE("gguf_kquant: subnormal and zero f16 block scales") {
  const std::vector<GgufDotPath> paths = available_paths();
  for (BlockType type : {BlockType::q4_k, BlockType::q6_k})
    check_against_dequantized(type, 7, 512, 2, 77, paths, Scales::subnormal);
}

TEST_CASE("gguf_kquant: the thread count does not change a bit") {
  for (BlockType type : {BlockType::q4_k, BlockType::q6_k}) {
    for (int64_t n : {1, 3}) {
      const int64_t rows = 517, cols = 512;  // enough rows for several chunks at n = 1 and 3
      const std::vector<uint8_t> data = random_blocks(type, rows, cols, 99 + uint32_t(n));
      const GgufMatrix matrix{type, rows, cols, data.data()};
      const std::vector<float> x = random_activations(n, cols, 5);
      for (GgufDotPath path : available_paths()) {
        std::vector<float> one_thread, four_threads;
        {
          ThreadCountGuard guard(1);
          one_thread = run(x, n, matrix, path);
        }
        {
          ThreadCountGuard guard(4);
          four_threads = run(x, n, matrix, path);
        }
        CHECK(same_bits(one_thread, four_threads));
        for (float value : one_thread) REQUIRE(std::isfinite(value));
      }
    }
  }
}

TEST_CASE("gguf_kquant: bad input is refused, non-finite activations give NaN") {
  const std::vector<uint8_t> data = random_blocks(BlockType::q4_k, 2, 512, 3);
  std::vector<float> x(512, 0.5f), y(2, 0.0f);
  CHECK_THROWS_WITH_AS(ops::cpu::gguf_kquant_matmul(x.data(), 1, GgufMatrix{BlockType::q8_0, 2, 512, data.data()},
                                                    y.data()),
                       doctest::Contains("not Q4_K or Q6_K"), Error);
  CHECK_THROWS_WITH_AS(ops::cpu::gguf_kquant_matmul(x.data(), 1, GgufMatrix{BlockType::q4_k, 2, 320, data.data()},
                                                    y.data()),
                       doctest::Contains("320 columns"), Error);
  x[300] = std::numeric_limits<float>::infinity();
  ops::cpu::gguf_kquant_matmul(x.data(), 1, GgufMatrix{BlockType::q4_k, 2, 512, data.data()}, y.data());
  CHECK(std::isnan(y[0]));
  CHECK(std::isnan(y[1]));
}
