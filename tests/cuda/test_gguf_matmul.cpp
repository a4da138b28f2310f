// The GGUF block-format ops on the GPU (ops/cuda/gguf_matmul.cu) against their CPU twins
// (ops/gguf_matmul.h), for Q8_0, Q4_0, Q4_1, Q4_K and Q6_K on random blocks (every quant byte
// random, small finite f16 scales and mins of either sign):
//  - gguf_matmul below 16 rows of x: bit for bit. The GPU quantizes x as the CPU does and adds
//    the same integer dot products with the same f32 operations in the same order, so any
//    difference is a bug (tolerance: none; the first differing output is printed).
//  - gguf_matmul from 16 rows on and gguf_matmul_input_grad: both sides multiply the exactly
//    dequantized W in f32, in different summation orders: ||gpu - cpu|| / ||cpu|| < 1e-5.
//  - gguf_rows and gguf_dequantize: bit for bit (ggml's formulas in ggml's operation order).
// Shapes: 1, 3, 15, 17 and 100 rows of x; W with 1, 7, 65 and 130 rows (not multiples of the
// half-warp pairs, the 8 rows of a decode block or the 64 of a tile); K = 32, 96, 576 for the
// 32-value formats and 256, 512 for the K-quants. Every output under both allocation poisons.
// Last, a tiny GGUF model moved to the GPU as stored generates greedily what it does on the CPU.
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "autograd/autograd.h"
#include "autograd/gguf_linear.h"
#include "cuda_cases.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "ops/gguf_matmul.h"
#include "scratch_dir.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using ops::GgufMatrix;
using ops::GgufWeight;
using ops::ggml::BlockType;

namespace {

constexpr BlockType kTypes[] = {BlockType::q8_0, BlockType::q4_0, BlockType::q4_1, BlockType::q4_k, BlockType::q6_k};

bool is_kquant(BlockType type) { return type == BlockType::q4_k || type == BlockType::q6_k; }

// A random finite f16 with magnitude in [2^-9, 2^-3), either sign, at `out`.
void write_small_half(std::mt19937& random, uint8_t* out) {
  const uint32_t exponent = 6 + random() % 6;  // biased: 2^(e - 15)
  const uint32_t bits = ((random() & 1) << 15) | (exponent << 10) | (random() & 0x3FF);
  out[0] = uint8_t(bits & 0xFF);
  out[1] = uint8_t(bits >> 8);
}

// A [rows, cols] matrix of random blocks on the host, owning its bytes.
GgufWeight random_weight(BlockType type, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 random(seed);
  const int64_t block_bytes = int64_t(ops::ggml::block_bytes(type));
  const int64_t blocks = rows * cols / int64_t(ops::ggml::block_elements(type));
  auto bytes = std::make_shared<std::vector<uint8_t>>(size_t(blocks * block_bytes));
  for (uint8_t& byte : *bytes) byte = uint8_t(random());
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* block = bytes->data() + b * block_bytes;
    switch (type) {
      case BlockType::q4_1:
      case BlockType::q4_k:
        write_small_half(random, block);      // d
        write_small_half(random, block + 2);  // m (Q4_1) or dmin (Q4_K)
        break;
      case BlockType::q6_k:
        write_small_half(random, block + 208);
        break;
      default:
        write_small_half(random, block);
        break;
    }
  }
  const uint8_t* data = bytes->data();
  return GgufWeight{GgufMatrix{type, rows, cols, data}, std::move(bytes)};
}

// Normal activations with one all-zero block of 32 (scale 0) when there is room for it.
Tensor random_x(const Shape& shape, Generator& generator) {
  Tensor x = randn(shape, generator);
  if (x.numel() >= 64) std::fill(x.data<float>() + 32, x.data<float>() + 64, 0.0f);
  return x;
}

// CHECKs that two f32 tensors are the same bits; on failure says where and by how much.
void check_same_bits(const Tensor& actual, const Tensor& expected) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<float> a = actual.to_vector<float>(), e = expected.to_vector<float>();
  size_t mismatches = 0, first = 0;
  double max_abs = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &e[i], sizeof(float)) == 0) continue;
    if (mismatches++ == 0) first = i;
    max_abs = std::max(max_abs, std::abs(double(a[i]) - double(e[i])));
  }
  INFO(mismatches << " of " << a.size() << " outputs differ; max abs err " << max_abs << "; first at flat index "
                  << first << ": got " << (a.empty() ? 0.0f : a[first]) << ", expected "
                  << (e.empty() ? 0.0f : e[first]));
  CHECK(mismatches == 0);
}

