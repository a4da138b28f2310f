// matmul_4bit's integer decode product (ops/cpu/quant4_int8.h, the rule in ops/quant4.h): the
// int8 code tables and their error; every CPU path (AVX-512 VNNI, AVX2) against the plain C++
// reference bit for bit; the result against dequantize-then-f64 within the bound ops/quant4.h
// states; the row rule (15 rows integer, 16 rows f32, other shapes f32); and greedy generation of
// a tiny NF4 model on the integer path against the f32 path.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "nn/layers.h"
#include "ops/gguf_matmul.h"
#include "ops/quant4.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;
using ops::Quant4Format;

namespace {

// Puts the decode product and the integer path back to their defaults when a case ends.
struct RestoreDecodeSettings {
  ~RestoreDecodeSettings() {
    ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic);
    ops::set_gguf_dot_path(ops::GgufDotPath::automatic);
  }
};

bool same_bits(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

// Where two f32 results first differ, for the failure message.
std::string first_difference(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  for (size_t i = 0; i < std::min(x.size(), y.size()); ++i)
    if (std::memcmp(&x[i], &y[i], sizeof(float)) != 0) return str_cat("element ", i, ": ", x[i], " vs ", y[i]);
  return x.size() == y.size() ? "none" : "sizes differ";
}

Tensor product_with(ops::Quant4DecodeProduct product, const Tensor& x, const ops::Quantized4Bit& q) {
  ops::set_quant4_decode_product(product);
  Tensor y = ops::matmul_4bit(x, q);
  ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic);
  return y;
}

// Activations with a wide range of group scales (so that the per-32 scales matter), an all-zero
// group (scale 0) and a group holding one large outlier.
Tensor spread_activations(int64_t rows, int64_t in, Generator& generator) {
  std::vector<float> x = randn({rows, in}, generator).to_vector<float>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t e = 0; e < in; ++e) {
      const int64_t group = e / 32;
      float& value = x[size_t(i * in + e)];
      value *= std::pow(4.0f, float((group + i) % 5) - 2.0f);
      if (group == 1) value = 0.0f;
      if (group == 2 && e % 32 == 5) value = 40.0f;
    }
  return Tensor::from_vector(x, {rows, in});
}

struct Shapes {
  int64_t rows, out, in, blocksize;
  bool double_quant;
};

// Odd shapes: 1, 3, 15 rows; out not a multiple of 8 or 16; in a multiple of 32 but not of 256
// (an odd number of 32-groups too: the last pair has one group); blocksizes 32, 64, 128 (blocks
// that span rows); double-quantized absmax.
const Shapes kShapes[] = {
    {1, 37, 96, 64, false},    // 3 groups: a lone last group; blocks across row ends
    {3, 21, 320, 128, true},   // 10 groups; double quantization
    {15, 45, 224, 64, true},   // the most rows the integer path takes; 7 groups
    {1, 70, 576, 64, false},   // SmolLM2's hidden size; out not a multiple of 4
    {2, 13, 64, 32, false},    // blocksize 32: one block per group
    {5, 9, 1536, 128, true},   // SmolLM2's intermediate size
};

}  // namespace

TEST_CASE("quant4 int8: the code tables are round(127 v), within the documented error") {
  struct Expected {
    Quant4Format format;
    std::array<int8_t, 16> table;
    double max_error;
  };
  const Expected expected[] = {
      {Quant4Format::nf4, {-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127}, 0.0036711},
      {Quant4Format::fp4, {0, 1, 85, 127, 42, 64, 21, 32, 0, -1, -85, -127, -42, -64, -21, -32}, 0.0039370},
  };
  for (const Expected& e : expected) {
    const std::string name = ops::quant4_format_name(e.format);
    CAPTURE(name);
    const auto& values = ops::quant4_code_values(e.format);
    const std::array<int8_t, 16> table = ops::quant4_int8_code_table(values);
    CHECK(table == e.table);
    double worst = 0;
    int worst_code = 0;
    for (int c = 0; c < 16; ++c) {
      const double error = std::fabs(double(table[size_t(c)]) / 127.0 - double(values[size_t(c)]));
      CHECK(error <= 0.5 / 127.0);
      if (error > worst) worst = error, worst_code = c;
    }
    MESSAGE(name, " int8 table: max |t/127 - v| = ", worst, " at code ", worst_code);
    CHECK(worst == doctest::Approx(e.max_error).epsilon(1e-4));
  }
  std::array<float, 16> outside = ops::nf4_code_values();
  outside[3] = 1.5f;
  CHECK_THROWS_WITH_AS(ops::quant4_int8_code_table(outside), doctest::Contains("code 3"), Error);
}

