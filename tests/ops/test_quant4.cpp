// 4-bit NF4/FP4 quantization (ops/quant4.h) against ../shared/docs/formats-and-quantization.md §4:
// the worked example byte for byte, the code tables bit for bit, nearest-code rounding (ties
// down), partial blocks, double quantization, and the fused products (every path: matrix-vector,
// Eigen tiles, AVX-512 panels) and linear_4bit's gradient against ops::matmul on the dequantized
// weight.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "autograd/quant4.h"
#include "helpers.h"
#include "ops/quant4.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;
using ops::Quant4Format;

namespace {

uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  return bits;
}

// The 4-bit code of flat element i, read straight from the packed bytes (high nibble first).
int code_at(const ops::Quantized4Bit& q, int64_t i) {
  const uint8_t byte = q.codes.to_vector<uint8_t>()[size_t(i / 2)];
  return i % 2 == 0 ? byte >> 4 : byte & 15;
}

std::vector<int> all_codes(const ops::Quantized4Bit& q) {
  const std::vector<uint8_t> bytes = q.codes.to_vector<uint8_t>();
  std::vector<int> codes;
  for (int64_t i = 0; i < q.numel(); ++i) {
    const uint8_t byte = bytes[size_t(i / 2)];
    codes.push_back(i % 2 == 0 ? byte >> 4 : byte & 15);
  }
  return codes;
}

Tensor weight_of(const std::vector<float>& values, const Shape& shape) { return Tensor::from_vector(values, shape); }

// x @ W^T through the plain matmul on the dequantized weight: the products' oracle.
// A vector input is multiplied as a one-row matrix.
Tensor reference_product(const Tensor& x, const ops::Quantized4Bit& q) {
  const Tensor w = ops::dequantize_4bit(q);
  if (x.dim() == 1) return reference_product(x.unsqueeze(0), q).squeeze(0);
  return ops::matmul(x, ops::cast(ops::contiguous(w.transpose(0, 1)), x.dtype()));
}

// grad_out @ W, the input gradient's oracle.
Tensor reference_input_grad(const Tensor& grad_out, const ops::Quantized4Bit& q) {
  if (grad_out.dim() == 1) return reference_input_grad(grad_out.unsqueeze(0), q).squeeze(0);
  return ops::matmul(grad_out, ops::dequantize_4bit(q));
}

}  // namespace

TEST_CASE("the worked example of the spec: codes, packed bytes, absmax and dequantized values") {
  const std::vector<float> x = {0.5f, -1.25f, 0.0f, 0.3f, -0.07f, 2.0f, -2.5f, 0.9f,
                                1.1f, -0.45f, 0.02f, -0.8f, 1.7f, -0.15f, 0.6f, -1.9f};
  const ops::Quantized4Bit q = ops::quantize_4bit(weight_of(x, {2, 8}), Quant4Format::nf4, 64, false);
  CHECK(q.codes.shape() == Shape({8, 1}));
  CHECK(q.codes.to_vector<int>() == std::vector<int>({0x92, 0x78, 0x7e, 0x0b, 0xc5, 0x74, 0xe6, 0xa1}));
  CHECK(all_codes(q) == std::vector<int>({9, 2, 7, 8, 7, 14, 0, 11, 12, 5, 7, 4, 14, 6, 10, 1}));
  CHECK(q.absmax.to_vector<float>() == std::vector<float>({2.5f}));
  const std::vector<float> restored = ops::dequantize_4bit(q).to_vector<float>();
  const auto& nf4 = ops::nf4_code_values();
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    CHECK(restored[i] == nf4[size_t(all_codes(q)[i])] * 2.5f);  // bit for bit, one f32 multiply
    worst = std::max(worst, std::fabs(double(restored[i]) - double(x[i])));
  }
  CHECK(worst == doctest::Approx(0.1926).epsilon(1e-3));
  CHECK(restored[5] == doctest::Approx(1.807392).epsilon(1e-6));
}