std::vector<int64_t> widths_for(BlockType type) {
  return is_kquant(type) ? std::vector<int64_t>{256, 512} : std::vector<int64_t>{32, 96, 576};
}

}  // namespace

TEST_CASE("gguf_matmul on the GPU: every format equals the CPU, bit for bit below 16 rows of x") {
  Generator generator(41);
  uint32_t seed = 100;
  for (const BlockType type : kTypes) {
    CAPTURE(ops::ggml::block_type_name(type));
    for (const int64_t cols : widths_for(type)) {
      for (const int64_t rows : {int64_t(1), int64_t(7), int64_t(65), int64_t(130)}) {
        const GgufWeight cpu = random_weight(type, rows, cols, seed++);
        const GgufWeight gpu = cpu.to(kCuda);
        REQUIRE(gpu.matrix.device == kCuda);
        for (const int64_t n : {int64_t(1), int64_t(3), int64_t(15), int64_t(17), int64_t(100)}) {
          CAPTURE(cols);
          CAPTURE(rows);
          CAPTURE(n);
          const Tensor x = random_x({n, cols}, generator);
          const Tensor expected = ops::gguf_matmul(x, cpu.matrix);
          for_each_poison([&] {
            const Tensor y = ops::gguf_matmul(mirror(x), gpu.matrix);
            CHECK(y.device() == kCuda);
            if (n < ops::kGgufPanelProductMinRows) {
              check_same_bits(to_cpu(y), expected);
            } else {
              const double error = relative_error(to_cpu(y), expected);
              INFO("relative error " << error);
              CHECK(error < 1e-5);
            }
          });
        }
      }
    }
  }
}

TEST_CASE("gguf_matmul on the GPU: batched shapes, the grouped product, and mixed devices refused") {
  Generator generator(42);
  for (const BlockType type : kTypes) {
    CAPTURE(ops::ggml::block_type_name(type));
    const int64_t cols = is_kquant(type) ? 256 : 96;
    const GgufWeight a = random_weight(type, 33, cols, 7), b = random_weight(type, 9, cols, 8);
    const GgufWeight a_gpu = a.to(kCuda), b_gpu = b.to(kCuda);
    // [2, 3, cols]: 6 rows through the integer path, the output keeps the leading dims.
    const Tensor x = random_x({2, 3, cols}, generator);
    const Tensor y = ops::gguf_matmul(mirror(x), a_gpu.matrix);
    CHECK(y.shape() == Shape{2, 3, 33});
    check_same_bits(to_cpu(y), ops::gguf_matmul(x, a.matrix));
    // A non-contiguous x (a transposed view) is made contiguous first: the same function.
    const Tensor xt = random_x({cols, 5}, generator);
    check_same_bits(to_cpu(ops::gguf_matmul(mirror(xt).transpose(0, 1), a_gpu.matrix)),
                    ops::gguf_matmul(xt.transpose(0, 1), a.matrix));
    // gguf_matmul_many on the GPU: each product as gguf_matmul gives it.
    const std::vector<Tensor> many = ops::gguf_matmul_many(mirror(x), {&a_gpu.matrix, &b_gpu.matrix});
    REQUIRE(many.size() == 2);
    check_same_bits(to_cpu(many[0]), ops::gguf_matmul(x, a.matrix));
    check_same_bits(to_cpu(many[1]), ops::gguf_matmul(x, b.matrix));
    // Mixed devices and dtypes are errors naming what is where.
    CHECK_THROWS_WITH_AS(ops::gguf_matmul(x, a_gpu.matrix), doctest::Contains("x is on cpu but the"), Error);
    CHECK_THROWS_WITH_AS(ops::gguf_matmul(mirror(x), a.matrix), doctest::Contains("x is on cuda:0 but the"), Error);
    CHECK_THROWS_WITH_AS(ops::gguf_matmul(ops::cast(mirror(x), DType::bf16), a_gpu.matrix),
                         doctest::Contains("must be f32"), Error);
    // Back to the host: the same bytes.
    const GgufWeight back = a_gpu.to(Device::cpu());
    REQUIRE(back.matrix.device == Device::cpu());
    CHECK(std::memcmp(back.matrix.data, a.matrix.data, size_t(ops::gguf_matrix_bytes(a.matrix))) == 0);
  }
  cuda::synchronize_stream(kCuda.index);
}