TEST_CASE("quant4 int8: AVX2 and AVX-512 VNNI give the reference's bits, for NF4 and FP4") {
  RestoreDecodeSettings restore;
  Generator generator(41);
  const ops::GgufDotPath paths[] = {ops::GgufDotPath::avx2, ops::GgufDotPath::vnni};
  for (const Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4})
    for (const Shapes& s : kShapes) {
      const std::string name = ops::quant4_format_name(format);
      CAPTURE(name);
      CAPTURE(s.rows);
      CAPTURE(s.out);
      CAPTURE(s.in);
      CAPTURE(s.blocksize);
      const ops::Quantized4Bit q =
          ops::quantize_4bit(randn({s.out, s.in}, generator), format, s.blocksize, s.double_quant);
      const Tensor x = spread_activations(s.rows, s.in, generator);
      ops::set_gguf_dot_path(ops::GgufDotPath::reference);
      const Tensor expected = ops::matmul_4bit(x, q);
      // The integer path ran: its result is not the f32 product's.
      CHECK_FALSE(same_bits(expected, product_with(ops::Quant4DecodeProduct::f32, x, q)));
      for (const ops::GgufDotPath path : paths) {
        const std::string path_name = ops::gguf_dot_path_name(path);
        CAPTURE(path_name);
        if (!ops::gguf_dot_path_available(path)) {
          MESSAGE("skipped: this CPU has no ", ops::gguf_dot_path_name(path), " path");
          CHECK_THROWS_AS(ops::set_gguf_dot_path(path), Error);  // forcing it is an error
          continue;
        }
        ops::set_gguf_dot_path(path);
        const Tensor y = ops::matmul_4bit(x, q);
        CHECK_MESSAGE(same_bits(y, expected), "first difference at ", first_difference(y, expected));
      }
      ops::set_gguf_dot_path(ops::GgufDotPath::automatic);
      // The split over threads never changes a result.
      Tensor one_thread;
      {
        ThreadCountGuard guard(1);
        one_thread = ops::matmul_4bit(x, q);
      }
      ThreadCountGuard guard(3);
      CHECK(same_bits(ops::matmul_4bit(x, q), one_thread));
      CHECK(same_bits(one_thread, expected));
    }
}

TEST_CASE("quant4 int8: within the stated bound of dequantize-then-f64") {
  // Bound per output (ops/quant4.h): sum_e absmax_e * (table_error_c * (|x_e| + d/2) + |v_c| * d/2),
  // d = max |x| / 127 of x_e's group, plus f32 rounding: each lane adds at most `pairs` fused
  // products and the tree 4 sums, each rounding by at most 2^-24 of the terms' magnitude, and
  // the scale absmax * (d / 127) carries 2 roundings of its own (1e-4 of the bound covers it and
  // the rounding of d and 1 / d in the activation quantization).
  RestoreDecodeSettings restore;
  Generator generator(43);
  double worst_error = 0, worst_ratio = 0;
  for (const Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4})
    for (const Shapes& s : kShapes) {
      const std::string name = ops::quant4_format_name(format);
      CAPTURE(name);
      CAPTURE(s.rows);
      CAPTURE(s.in);
      const ops::Quantized4Bit q =
          ops::quantize_4bit(randn({s.out, s.in}, generator), format, s.blocksize, s.double_quant);
      const Tensor x = spread_activations(s.rows, s.in, generator);
      const std::vector<float> y = ops::matmul_4bit(x, q).to_vector<float>();
      const std::vector<float> xs = x.to_vector<float>();
      const std::vector<float> w = ops::dequantize_4bit(q).to_vector<float>();
      const std::vector<float> absmax = ops::dequantize_4bit_absmax(q).to_vector<float>();
      const auto& values = ops::quant4_code_values(format);
      const std::array<int8_t, 16> table = ops::quant4_int8_code_table(values);
      const std::vector<uint8_t> codes = q.codes.to_vector<uint8_t>();
      const int64_t pairs = (s.in / 32 + 1) / 2;
      for (int64_t i = 0; i < s.rows; ++i)
        for (int64_t r = 0; r < s.out; ++r) {
          double exact = 0, bound = 0, magnitude = 0;
          for (int64_t e = 0; e < s.in; ++e) {
            const int64_t flat = r * s.in + e;
            const int code = flat % 2 == 0 ? codes[size_t(flat / 2)] >> 4 : codes[size_t(flat / 2)] & 15;
            const double a = absmax[size_t(flat / s.blocksize)], value = xs[size_t(i * s.in + e)];
            double largest = 0;
            for (int64_t k = e / 32 * 32; k < e / 32 * 32 + 32; ++k)
              largest = std::max(largest, std::fabs(double(xs[size_t(i * s.in + k)])));
            const double d = largest / 127.0, t = double(table[size_t(code)]) / 127.0;
            exact += double(w[size_t(flat)]) * value;
            bound += a * (std::fabs(t - double(values[size_t(code)])) * (std::fabs(value) + d / 2) +
                          std::fabs(double(values[size_t(code)])) * d / 2);
            magnitude += a * std::fabs(t) * (std::fabs(value) + d / 2);
          }
          const double allowed = bound * (1 + 1e-4) + double(pairs + 6) * std::ldexp(1.0, -24) * magnitude * 1.01;
          const double error = std::fabs(double(y[size_t(i * s.out + r)]) - exact);
          if (!(error <= allowed)) {
            FAIL_CHECK("output [", i, ", ", r, "]: ", y[size_t(i * s.out + r)], " vs f64 ", exact, ", error ", error,
                       " > bound ", allowed);
          }
          worst_error = std::max(worst_error, error);
          if (allowed > 0) worst_ratio = std::max(worst_ratio, error / allowed);
        }
    }
  MESSAGE("int8 vs dequantize-then-f64: max |error| ", worst_error, ", at most ", worst_ratio, " of the bound");
  CHECK(worst_error > 0);
}