TEST_CASE("the NF4, FP4 and 8-bit dynamic tables are bitsandbytes' bit for bit") {
  const uint32_t nf4_hex[16] = {0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f,
                                0xbdba7871, 0x00000000, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a,
                                0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000};
  for (size_t i = 0; i < 16; ++i) CHECK(bits_of(ops::nf4_code_values()[i]) == nf4_hex[i]);
  // Code 8 is +0: bitsandbytes builds the table from Python's integer -0, which is 0 (the spec's
  // "-0"); the quant_map transformers saves holds +0 (tests/data/bnb4bit).
  const float fp4[16] = {0, 0.0052083335f, 0.6666667f, 1.0f, 0.33333334f, 0.5f, 0.16666667f, 0.25f,
                         0.0f, -0.0052083335f, -0.6666667f, -1.0f, -0.33333334f, -0.5f, -0.16666667f, -0.25f};
  for (size_t i = 0; i < 16; ++i) CHECK(bits_of(ops::fp4_code_values()[i]) == bits_of(fp4[i]));

  const auto& dynamic = ops::dynamic_map_8bit();
  CHECK(dynamic[127] == 0.0f);
  CHECK(dynamic[255] == 1.0f);
  CHECK(dynamic[0] == -0.992968738f);
  CHECK(dynamic[128] == 5.50000038e-07f);
  CHECK(dynamic[190] == 0.0985937491f);
  for (size_t i = 0; i + 1 < 256; ++i) CHECK(dynamic[i] < dynamic[i + 1]);
  for (size_t i = 0; i < 127; ++i) CHECK(dynamic[i] == -dynamic[254 - i]);
}

TEST_CASE("every element goes to its nearest code, exact midpoints to the lower one") {
  Generator generator(11);
  for (Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4}) {
    CAPTURE(ops::quant4_format_name(format));
    const Tensor w = ops::mul(randn({6, 64}, generator), full({6, 1}, 0.3));
    const ops::Quantized4Bit q = ops::quantize_4bit(w, format, 32, false);
    const std::vector<float> values = w.to_vector<float>(), absmax = q.absmax.to_vector<float>();
    const auto& table = ops::quant4_code_values(format);
    const std::vector<int> codes = all_codes(q);
    double largest_half_gap = 0;
    std::vector<float> sorted(table.begin(), table.end());
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i + 1 < 16; ++i) largest_half_gap = std::max(largest_half_gap, double(sorted[i + 1] - sorted[i]) / 2);
    const std::vector<float> restored = ops::dequantize_4bit(q).to_vector<float>();
    for (size_t i = 0; i < values.size(); ++i) {
      const float scale = absmax[i / 32];
      const float scaled = values[i] * (1.0f / scale);
      const double chosen = std::fabs(double(scaled) - double(table[size_t(codes[i])]));
      for (float other : table) CHECK(chosen <= std::fabs(double(scaled) - double(other)));
      CHECK(std::fabs(double(restored[i]) - double(values[i])) <= largest_half_gap * scale * (1 + 1e-6));
    }
    // The block's absmax is its largest magnitude.
    for (size_t b = 0; b < absmax.size(); ++b) {
      float largest = 0;
      for (size_t i = b * 32; i < b * 32 + 32; ++i) largest = std::max(largest, std::fabs(values[i]));
      CHECK(absmax[b] == largest);
    }
  }

  // Ties: with absmax 1 the scaled value is the value itself; half of a code value is exactly
  // the midpoint between it and 0.
  const float nf4_mid = ops::nf4_code_values()[8] / 2;
  const ops::Quantized4Bit nf4 = ops::quantize_4bit(
      weight_of({1.0f, nf4_mid, std::nextafter(nf4_mid, 1.0f), -nf4_mid}, {1, 4}), Quant4Format::nf4, 32, false);
  CHECK(all_codes(nf4) == std::vector<int>({15, 7, 8, 7}));
  const float fp4_mid = ops::fp4_code_values()[1] / 2;
  const ops::Quantized4Bit fp4 = ops::quantize_4bit(
      weight_of({1.0f, fp4_mid, std::nextafter(fp4_mid, 1.0f), -std::nextafter(fp4_mid, 1.0f), -0.5f, 0.7f}, {1, 6}),
      Quant4Format::fp4, 32, false);
  CHECK(all_codes(fp4) == std::vector<int>({3, 0, 1, 9, 13, 2}));
}

