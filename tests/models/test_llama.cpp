// The Llama model: config parsing, the stories260k golden, KV-cache equivalence, checkpoint
// round trips and errors, gradients end to end, and the sampler's worked example.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/io/safetensors.h"
#include "models/llama/model.h"
#include "scratch_dir.h"

using namespace lamina;
using testing::ScratchDir;
namespace fs = std::filesystem;

namespace {

// The tiny preset made Llama-3.1-shaped: llama3 RoPE scaling, and a tied or untied head.
llama::LlamaConfig tiny_config(bool tied = false) {
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.rope_scaling = Llama3RopeScaling{8.0, 1.0, 4.0, 16};
  config.tie_word_embeddings = tied;
  config.initializer_range = 0.2;  // large enough that the logits depend visibly on the input
  return config;
}

Tensor ids_tensor(const std::vector<int64_t>& ids) { return Tensor::from_vector(ids, {1, int64_t(ids.size())}); }

}  // namespace

TEST_CASE("config.json parsing: Llama 3.x shapes, newer spellings, parameter counts") {
  const json::Value llama31 = json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": false, "attention_bias": false, "mlp_bias": false, "hidden_act": "silu",
    "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "pretraining_tp": 1})");
  const llama::LlamaConfig c = llama::LlamaConfig::from_json(llama31);
  CHECK(c.head_dim == 128);
  CHECK(c.parameter_count() == 8030261248LL);  // llama3.md section 2
  CHECK(c.rope_scaling.has_value());
  CHECK(c.rope_scaling->factor == 8.0);
  CHECK(c.eos_token_ids == std::vector<int64_t>{128001, 128008, 128009});
  CHECK(c.dtype == DType::bf16);
  // 3.2-1B: explicit head_dim, tied embeddings, factor 32, and the newer spellings.
  const json::Value llama32 = json::parse(R"({
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": true, "dtype": "bfloat16", "eos_token_id": 128001})");
  const llama::LlamaConfig small = llama::LlamaConfig::from_json(llama32);
  CHECK(small.parameter_count() == 1235814400LL);
  CHECK(small.rope_theta == 500000.0);
  CHECK(small.rope_scaling->factor == 32.0);
  // Written back and read again, the config is the same.
  const llama::LlamaConfig again = llama::LlamaConfig::from_json(json::parse(small.to_json().dump()));
  CHECK(again.parameter_count() == small.parameter_count());
  CHECK(again.rope_scaling->factor == 32.0);
  CHECK(again.tie_word_embeddings);
}

TEST_CASE("config.json errors name the field") {
  auto parse = [](const std::string& text) { return llama::LlamaConfig::from_json(json::parse(text), "cfg.json"); };
  const std::string base = R"("hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100)";
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "hidden_act": "gelu"})"), doctest::Contains("cfg.json: hidden_act \"gelu\" is not supported"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "attention_bias": true})"), doctest::Contains("attention_bias = true is not supported"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "rope_scaling": {"type": "yarn", "factor": 4.0}})"), doctest::Contains("RoPE type \"yarn\" is not supported"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "num_key_value_heads": 3})"), doctest::Contains("not a multiple of num_key_value_heads 3"), Error);
  CHECK_THROWS_WITH_AS(parse(R"({"hidden_size": 64})"), doctest::Contains("missing required field \"vocab_size\""), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "model_type": "gpt2"})"), doctest::Contains("not the Llama architecture"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "torch_dtype": "int8"})"), doctest::Contains("unsupported dtype \"int8\""), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "hidden_size": "64"})"), doctest::Contains("duplicate key"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "eos_token_id": 100})"), doctest::Contains("eos_token_id 100 is outside"), Error);
  // Malformed blocks name the file and the field, not just "value".
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "rope_scaling": "llama3"})"),
                       doctest::Contains("cfg.json: rope_scaling: expected an object, got string"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "rope_parameters": [8.0]})"),
                       doctest::Contains("cfg.json: rope_parameters: expected an object, got array"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "rope_scaling": {"rope_type": "llama3"}})"),
                       doctest::Contains("cfg.json: rope_scaling: missing key \"factor\""), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "rope_scaling": {"type": 3}})"),
                       doctest::Contains("cfg.json: rope_scaling.type: expected a string, got number"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 1}})"),
                       doctest::Contains("cfg.json: rope_scaling: invalid llama3 scaling"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "dtype": 16})"), doctest::Contains("cfg.json: dtype: expected a string"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "eos_token_id": [2, "3"]})"),
                       doctest::Contains("cfg.json: eos_token_id[1]: expected an integer, got string"), Error);
  CHECK_THROWS_WITH_AS(parse("{" + base + R"(, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 100})"), doctest::Contains("pad_token_id 100 is outside"), Error);
}