TEST_CASE("quant4 int8: the row rule, batch dims, bf16 x, non-finite activations and the switch") {
  RestoreDecodeSettings restore;
  Generator generator(47);
  const ops::Quantized4Bit q = ops::quantize_4bit(randn({33, 128}, generator), Quant4Format::nf4, 64, true);
  const ops::Quant4DecodeProduct f32 = ops::Quant4DecodeProduct::f32, int8 = ops::Quant4DecodeProduct::int8;
  CHECK(ops::quant4_decode_product() == int8);  // the default (LAMINA_CPU_4BIT_DECODE unset in the tests)
  CHECK(std::string(ops::quant4_decode_product_name(f32)) == "f32");

  // 16 rows are the f32 product whatever the switch says; 15 are the integer one.
  const Tensor x16 = randn({16, 128}, generator);
  CHECK(same_bits(product_with(int8, x16, q), product_with(f32, x16, q)));
  const Tensor x15 = x16.slice(0, 0, 15);
  const Tensor y15 = product_with(int8, x15, q);
  CHECK_FALSE(same_bits(y15, product_with(f32, x15, q)));
  // Each row is its own product: the 15 rows' results are the single rows' results.
  for (int64_t i = 0; i < 15; i += 7)
    CHECK(same_bits(product_with(int8, x15.slice(0, i, i + 1), q), y15.slice(0, i, i + 1)));
  // Batch dims flatten to rows: [3, 5, 128] is the 15-row product.
  CHECK(same_bits(ops::matmul_4bit(x15.reshape({3, 5, 128}), q).reshape({15, 33}), y15));
  // bf16 x is cast to f32 and takes the same path.
  const Tensor x_bf16 = ops::cast(x15, DType::bf16);
  CHECK(same_bits(ops::cast(ops::matmul_4bit(x_bf16, q), DType::f32),
                  ops::cast(ops::cast(ops::matmul_4bit(ops::cast(x_bf16, DType::f32), q), DType::bf16), DType::f32)));
  // f64 x stays exact (f64 products), and in_features not a multiple of 32 stays f32.
  const ops::Quantized4Bit odd = ops::quantize_4bit(randn({10, 80}, generator), Quant4Format::nf4, 32, false);
  const Tensor x_odd = randn({2, 80}, generator);
  CHECK(same_bits(product_with(int8, x_odd, odd), product_with(f32, x_odd, odd)));

  // An infinite or NaN activation makes its row NaN, as the f32 product would (inf * 0 codes).
  std::vector<float> values = randn({2, 128}, generator).to_vector<float>();
  values[40] = std::nanf("");
  values[128 + 7] = INFINITY;
  const std::vector<float> y = ops::matmul_4bit(Tensor::from_vector(values, {2, 128}), q).to_vector<float>();
  for (float v : y) CHECK(std::isnan(v));
}