TEST_CASE("odd sizes: a final partial block and a final half byte; all-zero blocks give scale 0") {
  Generator generator(5);
  const Tensor w = randn({3, 37}, generator);  // 111 elements: blocks of 32, 32, 32, 15
  for (Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4}) {
    const ops::Quantized4Bit q = ops::quantize_4bit(w, format, 32, false);
    CHECK(q.codes.shape() == Shape({56, 1}));
    CHECK(q.absmax.shape() == Shape({4}));
    CHECK((q.codes.to_vector<int>().back() & 15) == 0);  // the last low nibble is padding
    const std::vector<float> values = w.to_vector<float>(), absmax = q.absmax.to_vector<float>();
    float last_block = 0;
    for (size_t i = 96; i < 111; ++i) last_block = std::max(last_block, std::fabs(values[i]));
    CHECK(absmax[3] == last_block);
    const std::vector<float> restored = ops::dequantize_4bit(q).to_vector<float>();
    const auto& table = ops::quant4_code_values(format);
    for (int64_t i = 0; i < 111; ++i) CHECK(restored[size_t(i)] == table[size_t(code_at(q, i))] * absmax[size_t(i / 32)]);
  }

  std::vector<float> zeros_then_values(128, 0.0f);
  for (size_t i = 64; i < 128; ++i) zeros_then_values[i] = float(i) / 100.0f;
  for (Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4}) {
    const ops::Quantized4Bit q = ops::quantize_4bit(weight_of(zeros_then_values, {2, 64}), format, 64, false);
    CHECK(q.absmax.to_vector<float>()[0] == 0.0f);
    for (int64_t i = 0; i < 64; ++i) CHECK(code_at(q, i) == (format == Quant4Format::nf4 ? 7 : 0));
    const std::vector<float> restored = ops::dequantize_4bit(q).to_vector<float>();
    for (size_t i = 0; i < 64; ++i) CHECK(restored[i] == 0.0f);
  }

  // bf16 and f16 weights quantize their exact f32 values and remember their dtype.
  const ops::Quantized4Bit from_bf16 = ops::quantize_4bit(ops::cast(w, DType::bf16), Quant4Format::nf4, 64, false);
  CHECK(from_bf16.dtype == DType::bf16);
  const ops::Quantized4Bit from_f32 =
      ops::quantize_4bit(ops::cast(ops::cast(w, DType::bf16), DType::f32), Quant4Format::nf4, 64, false);
  CHECK(from_bf16.codes.to_vector<int>() == from_f32.codes.to_vector<int>());
  CHECK(from_bf16.absmax.to_vector<float>() == from_f32.absmax.to_vector<float>());

  CHECK_THROWS_WITH_AS(ops::quantize_4bit(w, Quant4Format::nf4, 48, false), doctest::Contains("power of two"), Error);
  CHECK_THROWS_WITH_AS(ops::quantize_4bit(w, Quant4Format::nf4, 16, false), doctest::Contains("blocksize"), Error);
  CHECK_THROWS_AS(ops::quantize_4bit(randn({2, 3, 4}, generator)), Error);
}

