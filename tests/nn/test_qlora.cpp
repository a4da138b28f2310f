// QLoRA's frozen 4-bit base on nn::Linear: the weight leaves the parameters, the product is the
// fused 4-bit one and equals the product with the dequantized weight, gradients reach the input
// and the adapter but never the base, and what cannot hold a 4-bit base refuses it.
#include <cmath>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "nn/layers.h"
#include "nn/lora.h"
#include "ops/quant4.h"
#include "scratch_dir.h"
#include "tensor/host_memory.h"

using namespace lamina;

namespace {

double max_abs_difference(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double most = 0;
  for (size_t i = 0; i < x.size(); ++i) most = std::max(most, std::fabs(x[i] - y[i]));
  return most;
}

}  // namespace

TEST_CASE("qlora: a Linear's 4-bit base computes with the dequantized weight and trains only the adapter") {
  auto layer = std::make_shared<nn::Linear>(96, 40);
  Generator generator(5);
  layer->reset_parameters(generator);
  const Tensor full_weight = layer->weight().detach().clone();
  layer->quantize_base(ops::Quant4Format::nf4, 64, true);
  REQUIRE(layer->base_4bit() != nullptr);
  CHECK(layer->named_parameters().empty());  // the weight is no parameter any more
  CHECK_FALSE(layer->weight().defined());
  const Tensor dequantized = ops::dequantize_4bit(*layer->base_4bit());
  // Quantization moved the weight, by at most half a code gap of its block's scale (< 0.2 x |W|max).
  CHECK(max_abs_difference(dequantized, full_weight) > 0);
  CHECK(max_abs_difference(dequantized, full_weight) < 0.2 * 1.0 / std::sqrt(96.0) + 1e-6);

  // An adapter on top: forward and gradients against the same function on the dequantized weight.
  nn::LoraOptions options;
  options.rank = 4;
  options.alpha = 8;
  options.init = nn::LoraInit::random;
  Generator adapter_generator(9);
  layer->add_adapter("a", options, adapter_generator);
  auto selection = std::make_shared<nn::LoraSelection>();
  selection->adapters = {"a"};
  selection->active = "a";
  layer->set_lora_selection(selection);
  const nn::LoraAdapter& adapter = layer->adapter("a");

  // 20 rows, a training batch's regime: from 16 rows on matmul_4bit is the f32 product, which
  // this compares at f32 rounding (1..15 rows take the integer decode product, ops/quant4.h).
  Tensor x = randn({4, 5, 96}, generator);
  x.set_requires_grad(true);
  const Tensor y = layer->forward(x);
  Tensor x_ref = x.detach().clone();
  x_ref.set_requires_grad(true);
  const Tensor a_ref = adapter.lora_A.detach().clone(), b_ref = adapter.lora_B.detach().clone();
  const Tensor expected = add(matmul(x_ref, dequantized, false, true),
                              mul(matmul(matmul(x_ref, a_ref, false, true), b_ref, false, true), options.scale()));
  CHECK(max_abs_difference(y, expected) < 1e-4);
  sum(mul(y, y)).backward();
  sum(mul(expected, expected)).backward();
  REQUIRE(x.grad().defined());
  CHECK(max_abs_difference(x.grad(), x_ref.grad()) < 1e-3);
  CHECK(adapter.lora_A.grad().defined());
  CHECK(adapter.lora_B.grad().defined());
  for (const auto& [name, parameter] : layer->named_parameters()) CHECK_MESSAGE(name.find("lora_") == 0, name);

  // Merging into a 4-bit base is refused, and so is quantizing twice.
  CHECK_THROWS_WITH_AS(layer->merge_adapter("a"), doctest::Contains("4-bit"), Error);
  CHECK_THROWS_WITH_AS(layer->quantize_base(), doctest::Contains("quantized already"), Error);
}

TEST_CASE("qlora: a Llama's projections go to 4 bits, lm_head and norms stay, and save refuses the result") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = testing::tiny_llama_config(40);
  auto model = testing::random_llama(config, 3);
  // The reference: the same model with each projection replaced by its dequantized 4-bit self.
  auto reference = testing::random_llama(config, 3);
  const int64_t quantized = nn::quantize_base_weights(*model);
  CHECK(quantized == 7 * config.num_hidden_layers);
  for (const auto& [path, linear] : nn::named_linears(*model)) {
    INFO(path);
    if (path == "lm_head") {
      CHECK(linear->base_4bit() == nullptr);  // the output head stays in full precision
      continue;
    }
    REQUIRE(linear->base_4bit() != nullptr);
    reference->parameter(path + ".weight").set_data(ops::dequantize_4bit(*linear->base_4bit()));
  }
  CHECK(model->parameter_count() == config.parameter_count() - config.linear_parameter_count());
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 7, 3, 22, 9}, {1, 5});
  // Five rows take the integer decode product by default (activations rounded to 8 bits per 32,
  // ops/quant4.h): the f32 product gives the dequantized model's logits up to f32 rounding, the
  // integer one within its rounding (8.6e-3 here when written).
  ops::set_quant4_decode_product(ops::Quant4DecodeProduct::f32);
  const double f32_difference = max_abs_difference(model->forward(ids), reference->forward(ids));
  ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic);
  CHECK(f32_difference < 1e-4);
  const double int8_difference = max_abs_difference(model->forward(ids), reference->forward(ids));
  CHECK(int8_difference > 0);
  CHECK(int8_difference < 3e-2);
  testing::ScratchDir dir("qlora-save");
  CHECK_THROWS_WITH_AS(model->save(dir / "model"), doctest::Contains("4-bit base weight"), Error);
}