TEST_CASE("quant4 int8: greedy generation of a tiny NF4 model follows the f32 product while the margin allows") {
  // The model as `lamina quantize` writes it: every projection quantize_4bit'ed (NF4, blocksize 64,
  // double quantization; tests/tools/test_cli_quantize.cpp checks that the folder loads to exactly
  // these bases). Sizes are multiples of 32 so that every projection takes the integer path.
  RestoreDecodeSettings restore;
  autograd::NoGradGuard no_grad;
  llama::LlamaConfig config = tiny_llama_config(128);
  config.hidden_size = 64, config.intermediate_size = 96, config.head_dim = 16;
  // Llama's usual initializer_range (0.02) keeps the logits' top-2 margins comfortably above the
  // logit differences (about 1% of the largest logit); much wider random weights sharpen the
  // attention softmax and amplify every rounding, the integer one included.
  config.initializer_range = 0.02;
  auto model = random_llama(config, 51);
  REQUIRE(nn::quantize_base_weights(*model, Quant4Format::nf4, 64, true) == 7 * config.num_hidden_layers);
  const int64_t new_tokens = 10;  // prompt + new tokens stay within 15 rows for the full forwards below
  generate::GenerateOptions options;
  options.max_new_tokens = new_tokens;
  options.use_config_stop_tokens = false;
  auto greedy = [&](const std::vector<int64_t>& prompt, ops::Quant4DecodeProduct product) {
    ops::set_quant4_decode_product(product);
    std::vector<int64_t> tokens = generate::generate(*model, {prompt}, options).tokens.at(0);
    ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic);
    return tokens;
  };
  // The logits after `sequence` (a full forward of at most 15 rows: the product chosen applies).
  auto last_logits = [&](const std::vector<int64_t>& sequence, ops::Quant4DecodeProduct product) {
    ops::set_quant4_decode_product(product);
    const Tensor ids = Tensor::from_vector(sequence, {1, int64_t(sequence.size())});
    const std::vector<float> all = model->forward(ids).to_vector<float>();
    ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic);
    return std::vector<float>(all.end() - config.vocab_size, all.end());
  };

  // The rule: at step s, with both products fed the same (f32) prefix, let m be the f32 logits'
  // margin (top-1 minus top-2) and e the largest |logit difference| between the products. While
  // m > 2 e + 1e-4 (the 1e-4 covers the cached decode's f32 rounding against a full forward),
  // the int8 argmax must be the f32 one, so the tokens must agree; from the first step where the
  // margin does not allow it on, nothing is asserted for that prompt.
  const std::vector<std::vector<int64_t>> prompts = {{1, 17, 5, 99, 42}, {1, 3}, {1, 64, 64, 8}, {1, 120, 33, 7, 90}};
  int64_t compared = 0;
  for (const std::vector<int64_t>& prompt : prompts) {
    CAPTURE(prompt.size());
    const std::vector<int64_t> f32_tokens = greedy(prompt, ops::Quant4DecodeProduct::f32);
    const std::vector<int64_t> int8_tokens = greedy(prompt, ops::Quant4DecodeProduct::int8);
    REQUIRE(f32_tokens.size() == size_t(new_tokens));
    REQUIRE(int8_tokens.size() == size_t(new_tokens));
    std::vector<int64_t> sequence = prompt;
    int64_t agreed = 0, same = 0;
    for (int64_t s = 0; s < new_tokens; ++s) same += f32_tokens[size_t(s)] == int8_tokens[size_t(s)] ? 1 : 0;
    for (int64_t s = 0; s < new_tokens; ++s) {
      const std::vector<float> exact = last_logits(sequence, ops::Quant4DecodeProduct::f32);
      const std::vector<float> integer = last_logits(sequence, ops::Quant4DecodeProduct::int8);
      std::vector<float> sorted = exact;
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      const double margin = double(sorted[0]) - double(sorted[1]);
      double difference = 0;
      for (size_t v = 0; v < exact.size(); ++v)
        difference = std::max(difference, std::fabs(double(exact[v]) - double(integer[v])));
      CHECK(difference > 0);  // the integer path ran
      if (!(margin > 2 * difference + 1e-4)) break;
      CHECK(int8_tokens[size_t(s)] == f32_tokens[size_t(s)]);
      ++agreed;
      sequence.push_back(f32_tokens[size_t(s)]);
    }
    MESSAGE("prompt of ", prompt.size(), ": the first ", agreed, " of ", new_tokens,
            " tokens within the margin rule (and equal); ", same, " equal in all");
    compared += agreed;
  }
  CHECK(compared >= 8);  // the rule must have had something to check
}