TEST_CASE("gguf_rows and gguf_dequantize on the GPU equal the CPU bit for bit") {
  for (const BlockType type : kTypes) {
    CAPTURE(ops::ggml::block_type_name(type));
    for (const int64_t cols : widths_for(type)) {
      CAPTURE(cols);
      const GgufWeight cpu = random_weight(type, 37, cols, 300 + uint32_t(cols));
      const GgufWeight gpu = cpu.to(kCuda);
      const Tensor ids64 = Tensor::from_vector(std::vector<int64_t>{36, 0, 5, 5, 17, 36}, {2, 3});
      const Tensor ids32 = Tensor::from_vector(std::vector<int32_t>{3, 36, 0}, {3});
      for_each_poison([&] {
        check_same_bits(to_cpu(ops::gguf_rows(mirror(ids64), gpu.matrix)), ops::gguf_rows(ids64, cpu.matrix));
        check_same_bits(to_cpu(ops::gguf_rows(mirror(ids32), gpu.matrix)), ops::gguf_rows(ids32, cpu.matrix));
        check_same_bits(to_cpu(ops::gguf_dequantize(gpu.matrix)), ops::gguf_dequantize(cpu.matrix));
      });
      CHECK_THROWS_WITH_AS(ops::gguf_rows(mirror(Tensor::from_vector(std::vector<int64_t>{2, 37}, {2})), gpu.matrix),
                           doctest::Contains("id 37 out of range [0, 37)"), Error);
      CHECK_THROWS_WITH_AS(ops::gguf_rows(ids64, gpu.matrix), doctest::Contains("ids is on cpu but the"), Error);
    }
  }
  cuda::synchronize_stream(kCuda.index);
}

TEST_CASE("gguf_matmul_input_grad on the GPU matches the CPU, also through linear_gguf's backward") {
  Generator generator(43);
  for (const BlockType type : kTypes) {
    CAPTURE(ops::ggml::block_type_name(type));
    for (const int64_t cols : widths_for(type)) {
      for (const int64_t rows : {int64_t(7), int64_t(70)}) {  // the reduction: not whole steps of 32
        const GgufWeight cpu = random_weight(type, rows, cols, 500 + uint32_t(rows + cols));
        const GgufWeight gpu = cpu.to(kCuda);
        for (const int64_t n : {int64_t(1), int64_t(5), int64_t(70)}) {
          CAPTURE(cols);
          CAPTURE(rows);
          CAPTURE(n);
          const Tensor grad = randn({n, rows}, generator);
          const Tensor expected = ops::gguf_matmul_input_grad(grad, cpu.matrix);
          for_each_poison([&] {
            const Tensor dx = to_cpu(ops::gguf_matmul_input_grad(mirror(grad), gpu.matrix));
            REQUIRE(dx.shape() == expected.shape());
            const double error = relative_error(dx, expected);
            INFO("relative error " << error);
            CHECK(error < 1e-5);
          });
        }
      }
    }
    // The autograd op: x's gradient on the GPU, as the CPU's.
    const int64_t cols = widths_for(type).front();
    const GgufWeight cpu = random_weight(type, 9, cols, 77);
    const GgufWeight gpu = cpu.to(kCuda);
    const Tensor x = random_x({4, cols}, generator);
    const Tensor x_gpu = mirror(x).detach();
    x_gpu.set_requires_grad(true);
    autograd::backward({lamina::sum(linear_gguf(x_gpu, gpu))});
    REQUIRE(x_gpu.grad().defined());
    const Tensor expected = ops::gguf_matmul_input_grad(ones({4, 9}), cpu.matrix);
    CHECK(relative_error(to_cpu(x_gpu.grad()), expected) < 1e-5);
  }
}