TEST_CASE("qlora: loading with the projections quantized as they are read equals quantizing the loaded model") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = testing::tiny_llama_config(40);
  testing::ScratchDir dir("qlora-load");
  testing::random_llama(config, 9)->save(dir / "model", DType::bf16);  // as most checkpoints are stored
  auto quantized_after = llama::LlamaForCausalLM::load(dir / "model");
  nn::quantize_base_weights(*quantized_after);
  llama::LoadOptions options;
  options.quantize_projections = true;
  std::vector<int64_t> progress;
  options.on_quantized = [&](int64_t done, int64_t total) {
    CHECK(total == 7 * config.num_hidden_layers);
    progress.push_back(done);
  };
  auto quantized_on_load = llama::LlamaForCausalLM::load(dir / "model", options);
  CHECK(progress.size() == size_t(7 * config.num_hidden_layers));
  CHECK(progress.back() == 7 * config.num_hidden_layers);
  const auto after = nn::named_linears(*quantized_after), on_load = nn::named_linears(*quantized_on_load);
  REQUIRE(after.size() == on_load.size());
  for (size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].first);
    const ops::Quantized4Bit* a = after[i].second->base_4bit();
    const ops::Quantized4Bit* b = on_load[i].second->base_4bit();
    REQUIRE((a == nullptr) == (b == nullptr));
    if (a == nullptr) {
      CHECK(after[i].first == "lm_head");
      CHECK(max_abs_difference(after[i].second->weight(), on_load[i].second->weight()) == 0);
      continue;
    }
    CHECK(a->double_quant);
    CHECK(b->double_quant);
    CHECK(a->codes.to_vector<uint8_t>() == b->codes.to_vector<uint8_t>());
    CHECK(a->absmax.to_vector<uint8_t>() == b->absmax.to_vector<uint8_t>());
    CHECK(a->nested_absmax.to_vector<float>() == b->nested_absmax.to_vector<float>());
    CHECK(a->nested_offset == b->nested_offset);
  }
  // The projections never had a full-precision weight: they are not parameters at all.
  CHECK(quantized_on_load->parameter_count() == config.parameter_count() - config.linear_parameter_count());
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 7, 3, 22, 9}, {1, 5});
  CHECK(max_abs_difference(quantized_after->forward(ids), quantized_on_load->forward(ids)) == 0);
}

TEST_CASE("qlora: a model too large for memory in f32 is built when its projections are 4-bit") {
  // Llama-3-8B's layer shapes with as many layers as make the f32 model larger than this
  // machine's memory (physical plus swap): refused dense, built with 4-bit projections (at 4.13
  // bits they need an eighth of that, and nothing is allocated for them until they are set).
  llama::LlamaConfig config = testing::tiny_llama_config(256);
  config.hidden_size = 4096;
  config.intermediate_size = 14336;
  config.num_attention_heads = 32;
  config.num_key_value_heads = 8;
  config.head_dim = 128;
  const uint64_t total = host_memory().total_bytes;
  const uint64_t layer_bytes = uint64_t(config.linear_parameter_count() / config.num_hidden_layers) * 4;
  config.num_hidden_layers = int64_t(total / layer_bytes) + 2;
  INFO("layers: " << config.num_hidden_layers << ", host memory " << format_bytes(total));
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM(config, DType::f32, nn::ParameterInit::uninitialized),
                       doctest::Contains("out of host memory"), Error);
  llama::LlamaForCausalLM four_bit(config, DType::f32, nn::ParameterInit::uninitialized, true);
  CHECK(four_bit.parameter_count() == config.parameter_count() - config.linear_parameter_count());
  const auto linears = nn::named_linears(four_bit);
  REQUIRE(!linears.empty());
  CHECK_THROWS_WITH_AS(linears.front().second->forward(full({1, 4096}, 0.0)),
                       doctest::Contains("never given (set_base_4bit or set_base_gguf)"), Error);
}