TEST_CASE("double quantization: the spec's example, and the statistics on a large weight") {
  // Four blocks of 64 whose largest magnitudes are 2.5, 0.8, 1.3 and 0.05.
  std::vector<float> values(256, 0.01f);
  values[3] = 2.5f;
  values[64 + 10] = -0.8f;
  values[128 + 63] = 1.3f;
  values[192] = 0.05f;
  const ops::Quantized4Bit q = ops::quantize_4bit(weight_of(values, {4, 64}), Quant4Format::nf4, 64, true);
  CHECK(q.double_quant);
  CHECK(q.absmax.dtype() == DType::u8);
  CHECK(q.nested_offset == 1.1625000238f);
  CHECK(q.nested_absmax.shape() == Shape({1}));
  CHECK(q.nested_absmax.item<float>() == doctest::Approx(1.3375).epsilon(1e-6));
  CHECK(q.absmax.to_vector<int>() == std::vector<int>({255, 51, 190, 11}));
  const std::vector<float> recovered = ops::dequantize_4bit_absmax(q).to_vector<float>();
  const float expected[4] = {2.5f, 0.79364258f, 1.29436922f, 0.04129887f};
  for (size_t j = 0; j < 4; ++j) CHECK(recovered[j] == doctest::Approx(expected[j]).epsilon(1e-6));
  // The codes are those of the plain quantization; only the scales differ.
  const ops::Quantized4Bit plain = ops::quantize_4bit(weight_of(values, {4, 64}), Quant4Format::nf4, 64, false);
  CHECK(q.codes.to_vector<int>() == plain.codes.to_vector<int>());
  const std::vector<float> restored = ops::dequantize_4bit(q).to_vector<float>();
  for (int64_t i = 0; i < 256; ++i)
    CHECK(restored[size_t(i)] == ops::nf4_code_values()[size_t(code_at(q, i))] * recovered[size_t(i / 64)]);

  // 600 blocks: 3 nested blocks of 256, the last partial.
  Generator generator(3);
  const Tensor w = ops::mul(randn({300, 128}, generator), uniform({300, 1}, 0.1, 2.0, generator));
  const ops::Quantized4Bit big = ops::quantize_4bit(w, Quant4Format::nf4, 64, true);
  const ops::Quantized4Bit big_plain = ops::quantize_4bit(w, Quant4Format::nf4, 64, false);
  CHECK(big.nested_absmax.shape() == Shape({3}));
  CHECK(big.nested_code_values.to_vector<float>() ==
        std::vector<float>(ops::dynamic_map_8bit().begin(), ops::dynamic_map_8bit().end()));
  const std::vector<float> absmax = big_plain.absmax.to_vector<float>();
  double total = 0;
  for (float a : absmax) total += a;
  CHECK(big.nested_offset == float(total / 600));
  const std::vector<float> nested = big.nested_absmax.to_vector<float>();
  const std::vector<int> indices = big.absmax.to_vector<int>();
  const std::vector<float> decoded = ops::dequantize_4bit_absmax(big).to_vector<float>();
  const auto& dynamic = ops::dynamic_map_8bit();
  for (size_t k = 0; k < 3; ++k) {
    float largest = 0;
    for (size_t j = k * 256; j < std::min<size_t>(600, k * 256 + 256); ++j)
      largest = std::max(largest, std::fabs(absmax[j] - big.nested_offset));
    CHECK(nested[k] == largest);
  }
  for (size_t j = 0; j < 600; ++j) {
    const float scaled = (absmax[j] - big.nested_offset) / nested[j / 256];
    const double chosen = std::fabs(double(scaled) - double(dynamic[size_t(indices[j])]));
    for (float other : dynamic) CHECK(chosen <= std::fabs(double(scaled) - double(other)));
    volatile float product = dynamic[size_t(indices[j])] * nested[j / 256];  // rounded: no fused multiply-add
    CHECK(decoded[j] == product + big.nested_offset);
  }
}

TEST_CASE("matmul_4bit and matmul_4bit_input_grad equal ops::matmul with the dequantized weight") {
  // The f32 products only: the integer decode product, which 1..15 rows of a width that is a
  // multiple of 32 take by default (the one-row case below), is tested in test_quant4_int8.cpp.
  struct F32DecodeProduct {
    F32DecodeProduct() { ops::set_quant4_decode_product(ops::Quant4DecodeProduct::f32); }
    ~F32DecodeProduct() { ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic); }
  } f32_decode_product;
  struct Case {
    Shape x_shape;
    int64_t out, in, blocksize;
    Quant4Format format;
    bool double_quant;
  };
  const Case cases[] = {
      {{5, 37}, 7, 37, 32, Quant4Format::nf4, false},           // rows start mid-byte and mid-block
      {{2, 3, 100}, 300, 100, 64, Quant4Format::nf4, true},      // batch dims, several tiles
      {{1, 64}, 9, 64, 128, Quant4Format::fp4, false},          // one row: the matrix-vector path
      {{33, 130}, 70, 130, 64, Quant4Format::fp4, true},        // many rows, K not a multiple of 32
      {{4, 2, 600}, 129, 600, 256, Quant4Format::nf4, false},   // K over the 256-column chunks
      {{17}, 5, 17, 32, Quant4Format::nf4, false},              // a vector input
      {{13, 45}, 40, 45, 32, Quant4Format::fp4, true},          // 13 rows: groups of 8 and 5 (AVX-512)
  };
  Generator generator(21);
  for (const Case& c : cases) {
    CAPTURE(c.x_shape);
    CAPTURE(c.out);
    const ops::Quantized4Bit q = ops::quantize_4bit(randn({c.out, c.in}, generator), c.format, c.blocksize,
                                                    c.double_quant);
    const Tensor x = randn(c.x_shape, generator);
    const Tensor y = ops::matmul_4bit(x, q);
    Shape y_shape = c.x_shape;
    y_shape.back() = c.out;
    CHECK(y.shape() == y_shape);
    CHECK_CLOSE(y, reference_product(x, q), (Tolerance{2e-4, 2e-5}));

    Shape g_shape = c.x_shape;
    g_shape.back() = c.out;
    const Tensor g = randn(g_shape, generator);
    const Tensor dx = ops::matmul_4bit_input_grad(g, q);
    CHECK(dx.shape() == c.x_shape);
    CHECK_CLOSE(dx, reference_input_grad(g, q), (Tolerance{2e-4, 2e-5}));

    // f64 inputs are computed in f64; bf16 inputs give bf16 outputs.
    const Tensor x64 = ops::cast(x, DType::f64);
    CHECK_CLOSE(ops::matmul_4bit(x64, q), reference_product(x64, q), (Tolerance{1e-10, 1e-10}));
    const Tensor y16 = ops::matmul_4bit(ops::cast(x, DType::bf16), q);
    CHECK(y16.dtype() == DType::bf16);
  }

  // Several threads split the tiles and column chunks without changing the result.
  const ops::Quantized4Bit q = ops::quantize_4bit(randn({257, 520}, generator), Quant4Format::nf4, 64, true);
  const Tensor x = randn({12, 520}, generator);
  const Tensor g = randn({12, 257}, generator);
  Tensor one_thread_y, one_thread_dx;
  {
    ThreadCountGuard guard(1);
    one_thread_y = ops::matmul_4bit(x, q);
    one_thread_dx = ops::matmul_4bit_input_grad(g, q);
  }
  ThreadCountGuard guard(4);
  CHECK_CLOSE(ops::matmul_4bit(x, q), one_thread_y, (Tolerance{0, 0}));
  CHECK_CLOSE(ops::matmul_4bit_input_grad(g, q), one_thread_dx, (Tolerance{0, 0}));

  CHECK_THROWS_WITH_AS(ops::matmul_4bit(randn({2, 519}, generator), q), doctest::Contains("520"), Error);
  CHECK_THROWS_WITH_AS(ops::matmul_4bit_input_grad(randn({2, 520}, generator), q), doctest::Contains("257"),
                       Error);
}