namespace {

// The tiny model of tests/models/test_gguf_quantized_model.cpp: hidden 256 so that the K-quants'
// rows are whole super-blocks, 4 heads of 64 on 2 KV heads, 2 layers.
llama::LlamaConfig quantizable_config() {
  llama::LlamaConfig config = tiny_llama_config(96);
  config.hidden_size = 256;
  config.intermediate_size = 512;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 64;
  config.tie_word_embeddings = true;  // the head is the quantized embedding table
  config.initializer_range = 0.2;     // logits spread wide enough for clear greedy choices
  return config;
}

double max_abs_difference(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

}  // namespace

TEST_CASE("a GGUF model as stored on the GPU: its blocks move, and greedy generation equals the CPU's") {
  ScratchDir dir("cuda-gguf-model");
  autograd::NoGradGuard no_grad;
  const auto source = random_llama(quantizable_config(), 61);
  for (const gguf::TensorType type : {gguf::TensorType::q8_0, gguf::TensorType::q4_1, gguf::TensorType::q4_k,
                                      gguf::TensorType::q6_k}) {
    const std::string name = gguf::tensor_type_name(uint32_t(type));
    INFO(name);
    gguf::Writer writer;
    gguf::add_llama_model(writer, *source, type, name);
    gguf::add_llama_token_ids(writer, source->config());
    const std::string path = dir / (name + ".gguf");
    writer.write(path);
    const auto on_cpu = gguf::load_llama_gguf_quantized(path);
    const auto on_gpu = gguf::load_llama_gguf_quantized(path);
    on_gpu->to(kCuda, DType::f32);
    CHECK(on_gpu->device() == kCuda);
    for (const auto& [layer, linear] : nn::named_linears(*on_gpu)) {
      CAPTURE(layer);
      REQUIRE(linear->base_gguf() != nullptr);
      CHECK(linear->base_gguf()->matrix.device == kCuda);
    }
    REQUIRE(on_gpu->model->embed_tokens->quantized_table() != nullptr);
    CHECK(on_gpu->model->embed_tokens->quantized_table()->matrix.device == kCuda);

    // Teacher forcing with the CPU's greedy tokens: a 20-token prompt (the tiled product), then
    // decode steps. The decode products are the CPU's bit for bit on the same input, but the rest
    // of the model (norms, RoPE, attention, SwiGLU) rounds differently in f32 on the GPU, and an
    // activation that lands across an int8 rounding boundary moves its products by d_x |w|
    // (max|x| / 127 * 0.2, about 0.005 here) and the logits by about as much. E bounds the logit
    // difference with room for a few such flips; where the CPU's top-1 margin exceeds 2E (logits
    // here have a spread of about 3) the GPU must choose the same token.
    constexpr double kLogitBound = 0.05;
    const llama::LlamaConfig& config = on_cpu->config();
    llama::KvCache cache_cpu(config, 1, 64), cache_gpu(config, 1, 64, DType::f32, {}, kCuda);
    llama::ForwardOptions options_cpu, options_gpu;
    options_cpu.cache = &cache_cpu;
    options_gpu.cache = &cache_gpu;
    options_cpu.last_position_only = options_gpu.last_position_only = true;
    std::vector<int64_t> prompt;
    for (int64_t i = 0; i < 20; ++i) prompt.push_back((i * 37 + 11) % config.vocab_size);
    Tensor input = Tensor::from_vector(prompt, {1, int64_t(prompt.size())});
    constexpr int kSteps = 12;
    int compared = 0;      // steps whose margin decides the token on both devices
    int clear_prefix = 0;  // how many of them lead, uninterrupted (free-running runs agree there)
    bool still_clear = true;
    std::vector<int64_t> cpu_tokens;
    for (int step = 0; step < kSteps; ++step) {
      INFO("step " << step);
      const Tensor logits_cpu = on_cpu->forward(input, options_cpu).reshape({config.vocab_size});
      const Tensor logits_gpu = to_cpu(on_gpu->forward(ops::to_device(input, kCuda), options_gpu)).reshape({config.vocab_size});
      const double difference = max_abs_difference(logits_gpu, logits_cpu);
      INFO("max abs logit difference " << difference);
      CHECK(difference <= kLogitBound);
      std::vector<float> sorted = logits_cpu.to_vector<float>();
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
      const int64_t token = ops::argmax(logits_cpu, 0).item<int64_t>();
      const bool clear = sorted[0] - sorted[1] > 2 * kLogitBound;
      if (clear) {
        CHECK(ops::argmax(logits_gpu, 0).item<int64_t>() == token);
        ++compared;
      }
      still_clear = still_clear && clear;
      if (still_clear) ++clear_prefix;
      cpu_tokens.push_back(token);
      input = Tensor::from_vector(std::vector<int64_t>{token}, {1, 1});
    }
    // The rule compared most steps (on the CPU, this model's margins exceed 0.1 at 10 to 12 of
    // the 12 steps for each format).
    CHECK(compared >= 8);

    // Free-running greedy generation (the path `lamina generate --device cuda` takes): the same
    // tokens wherever the margins decided them.
    generate::GenerateOptions options;
    options.max_new_tokens = kSteps;
    options.use_config_stop_tokens = false;
    const generate::GenerateResult cpu_result = generate::generate(*on_cpu, {prompt}, options);
    const generate::GenerateResult gpu_result = generate::generate(*on_gpu, {prompt}, options);
    REQUIRE(cpu_result.tokens.size() == 1);
    REQUIRE(gpu_result.tokens.size() == 1);
    CHECK(cpu_result.tokens[0] == cpu_tokens);
    REQUIRE(gpu_result.tokens[0].size() == size_t(kSteps));
    for (int step = 0; step < clear_prefix; ++step) {
      CAPTURE(step);
      CHECK(gpu_result.tokens[0][size_t(step)] == cpu_tokens[size_t(step)]);
    }
  }
  cuda::synchronize_stream(kCuda.index);
}