TEST_CASE("config.json sizes are bounded: positive, within reach, with no overflow on the way") {
  auto parse = [](const std::string& fields) {
    const std::string base = R"("hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100)";
    return llama::LlamaConfig::from_json(json::parse("{" + base + ", " + fields + "}"), "cfg.json");
  };
  CHECK_THROWS_WITH_AS(parse(R"("max_position_embeddings": 0)"),
                       doctest::Contains("cfg.json: max_position_embeddings must be positive, got 0"), Error);
  CHECK_THROWS_WITH_AS(parse(R"("num_key_value_heads": -2)"), doctest::Contains("num_key_value_heads must be positive"), Error);
  CHECK_THROWS_WITH_AS(parse(R"("head_dim": 9007199254740992)"),
                       doctest::Contains("cfg.json: head_dim 9007199254740992 is beyond any model lamina can hold"), Error);
  CHECK_THROWS_WITH_AS(parse(R"("rms_norm_eps": 0)"), doctest::Contains("rms_norm_eps must be positive"), Error);
  // Every size within bounds, but the parameter count past 2^63 (signed overflow before).
  llama::LlamaConfig config;
  config.vocab_size = config.hidden_size = config.intermediate_size = config.num_hidden_layers = int64_t(1) << 32;
  config.num_attention_heads = config.num_key_value_heads = 1;
  config.head_dim = 2;
  config.bos_token_id = 0;
  config.eos_token_ids = {1};
  CHECK_THROWS_WITH_AS(config.validate(), doctest::Contains("the parameter count of this config overflows 64 bits"), Error);
}

TEST_CASE("stories260k: greedy decoding from BOS reproduces the reference" * doctest::test_suite("assets")) {
  const fs::path dir = testing::assets_dir("stories260k");
  std::ifstream golden_file(dir / "greedy_from_bos.txt");
  std::vector<int64_t> golden;
  for (int64_t id; golden_file >> id;) golden.push_back(id);
  REQUIRE(golden.size() == 41);
  const auto model = llama::LlamaForCausalLM::load(dir.string());
  CHECK_FALSE(model->parameter("model.layers.0.self_attn.q_proj.weight").storage()->owns_memory());  // mapped
  generate::GenerateOptions options;
  options.max_new_tokens = 40;
  const generate::GenerateResult result = generate::generate(*model, {{1}}, options);
  std::vector<int64_t> sequence{1};
  sequence.insert(sequence.end(), result.tokens[0].begin(), result.tokens[0].end());
  CHECK(sequence == golden);
  CHECK(result.finish_reasons[0] == "length");
}

TEST_CASE("decoding with the KV cache gives the logits of recomputing the whole sequence") {
  const auto model = testing::random_llama(tiny_config(), 3, DType::f64);
  // Different prompt lengths in one batch: the shorter ones are left-padded.
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9, 13, 7}, {1, 20}, {1, 3, 3}};
  const int64_t steps = 6;
  llama::KvCache cache(model->config(), 3, 5 + steps, DType::f64, {0, 3, 2});
  std::vector<int64_t> padded;
  for (const auto& prompt : prompts) {
    padded.insert(padded.end(), 5 - prompt.size(), 0);
    padded.insert(padded.end(), prompt.begin(), prompt.end());
  }
  autograd::NoGradGuard no_grad;
  llama::ForwardOptions with_cache;
  with_cache.cache = &cache;
  with_cache.last_position_only = true;
  Tensor logits = model->forward(Tensor::from_vector(padded, {3, 5}), with_cache);
  std::vector<std::vector<int64_t>> sequences = prompts;
  for (int64_t step = 0; step <= steps; ++step) {
    for (size_t b = 0; b < prompts.size(); ++b) {
      CAPTURE(step);
      CAPTURE(b);
      // The reference: this sequence alone, unpadded, recomputed from scratch.
      const Tensor full = model->forward(ids_tensor(sequences[b]));
      const Tensor expected = full.select(1, int64_t(sequences[b].size()) - 1).squeeze(0);
      CHECK_CLOSE(logits.select(0, int64_t(b)).squeeze(0), expected, (testing::Tolerance{1e-10, 1e-10}));
    }
    if (step == steps) break;
    std::vector<int64_t> next;
    for (size_t b = 0; b < prompts.size(); ++b) {
      next.push_back(int64_t((7 * step + 11 * int64_t(b)) % 40));
      sequences[b].push_back(next.back());
    }
    logits = model->forward(Tensor::from_vector(next, {3, 1}), with_cache);
  }
  CHECK(cache.length() == 5 + steps);
  CHECK_THROWS_WITH_AS(model->forward(Tensor::from_vector(std::vector<int64_t>{1, 2, 3}, {3, 1}), with_cache),
                       doctest::Contains("exceed the capacity"), Error);
}

