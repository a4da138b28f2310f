// gguf_matmul (ops/gguf_matmul.h) on Q8_0, Q4_0 and Q4_1 weights: every CPU path against the
// dequantized weight (ggml::dequantize) times x in f64, with a tolerance derived from the int8
// activation rounding; the paths against each other bit for bit (they share one definition of
// the integer sums and of the f32 summation order), also for one row of x (the decode kernels'
// grouping of weight rows); thread counts; the errors; and a
// matrix-vector bandwidth benchmark (skipped unless asked for: -tc='*bandwidth*' --no-skip).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "helpers.h"
#include "models/io/gguf.h"
#include "models/io/gguf_write.h"
#include "ops/ggml_blocks.h"
#include "ops/gguf_matmul.h"
#include "ops/ops.h"
#include "tensor/parallel.h"

using namespace lamina;
using ops::GgufDotPath;
using ops::GgufMatrix;
using ops::ggml::BlockType;

namespace {

constexpr BlockType kTypes[] = {BlockType::q8_0, BlockType::q4_0, BlockType::q4_1};
constexpr GgufDotPath kPaths[] = {GgufDotPath::reference, GgufDotPath::avx2, GgufDotPath::vnni};

// Restores automatic path selection when a test case ends, passing or not.
struct PathGuard {
  ~PathGuard() { ops::set_gguf_dot_path(GgufDotPath::automatic); }
};

void put_half(uint8_t* at, float value) {
  const uint16_t bits = f16(value).bits;
  std::memcpy(at, &bits, 2);
}

// Random blocks: every quant byte uniformly random (so Q8_0 includes -128 and every nibble
// occurs), scales small finite f16 of either sign, Q4_1 mins of either sign.
std::vector<uint8_t> random_blocks(BlockType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const int64_t bytes = int64_t(ops::ggml::block_bytes(type));
  const int64_t blocks = rows * cols / 32;
  std::vector<uint8_t> data(size_t(blocks * bytes));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f), sign(-1.0f, 1.0f);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* block = data.data() + b * bytes;
    for (int64_t i = 0; i < bytes; ++i) block[i] = uint8_t(byte(rng));
    put_half(block, sign(rng) < 0 ? -scale(rng) : scale(rng));
    if (type == BlockType::q4_1) put_half(block + 2, 4 * scale(rng) * sign(rng));
  }
  return data;
}

std::vector<float> random_activations(int64_t n, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(n * cols));
  for (float& value : x) value = normal(rng);
  if (n * cols >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // an all-zero block: scale 0
  return x;
}

Tensor as_tensor(const std::vector<float>& x, int64_t n, int64_t cols) {
  return Tensor::from_vector(x, n == 1 ? Shape{cols} : Shape{n, cols});
}

struct Expected {
  std::vector<double> value, tolerance;
};

// y = x W^T in f64 from the dequantized W, and for each output the bound on what int8
// activations may change: per block of 32, |x_e - d q_e| <= d / 2 with d = max |x| / 127, so
// |error| <= sum over blocks of (d / 2) * sum |W_e|; plus f32 rounding of the products and sums:
// at most (blocks / 2 + 5) additions into one lane, each within 2^-24 of the running magnitude,
// bounded by sum |W_e x_e| (with the quantization slack).
Expected expected_product(const std::vector<float>& w, const std::vector<float>& x, int64_t rows, int64_t cols,
                          int64_t n) {
  Expected out;
  out.value.resize(size_t(n * rows));
  out.tolerance.resize(size_t(n * rows));
  const int64_t blocks = cols / 32;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double sum = 0, quantization = 0, magnitude = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        double largest = 0, weight_mass = 0;
        for (int64_t e = b * 32; e < b * 32 + 32; ++e) {
          const double wv = w[size_t(r * cols + e)], xv = x[size_t(i * cols + e)];
          sum += wv * xv;
          largest = std::max(largest, std::fabs(xv));
          weight_mass += std::fabs(wv);
          magnitude += std::fabs(wv * xv);
        }
        quantization += largest / 127.0 / 2.0 * weight_mass;
      }
      out.value[size_t(i * rows + r)] = sum;
      out.tolerance[size_t(i * rows + r)] =
          quantization * 1.0001 + double(blocks / 2 + 8) * 6.0e-8 * (magnitude + quantization) * 2 + 1e-30;
    }
  return out;
}

std::vector<float> dequantized(const GgufMatrix& w) { return ops::gguf_dequantize(w).to_vector<float>(); }

