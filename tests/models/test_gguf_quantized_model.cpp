// A Llama model computing with a GGUF file's weights as stored (gguf::load_llama_gguf_quantized):
// the same file loaded dequantized to f32 is the oracle. Prefill products (16 rows and more) use
// the exact weights in f32, so they must agree tightly; decode products round the activations
// to 8 bits per block, so they agree within a bound stated from that rounding. The quantized
// embedding lookup, the input gradient through a quantized base (LoRA over a GGUF model), the
// refusals (saving, another device) and, on the real model, greedy generation against the
// dequantized model under a stated margin rule.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "autograd/autograd.h"
#include "autograd/gguf_linear.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "real_model.h"
#include "scratch_dir.h"

using namespace lamina;
using testing::ScratchDir;

namespace {

// hidden 256 so that the K-quants' 256-value rows fit; 4 heads of 64 on 2 KV heads (the q/k row
// permutation has something to undo), 2 layers.
llama::LlamaConfig quantizable_config(bool tied) {
  llama::LlamaConfig config = testing::tiny_llama_config(96);
  config.hidden_size = 256;
  config.intermediate_size = 512;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 64;
  config.tie_word_embeddings = tied;
  config.initializer_range = 0.05;
  return config;
}

std::string write_gguf(const ScratchDir& dir, const llama::LlamaForCausalLM& model, gguf::TensorType type,
                       const std::string& name) {
  gguf::Writer writer;
  gguf::add_llama_model(writer, model, type, name);
  gguf::add_llama_token_ids(writer, model.config());
  const std::string path = dir / (name + ".gguf");
  writer.write(path);
  return path;
}

double max_abs(const Tensor& t) {
  const Tensor c = t.to(DType::f64).contiguous();
  double m = 0;
  for (int64_t i = 0; i < c.numel(); ++i) m = std::max(m, std::abs(c.data<double>()[i]));
  return m;
}

double max_abs_difference(const Tensor& a, const Tensor& b) { return max_abs(ops::sub(a.to(DType::f64), b.to(DType::f64))); }

}  // namespace

TEST_CASE("gguf quantized model: weights stay in their block formats, logits match the dequantized model") {
  ScratchDir dir("gguf-quantized-model");
  autograd::NoGradGuard no_grad;
  for (const bool tied : {false, true}) {
    const auto source = testing::random_llama(quantizable_config(tied), tied ? 21 : 22);
    for (const gguf::TensorType type : {gguf::TensorType::q8_0, gguf::TensorType::q4_0, gguf::TensorType::q4_1,
                                        gguf::TensorType::q4_k, gguf::TensorType::q6_k}) {
      const std::string name = std::string(gguf::tensor_type_name(uint32_t(type))) + (tied ? "_tied" : "_untied");
      INFO(name);
      const std::string path = write_gguf(dir, *source, type, name);
      const auto dequantized = gguf::load_llama_gguf(path);
      const auto quantized = gguf::load_llama_gguf_quantized(path);
      CHECK(gguf::llama_gguf_computes_quantized(gguf::File::open(path)));

      // Nothing but the norms is a parameter: every matrix is held in its block format.
      const llama::LlamaConfig& config = quantized->config();
      CHECK(quantized->named_parameters().size() == size_t(2 * config.num_hidden_layers + 1));
      for (const auto& [module_path, linear] : nn::named_linears(*quantized)) {
        INFO(module_path);
        REQUIRE(linear->base_gguf() != nullptr);
        CHECK(uint32_t(linear->base_gguf()->matrix.type) == uint32_t(type));
        CHECK(!linear->weight().defined());
      }
      REQUIRE(quantized->model->embed_tokens->quantized_table() != nullptr);

      // Prefill of 20 tokens: products of 16 rows and more dequantize W exactly and multiply in
      // f32, so the logits agree up to f32 summation order.
      Generator generator(5);
      const Tensor prompt = randint(3, config.vocab_size, {1, 20}, generator);
      llama::KvCache cache_q(config, 1, 32), cache_d(config, 1, 32);
      llama::ForwardOptions options_q, options_d;
      options_q.cache = &cache_q;
      options_d.cache = &cache_d;
      const Tensor prefill_q = quantized->forward(prompt, options_q);
      const Tensor prefill_d = dequantized->forward(prompt, options_d);
      const double scale = max_abs(prefill_d);
      CHECK(max_abs_difference(prefill_q, prefill_d) <= 1e-4 * scale);

      // Decode steps of one token: the activations are rounded to int8 per block of 32 (relative
      // error up to 1/254 of the block's largest value per product), which compounds through 2
      // layers and the head: measured up to 3.6% of the largest logit (Q6_K), bounded at 6%, while
      // a wrong row order, scale or block layout moves logits by their own size.
      for (int step = 0; step < 6; ++step) {
        INFO("decode step " << step);
        const Tensor token = randint(3, config.vocab_size, {1, 1}, generator);
        const Tensor decode_q = quantized->forward(token, options_q);
        const Tensor decode_d = dequantized->forward(token, options_d);
        CHECK(max_abs_difference(decode_q, decode_d) <= 0.06 * max_abs(decode_d));
      }
    }
  }
}