TEST_CASE("save then load is bit-exact, tied and untied, sharded or not") {
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    ScratchDir dir(tied ? "llama-tied" : "llama-untied");
    const auto model = testing::random_llama(tiny_config(tied), 4);
    model->save(dir.path.string(), std::nullopt, tied ? 4096 : uint64_t(1) << 30);
    CHECK(fs::exists(dir.path / (tied ? "model.safetensors.index.json" : "model.safetensors")));
    CHECK(safetensors::Checkpoint::open(dir.path.string()).contains("lm_head.weight") == !tied);
    const auto loaded = llama::LlamaForCausalLM::load(dir.path.string());
    const auto original = model->named_parameters(), restored = loaded->named_parameters();
    REQUIRE(original.size() == restored.size());
    for (size_t i = 0; i < original.size(); ++i) {
      CHECK(original[i].first == restored[i].first);
      CHECK(original[i].second.to_vector<float>() == restored[i].second.to_vector<float>());
    }
    const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 7, 30, 2}, {1, 4});
    autograd::NoGradGuard no_grad;
    CHECK(model->forward(ids).to_vector<float>() == loaded->forward(ids).to_vector<float>());
  }
}

TEST_CASE("bf16 checkpoints convert on load") {
  ScratchDir dir("llama-bf16");
  const auto model = testing::random_llama(tiny_config(), 5);
  model->save(dir.path.string(), DType::bf16);
  CHECK(json::parse_file((dir.path / "config.json").string()).at("torch_dtype").as_string() == "bfloat16");
  const auto loaded = llama::LlamaForCausalLM::load(dir.path.string(), DType::f32);
  const Tensor original = model->parameter("model.layers.1.mlp.up_proj.weight");
  const Tensor restored = loaded->parameter("model.layers.1.mlp.up_proj.weight");
  CHECK(restored.dtype() == DType::f32);
  CHECK(restored.to_vector<float>() == ops::cast(ops::cast(original, DType::bf16), DType::f32).to_vector<float>());
}

TEST_CASE("to(device, dtype) converts the weights in place; the converted model computes the same logits") {
  const auto model = testing::random_llama(tiny_config(true), 6);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 5, 9, 3, 7, 2}, {2, 3});
  const Tensor f32_logits = model->forward(ids);
  const Tensor embedding = model->parameter("model.embed_tokens.weight");
  const std::vector<float> rounded = ops::cast(ops::cast(embedding, DType::bf16), DType::f32).to_vector<float>();
  model->to(Device::cpu(), DType::bf16);
  CHECK(model->dtype() == DType::bf16);
  CHECK(model->device() == Device::cpu());
  CHECK(embedding.dtype() == DType::bf16);  // the handle taken before sees the conversion
  CHECK(ops::cast(embedding, DType::f32).to_vector<float>() == rounded);
  const Tensor bf16_logits = model->forward(ids);
  CHECK(bf16_logits.dtype() == DType::f32);
  const std::vector<float> a = f32_logits.to_vector<float>(), b = bf16_logits.to_vector<float>();
  double largest = 0;
  for (size_t i = 0; i < a.size(); ++i) largest = std::max(largest, double(std::abs(a[i] - b[i])));
  CHECK(largest > 0);     // bf16 weights and activations really are in use ...
  CHECK(largest < 0.05);  // ... and stay within bf16 rounding of the f32 model
  CHECK_THROWS_WITH_AS(model->to(Device::cpu(), DType::i32), doctest::Contains("parameters must be floating"), Error);
}