bool path_runs(GgufDotPath path) {
  if (ops::gguf_dot_path_available(path)) return true;
  MESSAGE("skipping the ", std::string(ops::gguf_dot_path_name(path)), " path: this CPU lacks its instructions");
  return false;
}

std::vector<uint32_t> bits_of(const std::vector<float>& values) {
  std::vector<uint32_t> out(values.size());
  std::memcpy(out.data(), values.data(), values.size() * 4);
  return out;
}

}  // namespace

TEST_CASE("gguf_matmul: every path and type against the dequantized f64 product, paths equal bit for bit") {
  PathGuard guard;
  std::mt19937 rng(1234);
  for (BlockType type : kTypes)
    for (int64_t cols : {32, 96, 4096})
      for (int64_t rows : {1, 5, 67})
        for (int64_t n : {1, 3, 17}) {
          CAPTURE(ops::ggml::block_type_name(type));
          CAPTURE(rows);
          CAPTURE(cols);
          CAPTURE(n);
          const std::vector<uint8_t> data = random_blocks(type, rows, cols, rng);
          const GgufMatrix w{type, rows, cols, data.data()};
          const std::vector<float> x = random_activations(n, cols, rng);
          const Expected expected = expected_product(dequantized(w), x, rows, cols, n);
          std::vector<uint32_t> reference_bits;
          for (GgufDotPath path : kPaths) {
            if (!path_runs(path)) continue;
            CAPTURE(ops::gguf_dot_path_name(path));
            ops::set_gguf_dot_path(path);
            const Tensor y = ops::gguf_matmul(as_tensor(x, n, cols), w);
            CHECK(y.shape() == (n == 1 ? Shape{rows} : Shape{n, rows}));
            const std::vector<float> values = y.to_vector<float>();
            int64_t outside = 0;
            for (size_t k = 0; k < values.size(); ++k)
              if (!(std::fabs(double(values[k]) - expected.value[k]) <= expected.tolerance[k])) ++outside;
            CHECK(outside == 0);
            if (path == GgufDotPath::reference)
              reference_bits = bits_of(values);
            else
              CHECK(bits_of(values) == reference_bits);
          }
        }
}

// Activations that int8 represents exactly (k / 128 with max |k| = 127 in each block) leave
// only f32 rounding: this pins the integer parts (signs, nibble order, Q4_0's 8, Q4_1's min)
// far tighter than the activation-rounding tolerance can.
TEST_CASE("gguf_matmul: exactly representable activations leave only f32 rounding") {
  PathGuard guard;
  std::mt19937 rng(99);
  std::uniform_int_distribution<int> level(-127, 127);
  const int64_t rows = 9, cols = 160, n = 2;
  std::vector<float> x(size_t(n * cols));
  for (size_t e = 0; e < x.size(); ++e) x[e] = float(e % 32 == 5 ? (e % 64 < 32 ? 127 : -127) : level(rng)) / 128.0f;
  for (BlockType type : kTypes) {
    CAPTURE(ops::ggml::block_type_name(type));
    const std::vector<uint8_t> data = random_blocks(type, rows, cols, rng);
    const GgufMatrix w{type, rows, cols, data.data()};
    const std::vector<float> weights = dequantized(w);
    for (GgufDotPath path : kPaths) {
      if (!path_runs(path)) continue;
      CAPTURE(ops::gguf_dot_path_name(path));
      ops::set_gguf_dot_path(path);
      const std::vector<float> y = ops::gguf_matmul(as_tensor(x, n, cols), w).to_vector<float>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          double sum = 0, magnitude = 0;
          for (int64_t e = 0; e < cols; ++e) {
            sum += double(weights[size_t(r * cols + e)]) * x[size_t(i * cols + e)];
            magnitude += std::fabs(double(weights[size_t(r * cols + e)]) * x[size_t(i * cols + e)]);
          }
          CHECK(std::fabs(double(y[size_t(i * rows + r)]) - sum) <= 16 * 6.0e-8 * magnitude);
        }
    }
  }
}