// With more than 16 input rows (and for every input gradient) the AVX-512 build multiplies in
// register panels of 14 rows x 32 columns, decoding the weight 32 columns by 256 reduced elements
// at a time (ops/cpu/quant4_panels.cpp). These shapes cut every one of those pieces short.
TEST_CASE("many rows: the panel products equal the dense product on the dequantized weight") {
  struct Case {
    int64_t rows, out, in, blocksize;
    Quant4Format format;
    bool double_quant;
  };
  const Case cases[] = {
      {29, 45, 71, 32, Quant4Format::nf4, true},     // 2 row blocks + 1; rows start mid-byte and mid-block
      {17, 33, 300, 64, Quant4Format::fp4, false},   // a 1-column last panel; 300 = 256 + 44 (two depth pieces)
      {14, 520, 40, 32, Quant4Format::nf4, true},    // one full row block; input grad: depth 520, 8-column panel
      {70, 64, 512, 64, Quant4Format::nf4, true},    // exact blocks, panels and pieces
      {45, 257, 130, 128, Quant4Format::fp4, true},  // 257 outputs: a 1-column panel; K = 130 rows mid-block
      {3, 96, 33, 32, Quant4Format::nf4, false},     // few rows: the input gradient's panels, 3-row block
  };
  Generator generator(31);
  for (const Case& c : cases) {
    CAPTURE(c.rows);
    CAPTURE(c.out);
    CAPTURE(c.in);
    const ops::Quantized4Bit q = ops::quantize_4bit(randn({c.out, c.in}, generator), c.format, c.blocksize,
                                                    c.double_quant);
    const Tensor w64 = ops::cast(ops::dequantize_4bit(q), DType::f64);
    const Tensor x = randn({c.rows, c.in}, generator);
    const Tensor g = randn({c.rows, c.out}, generator);
    const Tensor y = ops::matmul_4bit(x, q), dx = ops::matmul_4bit_input_grad(g, q);
    CHECK_CLOSE(y, reference_product(x, q), (Tolerance{2e-4, 2e-5}));
    CHECK_CLOSE(dx, reference_input_grad(g, q), (Tolerance{2e-4, 2e-5}));
    // Against the exact product (f64 on the same dequantized weight): f32 rounding only.
    CHECK_CLOSE(ops::cast(y, DType::f64), ops::matmul(ops::cast(x, DType::f64), w64, false, true),
                (Tolerance{1e-4, 1e-5}));
    CHECK_CLOSE(ops::cast(dx, DType::f64), ops::matmul(ops::cast(g, DType::f64), w64), (Tolerance{1e-4, 1e-5}));

    // f64 inputs are computed in f64, bf16 ones in f32 on their exact values.
    const Tensor x64 = ops::cast(x, DType::f64), g64 = ops::cast(g, DType::f64);
    CHECK_CLOSE(ops::matmul_4bit(x64, q), reference_product(x64, q), (Tolerance{1e-10, 1e-10}));
    CHECK_CLOSE(ops::matmul_4bit_input_grad(g64, q), ops::matmul(g64, w64), (Tolerance{1e-10, 1e-10}));
    const Tensor x16 = ops::cast(x, DType::bf16), g16 = ops::cast(g, DType::bf16);
    const Tensor y16 = ops::matmul_4bit(x16, q), dx16 = ops::matmul_4bit_input_grad(g16, q);
    CHECK(y16.dtype() == DType::bf16);
    CHECK(dx16.dtype() == DType::bf16);
    CHECK_CLOSE(ops::cast(y16, DType::f32), ops::cast(ops::cast(reference_product(ops::cast(x16, DType::f32), q),
                                                                DType::bf16), DType::f32),
                (Tolerance{2e-2, 1e-2}));
    CHECK_CLOSE(ops::cast(dx16, DType::f32),
                ops::cast(ops::cast(reference_input_grad(ops::cast(g16, DType::f32), q), DType::bf16), DType::f32),
                (Tolerance{2e-2, 1e-2}));
  }

  // The threads split panels and row chunks (their number follows the thread count), never the
  // sums: the result is the same bits on 1, 2 and 3 threads.
  const ops::Quantized4Bit q = ops::quantize_4bit(randn({100, 600}, generator), Quant4Format::nf4, 64, true);
  const Tensor x = randn({150, 600}, generator);
  const Tensor g = randn({150, 100}, generator);
  Tensor one_thread_y, one_thread_dx;
  {
    ThreadCountGuard guard(1);
    one_thread_y = ops::matmul_4bit(x, q);
    one_thread_dx = ops::matmul_4bit_input_grad(g, q);
  }
  for (int threads : {2, 3}) {
    CAPTURE(threads);
    ThreadCountGuard guard(threads);
    CHECK_CLOSE(ops::matmul_4bit(x, q), one_thread_y, (Tolerance{0, 0}));
    CHECK_CLOSE(ops::matmul_4bit_input_grad(g, q), one_thread_dx, (Tolerance{0, 0}));
  }
  CHECK_CLOSE(one_thread_y, reference_product(x, q), (Tolerance{2e-4, 2e-5}));
}