TEST_CASE("bad checkpoints: missing, extra or misshapen tensors and bad configs") {
  ScratchDir dir("llama-bad");
  const auto model = testing::random_llama(tiny_config(), 6);
  model->save(dir.path.string());
  safetensors::NamedTensors tensors = model->named_parameters();
  const std::string weights = (dir.path / "model.safetensors").string();

  auto without = tensors;
  without.erase(without.begin() + 3);
  safetensors::save(weights, without);
  const std::string missing = "has no tensor '" + tensors[3].first + "'";
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()), doctest::Contains(missing.c_str()), Error);

  auto extra = tensors;
  extra.emplace_back("model.layers.7.mlp.up_proj.weight", ones({2}));
  safetensors::save(weights, extra);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()),
                       doctest::Contains("'model.layers.7.mlp.up_proj.weight' that this Llama config has no parameter for"), Error);
  extra.back() = {"model.layers.0.self_attn.rotary_emb.inv_freq", ones({2})};  // old HF buffers are ignored
  safetensors::save(weights, extra);
  CHECK_NOTHROW(llama::LlamaForCausalLM::load(dir.path.string()));

  auto misshapen = tensors;
  misshapen[0].second = zeros({40, 15});
  safetensors::save(weights, misshapen);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()), doctest::Contains("has shape [40, 15] but the config needs [40, 16]"), Error);

  auto untied_without_head = tensors;
  untied_without_head.pop_back();  // lm_head.weight is the last parameter
  safetensors::save(weights, untied_without_head);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()), doctest::Contains("tie_word_embeddings is false"), Error);

  safetensors::save(weights, tensors);
  std::ofstream(dir.path / "config.json") << "{\"hidden_size\": 16,";
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()), doctest::Contains("config.json:1:20"), Error);
}

TEST_CASE("a random tiny Llama-3 gradchecks end to end") {
  // Every parameter of the model is a leaf; each one's analytic gradient (one backward pass)
  // is compared with central differences of the f64 loss at a spread of its elements.
  const llama::LlamaConfig config = tiny_config(true);
  const auto model = testing::random_llama(config, 7, DType::f64);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 4, 9, 33, 2, 1, 17, 8}, {2, 4});
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{4, 9, 33, -100, 17, 8, 5, 6}, {2, 4});
  cross_entropy(model->forward(ids), targets).backward();
  auto loss = [&] {
    autograd::NoGradGuard no_grad;
    return cross_entropy(model->forward(ids), targets).item<double>();
  };
  const double h = 1e-6;
  for (const auto& [name, parameter] : model->named_parameters()) {
    const std::vector<double> analytic = parameter.grad().to_vector<double>();
    double* values = parameter.data<double>();
    const int64_t step = std::max<int64_t>(1, parameter.numel() / 9);
    for (int64_t j = 0; j < parameter.numel(); j += step) {
      const double original = values[j];
      values[j] = original + h;
      const double plus = loss();
      values[j] = original - h;
      const double minus = loss();
      values[j] = original;
      CAPTURE(name);
      CAPTURE(j);
      CHECK(analytic[size_t(j)] == doctest::Approx((plus - minus) / (2 * h)).epsilon(1e-6).scale(1e-3));
    }
  }
}

TEST_CASE("gradient checkpointing gives the same gradients") {
  const llama::LlamaConfig config = tiny_config(false);
  auto model = testing::random_llama(config, 8, DType::f64);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 4, 9, 33, 2, 1}, {2, 3});
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{4, 9, 33, 7, 17, 8}, {2, 3});
  cross_entropy(model->forward(ids), targets).backward();
  std::vector<std::vector<double>> plain;
  for (const Tensor& p : model->parameters()) {
    plain.push_back(p.grad().to_vector<double>());
    p.set_grad(Tensor());
  }
  model->set_gradient_checkpointing(true);
  cross_entropy(model->forward(ids), targets).backward();
  const std::vector<Tensor> parameters = model->parameters();
  for (size_t i = 0; i < parameters.size(); ++i) CHECK(parameters[i].grad().to_vector<double>() == plain[i]);
}