TEST_CASE("gguf_matmul: batch dimensions, thread counts do not change results") {
  PathGuard guard;
  std::mt19937 rng(7);
  const int64_t rows = 301, cols = 256;
  for (BlockType type : kTypes) {
    CAPTURE(ops::ggml::block_type_name(type));
    const std::vector<uint8_t> data = random_blocks(type, rows, cols, rng);
    const GgufMatrix w{type, rows, cols, data.data()};
    const std::vector<float> x = random_activations(6, cols, rng);
    const Tensor batched = Tensor::from_vector(x, {2, 3, cols});
    for (GgufDotPath path : kPaths) {
      if (!path_runs(path)) continue;
      ops::set_gguf_dot_path(path);
      std::vector<uint32_t> first;
      for (int threads : {1, 2, 3, 8}) {
        ThreadCountGuard thread_guard(threads);
        const Tensor y = ops::gguf_matmul(batched, w);
        CHECK(y.shape() == Shape{2, 3, rows});
        const std::vector<uint32_t> bits = bits_of(y.to_vector<float>());
        if (first.empty())
          first = bits;
        else
          CHECK(bits == first);
      }
      // The 3-D x gives what its rows give one at a time (row 4 = [1, 1, :]).
      const std::vector<float> single =
          ops::gguf_matmul(Tensor::from_vector(std::vector<float>(x.begin() + 4 * cols, x.begin() + 5 * cols), {cols}),
                           w)
              .to_vector<float>();
      CHECK(bits_of(single) == std::vector<uint32_t>(first.begin() + 4 * rows, first.begin() + 5 * rows));
    }
  }
}

// One row of x (decode) takes its own kernel, which runs several weight rows in one pass: at
// SmolLM2's widths (18 and 48 blocks) and an odd block count, for every count of weight rows
// left over by that grouping and split by threads, it must equal the reference bit for bit,
// with an infinite activation (a NaN block scale) confined to the rows' sums as in the reference.
TEST_CASE("gguf_matmul: one row of x, any number of weight rows, equals the reference bit for bit") {
  PathGuard guard;
  std::mt19937 rng(2024);
  for (BlockType type : kTypes)
    for (int64_t cols : {544, 576, 1536})
      for (int64_t rows : {1, 2, 3, 4, 5, 6, 7, 9, 38}) {
        CAPTURE(ops::ggml::block_type_name(type));
        CAPTURE(cols);
        CAPTURE(rows);
        const std::vector<uint8_t> data = random_blocks(type, rows, cols, rng);
        const GgufMatrix w{type, rows, cols, data.data()};
        std::vector<float> x = random_activations(1, cols, rng);
        const bool infinite = rows == 5;
        if (infinite) x[size_t(cols - 3)] = INFINITY;
        ops::set_gguf_dot_path(GgufDotPath::reference);
        const std::vector<float> reference = ops::gguf_matmul(as_tensor(x, 1, cols), w).to_vector<float>();
        int64_t not_nan = 0;
        for (float value : reference) not_nan += !std::isnan(value);
        CHECK(not_nan == (infinite ? 0 : rows));
        for (GgufDotPath path : {GgufDotPath::avx2, GgufDotPath::vnni}) {
          if (!path_runs(path)) continue;
          CAPTURE(ops::gguf_dot_path_name(path));
          ops::set_gguf_dot_path(path);
          for (int threads : {1, 3}) {
            ThreadCountGuard thread_guard(threads);
            CHECK(bits_of(ops::gguf_matmul(as_tensor(x, 1, cols), w).to_vector<float>()) == bits_of(reference));
          }
        }
      }
}

TEST_CASE("gguf_dequantize is ggml's dequantization (gguf::dequantize)") {
  std::mt19937 rng(5);
  for (BlockType type : {BlockType::q8_0, BlockType::q4_0, BlockType::q4_1, BlockType::q4_k, BlockType::q6_k}) {
    CAPTURE(ops::ggml::block_type_name(type));
    const int64_t rows = 3, cols = 512;
    std::vector<uint8_t> data(
        size_t(rows * cols / int64_t(ops::ggml::block_elements(type)) * int64_t(ops::ggml::block_bytes(type))));
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& value : data) value = uint8_t(byte(rng));
    // Keep every f16 scale finite: clear the exponent's top bit in each block's leading halves.
    const int64_t bytes = int64_t(ops::ggml::block_bytes(type));
    for (size_t b = 0; b < data.size(); b += size_t(bytes)) {
      if (type == BlockType::q6_k)
        data[b + 209] &= 0x3f;
      else
        data[b + 1] &= 0x3f, data[b + 3] &= 0x3f;
    }
    const Tensor y = ops::gguf_dequantize({type, rows, cols, data.data()});
    CHECK(y.shape() == Shape{rows, cols});
    std::vector<float> expected(size_t(rows * cols));
    gguf::dequantize(gguf::TensorType(uint32_t(type)), data.data(), uint64_t(rows * cols), expected.data());
    CHECK(bits_of(y.to_vector<float>()) == bits_of(expected));
    // And one value decoded by hand: Q8_0's first element is int8 * d.
    if (type == BlockType::q8_0)
      CHECK(y.to_vector<float>()[1] ==
            float(int8_t(data[3])) * float(f16::from_bits(uint16_t(data[0] | (data[1] << 8)))));
  }
}