TEST_CASE("gguf quantized model: the embedding lookup dequantizes exactly; bad ids are errors") {
  Generator generator(3);
  const Tensor table = randn({10, 64}, generator);
  const std::vector<uint8_t> bytes = gguf::encode(gguf::TensorType::q4_1, table.data<float>(), 640);
  const ops::GgufMatrix matrix{ops::ggml::BlockType::q4_1, 10, 64, bytes.data()};
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{7, 0, 9, 7}, {2, 2});
  const Tensor rows = ops::gguf_rows(ids, matrix);
  CHECK(rows.shape() == Shape{2, 2, 64});
  const Tensor full = ops::gguf_dequantize(matrix);
  for (int64_t i = 0; i < 4; ++i) {
    const int64_t id = ids.data<int64_t>()[i];
    CHECK(std::memcmp(rows.data<float>() + i * 64, full.data<float>() + id * 64, 64 * sizeof(float)) == 0);
  }
  CHECK_THROWS_WITH(ops::gguf_rows(Tensor::from_vector(std::vector<int64_t>{10}, {1}), matrix),
                    doctest::Contains("id 10 out of range [0, 10)"));
}

TEST_CASE("gguf quantized model: the input gradient through a quantized base, and LoRA over it") {
  Generator generator(8);
  const Tensor weight = randn({48, 96}, generator);
  for (const gguf::TensorType type : {gguf::TensorType::q8_0, gguf::TensorType::q4_1}) {
    INFO(gguf::tensor_type_name(uint32_t(type)));
    auto bytes = std::make_shared<std::vector<uint8_t>>(gguf::encode(type, weight.data<float>(), uint64_t(weight.numel())));
    const ops::GgufWeight w{{ops::ggml::BlockType(uint32_t(type)), 48, 96, bytes->data()}, bytes};
    const Tensor dense = ops::gguf_dequantize(w.matrix);

    // d/dx sum(linear(x) * r) = r W, with W exact (no activation rounding in the backward).
    for (const int64_t rows : {3, 20}) {
      INFO(rows << " rows");
      const Tensor x = randn({rows, 96}, generator).set_requires_grad(true);
      const Tensor r = randn({rows, 48}, generator);
      sum(mul(linear_gguf(x, w), r)).backward();
      const Tensor expected = ops::matmul(r.to(DType::f64), dense.to(DType::f64));
      CHECK(max_abs_difference(x.grad(), expected) <= 1e-5 * max_abs(expected));
    }

    // A LoRA adapter trains over the quantized base as over the same weights in f32: on 20 rows
    // (the exact-weight product) the adapter's gradients agree.
    nn::Linear over_quantized(96, 48), over_dense(96, 48);
    over_quantized.set_base_gguf(w);
    over_dense.weight().set_data(dense);
    nn::LoraOptions lora;
    lora.rank = 4;
    lora.alpha = 8;
    Generator init_a(1), init_b(1);
    over_quantized.add_adapter("a", lora, init_a);
    over_dense.add_adapter("a", lora, init_b);
    auto selection = std::make_shared<nn::LoraSelection>();
    selection->adapters = {"a"};
    selection->active = "a";
    over_quantized.set_lora_selection(selection);
    over_dense.set_lora_selection(selection);
    // B starts at zero (PEFT's init): give it values so that A's gradient is not zero either.
    const Tensor b_values = randn({48, 4}, generator);
    over_quantized.adapter("a").lora_B.set_data(b_values);
    over_dense.adapter("a").lora_B.set_data(b_values);
    const Tensor x = randn({20, 96}, generator);
    const Tensor r = randn({20, 48}, generator);
    sum(mul(over_quantized.forward(x), r)).backward();
    sum(mul(over_dense.forward(x), r)).backward();
    const Tensor grad_a = over_dense.adapter("a").lora_A.grad(), grad_b = over_dense.adapter("a").lora_B.grad();
    CHECK(max_abs_difference(over_quantized.adapter("a").lora_A.grad(), grad_a) <= 1e-4 * max_abs(grad_a));
    CHECK(max_abs_difference(over_quantized.adapter("a").lora_B.grad(), grad_b) <= 1e-4 * max_abs(grad_b));
    CHECK(over_quantized.named_parameters().size() == 2);  // lora_A and lora_B: the base is no parameter
  }
}