TEST_CASE("sampling follows the spec's worked example") {
  // llama3.md 5.2: logits [2, 1, 0.5, 0, -1], tokens 0 and 4 in context, penalty 1.1, tau 0.6.
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
  generate::SamplingOptions options;
  options.repetition_penalty = 1.1;
  options.temperature = 0.6;
  std::vector<double> p = generate::next_token_probabilities(logits, {0, 4}, options);
  const std::vector<double> tempered = {0.7028, 0.1797, 0.0781, 0.0339, 0.0054};
  for (size_t i = 0; i < 5; ++i) CHECK(p[i] == doctest::Approx(tempered[i]).epsilon(1e-3));
  options.top_k = 3;
  p = generate::next_token_probabilities(logits, {0, 4}, options);
  const std::vector<double> top_k = {0.7316, 0.1871, 0.0813, 0, 0};
  for (size_t i = 0; i < 5; ++i) CHECK(p[i] == doctest::Approx(top_k[i]).epsilon(1e-3));
  options.top_p = 0.9;
  options.min_p = 0.1;
  p = generate::next_token_probabilities(logits, {0, 4}, options);
  const std::vector<double> top_p = {0.7964, 0.2036, 0, 0, 0};
  for (size_t i = 0; i < 5; ++i) CHECK(p[i] == doctest::Approx(top_p[i]).epsilon(1e-3));
  // Draws follow the distribution and repeat with the seed.
  Generator a(3), b(3);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const int64_t token = generate::sample_next_token(logits.data(), 5, {0, 4}, options, a);
    CHECK(token == generate::sample_next_token(logits.data(), 5, {0, 4}, options, b));
    ++counts[size_t(token)];
  }
  CHECK(counts[0] + counts[1] == 2000);
  CHECK(double(counts[0]) / 2000 == doctest::Approx(0.7964).epsilon(0.05));
  // Greedy ignores the draw; top-k keeps ties at the k-th value.
  generate::SamplingOptions greedy;
  CHECK(generate::next_token_probabilities(logits, {}, greedy) == std::vector<double>{1, 0, 0, 0, 0});
  generate::SamplingOptions ties;
  ties.temperature = 1.0;
  ties.top_k = 1;
  const std::vector<double> tied = generate::next_token_probabilities({3.0f, 3.0f, 1.0f}, {}, ties);
  CHECK(tied[0] == doctest::Approx(0.5));
  CHECK(tied[1] == doctest::Approx(0.5));
  CHECK(tied[2] == 0.0);
  generate::SamplingOptions bad;
  bad.top_p = 0.0;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("top_p must be in (0, 1]"), Error);
}

TEST_CASE("generate runs bf16 and f64 models: the greedy tokens of recomputing the whole sequence") {
  for (DType dtype : {DType::bf16, DType::f64}) {
    const std::string dtype_text = dtype_name(dtype);
    CAPTURE(dtype_text);
    const auto model = testing::random_llama(tiny_config(), 12);
    model->to(Device::cpu(), dtype);
    generate::GenerateOptions options;
    options.max_new_tokens = 6;
    options.use_config_stop_tokens = false;
    const std::vector<int64_t> prompt = {1, 7, 19, 4};
    const generate::GenerateResult result = generate::generate(*model, {prompt}, options);
    std::vector<int64_t> sequence = prompt, expected;
    autograd::NoGradGuard no_grad;
    for (int step = 0; step < 6; ++step) {
      const Tensor logits = model->forward(ids_tensor(sequence));
      const int64_t next = ops::argmax(logits.select(1, int64_t(sequence.size()) - 1), -1).item<int64_t>();
      expected.push_back(next);
      sequence.push_back(next);
    }
    CHECK(result.tokens[0] == expected);
  }
}

TEST_CASE("generate stops at stop tokens and batches prompts of different lengths") {
  const auto model = testing::random_llama(tiny_config(), 9);
  generate::GenerateOptions options;
  options.max_new_tokens = 8;
  options.use_config_stop_tokens = false;
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {1}, {1, 30, 31, 32, 33}};
  const generate::GenerateResult batched = generate::generate(*model, prompts, options);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const generate::GenerateResult alone = generate::generate(*model, {prompts[i]}, options);
    CHECK(alone.tokens[0] == batched.tokens[i]);  // padding does not change greedy output
    CHECK(batched.tokens[i].size() == 8);
  }
  // Stop on the first token the model would produce after the prompt.
  options.stop_tokens = {batched.tokens[0][0]};
  const generate::GenerateResult stopped = generate::generate(*model, {prompts[0]}, options);
  CHECK(stopped.tokens[0].empty());
  CHECK(stopped.finish_reasons[0] == "stop");
  options.stop_tokens.clear();
  int calls = 0;
  options.on_token = [&](size_t, int64_t) { return ++calls < 3; };
  const generate::GenerateResult limited = generate::generate(*model, {prompts[1]}, options);
  CHECK(limited.tokens[0].size() == 3);
  CHECK(limited.finish_reasons[0] == "callback");
  CHECK_THROWS_WITH_AS(generate::generate(*model, {{1, 99}}, options), doctest::Contains("token id 99 outside the vocabulary"), Error);
}