TEST_CASE("gguf_matmul: errors name the problem") {
  PathGuard guard;
  std::vector<uint8_t> data(size_t(4 * 96 / 32 * 34), 0);
  const GgufMatrix w{BlockType::q8_0, 4, 96, data.data()};
  CHECK_THROWS_WITH_AS(ops::gguf_matmul(zeros({2, 64}), w), doctest::Contains("last dimension is 64"), Error);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul(zeros({2, 96}, DType::bf16), w), doctest::Contains("must be f32"), Error);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul(zeros({48}), GgufMatrix{BlockType::q8_0, 4, 48, data.data()}),
                       doctest::Contains("not whole Q8_0 blocks of 32"), Error);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul(zeros({96}), GgufMatrix{BlockType::q5_0, 4, 96, data.data()}),
                       doctest::Contains("no integer kernel for Q5_0"), Error);
  CHECK_THROWS_WITH_AS(ops::gguf_matmul(zeros({96}), GgufMatrix{BlockType(9), 4, 96, data.data()}),
                       doctest::Contains("unknown GGUF block type id 9"), Error);
  for (GgufDotPath path : {GgufDotPath::avx2, GgufDotPath::vnni})
    if (!ops::gguf_dot_path_available(path))
      CHECK_THROWS_WITH_AS(ops::set_gguf_dot_path(path), doctest::Contains("which this CPU lacks"), Error);
    else
      MESSAGE("this CPU runs the ", std::string(ops::gguf_dot_path_name(path)),
              " path: its 'CPU lacks' error is not exercised");
  // An all-zero matrix gives zeros, and the automatic path is one this CPU runs.
  CHECK(ops::gguf_matmul(ones({96}), w).to_vector<float>() == std::vector<float>(4, 0.0f));
  CHECK(ops::gguf_dot_path_available(ops::gguf_dot_path()));
  // A non-finite activation (an infinity, or a NaN, which a max over the block would skip) makes
  // its outputs NaN on every path (no int8 code holds it).
  std::vector<uint8_t> ones_data(size_t(4 * 96 / 32 * 34), 1);
  for (float bad : {INFINITY, NAN}) {
    std::vector<float> x(96, 0.5f);
    x[40] = bad;
    for (GgufDotPath path : kPaths) {
      if (!path_runs(path)) continue;
      ops::set_gguf_dot_path(path);
      CAPTURE(bad);
      for (float value :
           ops::gguf_matmul(Tensor::from_vector(x, {96}), {BlockType::q8_0, 4, 96, ones_data.data()}).to_vector<float>())
        CHECK(std::isnan(value));
    }
  }
}

// Weight bytes per second of a matrix-vector product at SmolLM2-135M's shapes, per path and
// type, with the thread count in force. Skipped by default: timing means little on a loaded machine.
TEST_CASE("gguf_matmul: matrix-vector bandwidth (SmolLM2 shapes)" * doctest::skip()) {
  PathGuard guard;
  std::mt19937 rng(3);
  for (BlockType type : kTypes)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{576, 1536}, {1536, 576}, {576, 576}, {49152, 576}}) {
      const std::vector<uint8_t> data = random_blocks(type, rows, cols, rng);
      const GgufMatrix w{type, rows, cols, data.data()};
      const Tensor x = as_tensor(random_activations(1, cols, rng), 1, cols);
      for (GgufDotPath path : kPaths) {
        if (!ops::gguf_dot_path_available(path)) continue;
        ops::set_gguf_dot_path(path);
        ops::gguf_matmul(x, w);  // warm the caches of the small matrices as decoding would
        const int repeats = int(std::max<int64_t>(3, 200'000'000 / int64_t(data.size()) / 10));
        const auto start = std::chrono::steady_clock::now();
        for (int k = 0; k < repeats; ++k) ops::gguf_matmul(x, w);
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / repeats;
        MESSAGE(std::string(ops::ggml::block_type_name(type)), " ", rows, "x", cols, " ",
                std::string(ops::gguf_dot_path_name(path)), ": ", seconds * 1e6, " us, ",
                double(data.size()) / seconds / 1e9, " GB/s of weights (", num_threads(), " threads)");
      }
    }
}