TEST_CASE("gguf quantized model: saving, moving and formats without a kernel are refused, naming why") {
  ScratchDir dir("gguf-quantized-refusals");
  const auto source = testing::random_llama(quantizable_config(true), 30);
  const auto quantized = gguf::load_llama_gguf_quantized(write_gguf(dir, *source, gguf::TensorType::q8_0, "q8"));
  CHECK_THROWS_WITH(quantized->save(dir / "folder"), doctest::Contains("GGUF-quantized weight"));
  CHECK(!std::filesystem::exists(dir / "folder/model.safetensors"));
#if !LAMINA_WITH_CUDA
  // The blocks move to a GPU only with the CUDA backend (tests/cuda/test_gguf_matmul.cpp moves a
  // model there and generates with it).
  CHECK_THROWS_WITH(quantized->to(Device::cuda(0), DType::f32), doctest::Contains("CUDA backend not built"));
#endif
  CHECK_THROWS_WITH(quantized->output_weight(), doctest::Contains("the output head is quantized"));

  // F16 matrices have no integer kernel: the file is refused as stored, naming the tensor.
  const std::string f16 = write_gguf(dir, *source, gguf::TensorType::f16, "f16");
  std::string why;
  CHECK(!gguf::llama_gguf_computes_quantized(gguf::File::open(f16), &why));
  CHECK(why.find("is F16") != std::string::npos);
  CHECK_THROWS_WITH(gguf::load_llama_gguf_quantized(f16), doctest::Contains("cannot be computed with as stored"));
}

TEST_CASE("SmolLM2 GGUF as stored: greedy tokens equal the dequantized model's while the margin allows" *
          doctest::test_suite("real_model")) {
  const std::string path = testing::smollm2_gguf_path();
  const auto quantized = gguf::load_llama_gguf_quantized(path);
  const auto dequantized = gguf::load_llama_gguf(path);
  autograd::NoGradGuard no_grad;
  // The held weights: the norms' f32 and the q/k copies; the rest is the mapped file.
  int64_t parameter_bytes = 0;
  for (const Tensor& p : quantized->parameters()) parameter_bytes += int64_t(p.nbytes());
  CHECK(parameter_bytes < 256 * 1024);  // 61 norms of 576 f32: 140 KB

  // The rule: both models read the dequantized model's greedy continuation (teacher forcing),
  // and at every step their logits differ by at most E = 1.5 (the 8-bit activation rounding
  // through 30 layers: measured up to 1.1 on logits up to ~28). So wherever the dequantized
  // model's top-1 margin exceeds 2E the quantized model must pick the same token; steps with a
  // smaller margin are where greedy decoding may part, and are not compared.
  constexpr double kLogitBound = 1.5;
  // "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
  const std::vector<int64_t> prompt = {1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198};
  const llama::LlamaConfig& config = quantized->config();
  llama::KvCache cache_q(config, 1, 64), cache_d(config, 1, 64);
  llama::ForwardOptions options_q, options_d;
  options_q.cache = &cache_q;
  options_d.cache = &cache_d;
  options_q.last_position_only = options_d.last_position_only = true;
  Tensor input = Tensor::from_vector(prompt, {1, int64_t(prompt.size())});
  int compared = 0;
  for (int step = 0; step < 32; ++step) {
    INFO("step " << step);
    const Tensor logits_q = quantized->forward(input, options_q).reshape({config.vocab_size});
    const Tensor logits_d = dequantized->forward(input, options_d).reshape({config.vocab_size});
    CHECK(max_abs_difference(logits_q, logits_d) <= kLogitBound);
    std::vector<float> sorted(logits_d.data<float>(), logits_d.data<float>() + config.vocab_size);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    const int64_t token_d = ops::argmax(logits_d, 0).item<int64_t>();
    if (sorted[0] - sorted[1] > 2 * kLogitBound) {
      CHECK(ops::argmax(logits_q, 0).item<int64_t>() == token_d);
      ++compared;
    }
    input = Tensor::from_vector(std::vector<int64_t>{token_d}, {1, 1});
  }
  CHECK(compared >= 10);  // the rule compared most steps
}