TEST_CASE("linear_4bit: x's gradient passes gradcheck, and the frozen base gets none") {
  Generator generator(8);
  const ops::Quantized4Bit q = ops::quantize_4bit(randn({6, 45}, generator), Quant4Format::nf4, 32, true);
  const Tensor x = randn({2, 3, 45}, generator, DType::f64);
  const autograd::GradcheckResult result =
      autograd::gradcheck([&](const std::vector<Tensor>& inputs) { return linear_4bit(inputs[0], q); }, {x});
  INFO(result.worst);
  CHECK(result.passed);

  // The gradient is exactly grad_out @ W; the base's tensors never join the graph.
  const std::vector<uint8_t> codes_before = q.codes.to_vector<uint8_t>();
  const Tensor leaf = randn({4, 45}, generator).set_requires_grad();
  const Tensor y = linear_4bit(leaf, q);
  CHECK(y.requires_grad());
  const Tensor weights = randn({4, 6}, generator);
  sum(mul(y, weights)).backward();
  REQUIRE(leaf.grad().defined());
  CHECK_CLOSE(leaf.grad(), ops::matmul(weights, ops::dequantize_4bit(q)), (Tolerance{1e-5, 1e-5}));
  for (const Tensor* t : {&q.codes, &q.absmax, &q.code_values, &q.nested_absmax, &q.nested_code_values}) {
    CHECK_FALSE(t->requires_grad());
    CHECK_FALSE(t->grad().defined());
  }
  CHECK(q.codes.to_vector<uint8_t>() == codes_before);

  // The raw ops never record, whatever their input requires (linear_4bit does that).
  CHECK_FALSE(ops::matmul_4bit(leaf, q).requires_grad());
  CHECK_FALSE(ops::matmul_4bit_input_grad(randn({4, 6}, generator).set_requires_grad(), q).requires_grad());

  // An input that needs no gradient records nothing.
  const Tensor plain = linear_4bit(randn({4, 45}, generator), q);
  CHECK_FALSE(plain.requires_grad());
}