// Q4_K and Q6_K go to ops/cpu/gguf_kquant (tested in depth in test_gguf_kquant.cpp); here only
// that gguf_matmul reaches it on every path, with x's batch shape, within the activation
// rounding bound of its per-256 activation scales.
TEST_CASE("gguf_matmul: Q4_K and Q6_K are dispatched to the K-quant kernels") {
  PathGuard guard;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.001f, 0.01f);
  for (BlockType type : {BlockType::q4_k, BlockType::q6_k}) {
    CAPTURE(ops::ggml::block_type_name(type));
    if (!ops::gguf_matmul_supports(type)) {
      MESSAGE("skipping: this tree has no K-quant kernels");
      continue;
    }
    const int64_t rows = 7, cols = 512, n = 3, bytes = int64_t(ops::ggml::block_bytes(type));
    std::vector<uint8_t> data(size_t(rows * cols / 256 * bytes));
    for (uint8_t& value : data) value = uint8_t(byte(rng));
    for (size_t b = 0; b < data.size(); b += size_t(bytes)) {
      if (type == BlockType::q6_k) {
        put_half(data.data() + b + 208, scale(rng));
      } else {
        put_half(data.data() + b, scale(rng));
        put_half(data.data() + b + 2, scale(rng));
      }
    }
    const GgufMatrix w{type, rows, cols, data.data()};
    const std::vector<float> weights = dequantized(w), x = random_activations(n, cols, rng);
    for (GgufDotPath path : kPaths) {
      if (!path_runs(path)) continue;
      CAPTURE(std::string(ops::gguf_dot_path_name(path)));
      ops::set_gguf_dot_path(path);
      const Tensor y = ops::gguf_matmul(Tensor::from_vector(x, {1, n, cols}), w);
      REQUIRE(y.shape() == Shape{1, n, rows});
      const std::vector<float> values = y.to_vector<float>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          double sum = 0, bound = 0, magnitude = 0;
          for (int64_t s = 0; s < cols; s += 256) {
            double largest = 0, mass = 0;
            for (int64_t e = s; e < s + 256; ++e) {
              const double wv = weights[size_t(r * cols + e)], xv = x[size_t(i * cols + e)];
              sum += wv * xv;
              magnitude += std::fabs(wv * xv);
              largest = std::max(largest, std::fabs(xv));
              mass += std::fabs(wv);
            }
            bound += largest / 127.0 / 2.0 * mass;
          }
          CHECK(std::fabs(double(values[size_t(i * rows + r)]) - sum) <= bound * 1.0001 + 1e-5 * (magnitude + bound));
        }
    }
  }
}

// From 16 rows of x on, gguf_matmul multiplies by W dequantized a panel of 64 rows at a time in
// f32 (no activation rounding): only f32 summation error is left, for every block type, for
// row counts that do not fill the last panel, and independently of the thread count.
TEST_CASE("gguf_matmul: many rows of x multiply the exact weights in f32") {
  std::mt19937 rng(321);
  for (BlockType type : {BlockType::q8_0, BlockType::q4_0, BlockType::q4_1, BlockType::q4_k, BlockType::q6_k}) {
    CAPTURE(ops::ggml::block_type_name(type));
    const int64_t rows = 70, cols = 512, n = 19;
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> source(size_t(rows * cols));
    for (float& value : source) value = normal(rng);
    const std::vector<uint8_t> data = gguf::encode(gguf::TensorType(uint32_t(type)), source.data(), source.size());
    const GgufMatrix w{type, rows, cols, data.data()};
    const std::vector<float> weights = dequantized(w);
    const std::vector<float> x = random_activations(n, cols, rng);
    std::vector<uint32_t> first;
    for (int threads : {1, 2, 3}) {
      ThreadCountGuard thread_guard(threads);
      const std::vector<float> y = ops::gguf_matmul(as_tensor(x, n, cols), w).to_vector<float>();
      int64_t outside = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r) {
          double sum = 0, magnitude = 0;
          for (int64_t e = 0; e < cols; ++e) {
            const double product = double(weights[size_t(r * cols + e)]) * x[size_t(i * cols + e)];
            sum += product;
            magnitude += std::fabs(product);
          }
          if (!(std::fabs(double(y[size_t(i * rows + r)]) - sum) <= double(cols) * 6.0e-8 * magnitude)) ++outside;
        }
      CHECK(outside == 0);
      if (first.empty())
        first = bits_of(y);
      else
        CHECK(bits_of(y) == first);
    }
  }
}
