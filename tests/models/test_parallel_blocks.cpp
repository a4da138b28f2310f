// Control LLM's parallel blocks (models/surgery/expand.h add_parallel_blocks, config.h's
// ParallelBlocks, LlamaDecoderLayer::expanded): the config key read, written and checked; the
// folder's copies bit-equal to their originals and its logits bit-identical to the original's at
// any alpha; the interpolation once the copy differs, by a fixed alpha (linear) and by the
// per-token gate (dynamic), which starts at alpha; each
// copy's own KV cache slots (greedy generation equals a full forward's argmax, in a batch);
// training the copies alone (--trainable expanded), with and without gradient checkpointing; and
// the inputs refused.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/io/safetensors.h"
#include "models/surgery/expand.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

Tensor some_ids() { return Tensor::from_vector<int64_t>({1, 5, 9, 3, 17, 30, 2, 8, 11, 4}, {2, 5}); }

// A random 3-layer model saved in `folder` (untied head), and the same with parallel copies of
// `layers` in `folder`-parallel.
std::shared_ptr<llama::LlamaForCausalLM> save_original(const fs::path& folder, uint64_t seed, DType dtype = DType::f32) {
  llama::LlamaConfig config = tiny_llama_config(40);
  config.num_hidden_layers = 3;
  config.tie_word_embeddings = false;
  const auto model = random_llama(config, seed);
  model->save(folder, dtype);
  return model;
}

std::shared_ptr<llama::LlamaForCausalLM> parallel_model(const fs::path& scratch, std::vector<int64_t> layers, double alpha,
                                                        const std::string& kind = "linear", uint64_t seed = 7) {
  save_original(scratch / "original", seed);
  fs::create_directories(scratch / "parallel");
  surgery::add_parallel_blocks(scratch / "original", scratch / "parallel", layers, alpha, kind);
  return llama::LlamaForCausalLM::load(scratch / "parallel");
}

llama::LlamaDecoderLayer& layer_of(llama::LlamaForCausalLM& model, size_t index) {
  return *std::static_pointer_cast<llama::LlamaDecoderLayer>((*model.model->layers)[index]);
}

// A plain model (no parallel blocks) of `model`'s shape with random weights from `seed`.
std::shared_ptr<llama::LlamaForCausalLM> plain_random(const llama::LlamaForCausalLM& model, uint64_t seed) {
  llama::LlamaConfig config = model.config();
  config.parallel_blocks.reset();
  return random_llama(config, seed);
}

// Gives every parallel copy other weights (plain_random's layers), so that the copies and the
// originals compute different things.
void perturb_copies(llama::LlamaForCausalLM& model, uint64_t seed) {
  const auto other = plain_random(model, seed);
  autograd::NoGradGuard no_grad;
  std::map<std::string, Tensor> replacement;
  for (const auto& [name, parameter] : other->named_parameters()) replacement[name] = parameter;
  for (const auto& [name, parameter] : model.named_parameters()) {
    const size_t at = name.find(".expanded.");
    if (at != std::string::npos) ops::copy_(parameter, replacement.at(name.substr(0, at) + name.substr(at + 9)));
  }
}

}  // namespace

TEST_CASE("parallel blocks in the config: read, written, counted, checked; none costs nothing") {
  llama::LlamaConfig config = tiny_llama_config(40);
  config.num_hidden_layers = 3;
  const int64_t plain_parameters = config.parameter_count();
  const json::Value plain = config.to_json();
  CHECK(plain.find("lamina_parallel_blocks") == nullptr);
  CHECK_FALSE(llama::LlamaConfig::from_json(plain).parallel_blocks.has_value());
  CHECK(config.decoder_blocks() == 3);

  config.parallel_blocks = llama::ParallelBlocks{{0, 2}, 0.25, "linear"};
  const json::Value written = config.to_json();
  CHECK(written.at("lamina_parallel_blocks").dump() == R"({"layers":[0,2],"alpha":0.25,"interpolation":"linear"})");
  const llama::LlamaConfig read = llama::LlamaConfig::from_json(written);
  REQUIRE(read.parallel_blocks.has_value());
  CHECK(read.parallel_blocks->layers == std::vector<int64_t>{0, 2});
  CHECK(read.parallel_blocks->alpha == 0.25);
  CHECK(read.decoder_blocks() == 5);
  // Each copy is one more layer's parameters; the model has exactly those, named "expanded".
  const llama::LlamaForCausalLM model(read);
  int64_t counted = 0;
  for (const auto& [name, parameter] : model.named_parameters()) counted += parameter.numel();
  CHECK(counted == read.parameter_count());
  llama::LlamaConfig one_more = config;
  one_more.parallel_blocks.reset();
  one_more.num_hidden_layers = 5;
  CHECK(read.parameter_count() == one_more.parameter_count());
  CHECK(read.parameter_count() > plain_parameters);
  std::vector<std::string> shapes;
  llama::LlamaForCausalLM::for_each_parameter_shape(read, [&](const std::string& name, const Shape&) { shapes.push_back(name); });
  std::vector<std::string> names;
  for (const auto& [name, parameter] : model.named_parameters()) names.push_back(name);
  CHECK(shapes == names);  // load checks a checkpoint in this order
  CHECK(std::count(names.begin(), names.end(), "model.layers.2.expanded.self_attn.q_proj.weight") == 1);
  CHECK(std::count(names.begin(), names.end(), "model.layers.1.expanded.self_attn.q_proj.weight") == 0);

  // Dynamic interpolation adds each copy's gate: w [1, 2 * hidden] and c [1].
  llama::LlamaConfig dynamic = read;
  dynamic.parallel_blocks->interpolation = "dynamic";
  CHECK(dynamic.parameter_count() == read.parameter_count() + 2 * (2 * 16 + 1));
  const llama::LlamaForCausalLM gated(dynamic);
  std::vector<std::string> gated_shapes, gated_names;
  llama::LlamaForCausalLM::for_each_parameter_shape(
      dynamic, [&](const std::string& name, const Shape&) { gated_shapes.push_back(name); });
  int64_t gated_count = 0;
  for (const auto& [name, parameter] : gated.named_parameters()) {
    gated_names.push_back(name);
    gated_count += parameter.numel();
  }
  CHECK(gated_shapes == gated_names);
  CHECK(gated_count == dynamic.parameter_count());
  CHECK(std::count(gated_names.begin(), gated_names.end(), "model.layers.0.expanded_gate.bias") == 1);

  const auto refused = [&](const std::string& block) {
    json::Value raw = plain;
    raw.set("lamina_parallel_blocks", json::parse(block));
    return error_of([&] { llama::LlamaConfig::from_json(raw, "c.json"); });
  };
  CHECK(refused(R"({"layers": [3], "alpha": 0.5})").find("c.json: lamina_parallel_blocks.layers[0] = 3 is not a layer") !=
        std::string::npos);
  CHECK(refused(R"({"layers": [2, 1]})").find("ascending without repeats, got 2 then 1") != std::string::npos);
  CHECK(refused(R"({"layers": [1, 1]})").find("ascending without repeats") != std::string::npos);
  CHECK(refused(R"({"layers": []})").find("layers is empty") != std::string::npos);
  CHECK(refused(R"({"layers": [1], "alpha": 1.5})").find("alpha must lie in [0, 1], got 1.5") != std::string::npos);
  CHECK(refused(R"({"layers": [1], "interpolation": "cubic"})").find("\"cubic\" is not supported") != std::string::npos);
  CHECK(refused(R"({"layers": [1], "interpolation": "dynamic", "alpha": 1})").find("(0, 1) with dynamic") !=
        std::string::npos);
  CHECK(refused(R"({"alpha": 0.5})").find("layers") != std::string::npos);
  CHECK(refused(R"([1, 2])").find("lamina_parallel_blocks") != std::string::npos);
}

TEST_CASE("add_parallel_blocks copies layers bit for bit; the model's logits are bit-identical at any alpha") {
  for (const auto& [alpha, kind] : std::vector<std::pair<double, std::string>>{
           {0.5, "linear"}, {0.3, "linear"}, {0.0, "linear"}, {1.0, "linear"}, {0.3, "dynamic"}}) {
    CAPTURE(alpha);
    CAPTURE(kind);
    const ScratchDir scratch("parallel-blocks");
    const auto original = save_original(scratch / "original", 11);
    // A field lamina does not model survives the rewrite of config.json.
    {
      json::Value raw = json::parse_file(scratch / "original/config.json");
      raw.set("custom_note", "kept");
      std::ofstream(scratch / "original/config.json") << raw.dump(2);
    }
    fs::create_directories(scratch / "out");
    const surgery::ParallelSummary summary =
        surgery::add_parallel_blocks(scratch / "original", scratch / "out", {2, 0}, alpha, kind);
    CHECK(summary.layers == std::vector<int64_t>{0, 2});
    CHECK(summary.tensors == 3 * 9 + 3 + 2 * 9 + (kind == "dynamic" ? 2 * 2 : 0));
    CHECK(summary.weight_files == std::vector<std::string>{"model.safetensors"});
    const json::Value raw = json::parse_file(scratch / "out/config.json");
    CHECK(raw.at("custom_note").as_string() == "kept");
    CHECK(raw.at("num_hidden_layers").as_int64() == 3);
    CHECK(raw.at("lamina_parallel_blocks").at("layers").dump() == "[0,2]");
    CHECK(raw.at("lamina_parallel_blocks").at("alpha").as_double() == alpha);

    CHECK(raw.at("lamina_parallel_blocks").at("interpolation").as_string() == kind);
    const safetensors::Checkpoint result = safetensors::Checkpoint::open(scratch / "out");
    if (kind == "dynamic") {  // w = 0, c = logit(alpha): every token starts at alpha
      CHECK(same_bytes(result.read("model.layers.2.expanded_gate.weight"), zeros({1, 32}, DType::f32)));
      const float bias = result.read("model.layers.0.expanded_gate.bias").to_vector<float>()[0];
      CHECK(1 / (1 + std::exp(-double(bias))) == doctest::Approx(alpha).epsilon(1e-6));
    }
    for (const std::string& name : result.names()) {
      const size_t at = name.find(".expanded.");
      if (at == std::string::npos) continue;
      CAPTURE(name);
      CHECK(same_bytes(result.read(name), result.read(name.substr(0, at) + name.substr(at + 9))));
    }
    const auto expanded = llama::LlamaForCausalLM::load(scratch / "out");
    CHECK(layer_of(*expanded, 0).expanded != nullptr);
    CHECK(layer_of(*expanded, 1).expanded == nullptr);
    CHECK(same_bytes(original->forward(some_ids()), expanded->forward(some_ids())));
    // Saved again by lamina, the folder keeps its copies and settings.
    expanded->save(scratch / "resaved");
    const auto reloaded = llama::LlamaForCausalLM::load(scratch / "resaved");
    REQUIRE(reloaded->config().parallel_blocks.has_value());
    CHECK(reloaded->config().parallel_blocks->alpha == alpha);
    CHECK(same_bytes(original->forward(some_ids()), reloaded->forward(some_ids())));
  }
  // bf16 weights stay bf16, and the logits stay bit-identical.
  const ScratchDir scratch("parallel-blocks-bf16");
  save_original(scratch / "original", 12, DType::bf16);
  fs::create_directories(scratch / "out");
  surgery::add_parallel_blocks(scratch / "original", scratch / "out", {1}, 0.7, "linear");
  CHECK(safetensors::Checkpoint::open(scratch / "out").info("model.layers.1.expanded.mlp.down_proj.weight").file_dtype ==
        "BF16");
  CHECK(same_bytes(llama::LlamaForCausalLM::load(scratch / "original")->forward(some_ids()),
                   llama::LlamaForCausalLM::load(scratch / "out")->forward(some_ids())));
}

TEST_CASE("a layer with a parallel copy outputs (1 - alpha) * its own output + alpha * the copy's") {
  const ScratchDir scratch("parallel-blocks-mix");
  const auto model = parallel_model(scratch.path, {1}, 0.3);
  perturb_copies(*model, 99);
  const auto other = plain_random(*model, 99);  // what the copies now hold
  Generator generator(5);
  const Tensor h = randn({2, 4, 16}, generator, DType::f32);
  const Tensor positions = arange(0, 4, 1, DType::i64);
  llama::AttentionContext context;
  const Tensor mixed = layer_of(*model, 1).forward(h, positions, 1, context);
  const auto original = llama::LlamaForCausalLM::load(scratch / "original");
  const Tensor own = layer_of(*original, 1).forward(h, positions, 1, context);
  const Tensor copy = layer_of(*other, 1).forward(h, positions, 1, context);
  CHECK_FALSE(same_bytes(own, copy));
  const Tensor expected = ops::add(ops::binary(ops::BinaryOp::mul, own, 0.7), ops::binary(ops::BinaryOp::mul, copy, 0.3));
  CHECK_CLOSE(mixed, expected, (Tolerance{1e-6, 1e-5}));
  // The other layers are the original's.
  CHECK(same_bytes(layer_of(*model, 0).forward(h, positions, 0, context), layer_of(*original, 0).forward(h, positions, 0, context)));
}

TEST_CASE("dynamic interpolation mixes per token: alpha = sigmoid(w . [original; copy] + c)") {
  const ScratchDir scratch("parallel-blocks-dynamic");
  const auto model = parallel_model(scratch.path, {1}, 0.3, "dynamic");
  perturb_copies(*model, 99);
  llama::LlamaDecoderLayer& layer = layer_of(*model, 1);
  REQUIRE(layer.expanded_gate != nullptr);
  CHECK(layer_of(*model, 0).expanded_gate == nullptr);
  Generator generator(6);
  {
    autograd::NoGradGuard no_grad;
    ops::copy_(layer.expanded_gate->weight(), randn({1, 32}, generator, DType::f32));
  }
  const Tensor h = randn({2, 3, 16}, generator, DType::f32);
  const Tensor positions = arange(0, 3, 1, DType::i64);
  llama::AttentionContext context;
  const Tensor mixed = layer.forward(h, positions, 1, context);
  const auto original = llama::LlamaForCausalLM::load(scratch / "original");
  const auto other = plain_random(*model, 99);
  const std::vector<float> own = layer_of(*original, 1).forward(h, positions, 1, context).contiguous().to_vector<float>();
  const std::vector<float> copy = layer_of(*other, 1).forward(h, positions, 1, context).contiguous().to_vector<float>();
  const std::vector<float> w = layer.expanded_gate->weight().contiguous().to_vector<float>();
  const double c = layer.expanded_gate->bias().to_vector<float>()[0];
  std::vector<float> expected(own.size());
  std::vector<double> alphas;
  for (size_t token = 0; token < 6; ++token) {
    double z = c;
    for (size_t j = 0; j < 16; ++j) z += w[j] * own[token * 16 + j] + w[16 + j] * copy[token * 16 + j];
    const double alpha = 1 / (1 + std::exp(-z));
    alphas.push_back(alpha);
    for (size_t j = 0; j < 16; ++j)
      expected[token * 16 + j] = float((1 - alpha) * own[token * 16 + j] + alpha * copy[token * 16 + j]);
  }
  CHECK(*std::max_element(alphas.begin(), alphas.end()) - *std::min_element(alphas.begin(), alphas.end()) > 0.01);
  CHECK_CLOSE(mixed, Tensor::from_vector(expected, {2, 3, 16}), (Tolerance{1e-5, 1e-5}));
}

TEST_CASE("each parallel copy has its own KV cache slots: greedy generation equals a full forward's argmax") {
  for (const std::string kind : {"linear", "dynamic"}) {
    CAPTURE(kind);
    const ScratchDir scratch("parallel-blocks-generate");
    const auto model = parallel_model(scratch.path, {0, 2}, 0.5, kind);
    perturb_copies(*model, 42);  // copies that differ from their originals, so shared slots would show

    llama::KvCache cache(model->config(), 1, 8);
    const Tensor keys = zeros({1, 2, 1, 4}, DType::f32);
    CHECK_NOTHROW(cache.store(4, keys, keys));  // the second copy's layer: num_hidden_layers + 1
    CHECK(error_of([&] { cache.store(5, keys, keys); }).find("no layer 5") != std::string::npos);

    const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9, 3, 17}, {1, 30, 2}};
    generate::GenerateOptions options;
    options.max_new_tokens = 6;
    options.use_config_stop_tokens = false;
    const generate::GenerateResult result = generate::generate(*model, prompts, options);
    for (size_t p = 0; p < prompts.size(); ++p) {
      CAPTURE(p);
      REQUIRE(result.tokens[p].size() == 6);
      std::vector<int64_t> sequence = prompts[p];
      for (const int64_t token : result.tokens[p]) {
        const Tensor ids = Tensor::from_vector(sequence, {1, int64_t(sequence.size())});
        const std::vector<float> logits =
            model->forward(ids).select(1, int64_t(sequence.size()) - 1).contiguous().to_vector<float>();
        CHECK(token == std::max_element(logits.begin(), logits.end()) - logits.begin());
        sequence.push_back(token);
      }
    }
    // A sparse attention plan indexes layers, not copies: refused.
    model->model->sparse_attention = llama::SparseAttention::uniform(model->config(), 1, 2);
    CHECK(error_of([&] { model->forward(some_ids()); }).find("parallel blocks") != std::string::npos);
  }
}

TEST_CASE("--trainable expanded trains the copies alone: originals bit-identical, copies changed, loss down") {
  for (const std::string kind : {"linear", "dynamic"}) {
    CAPTURE(kind);
    const ScratchDir scratch("parallel-blocks-train");
    llama::LlamaConfig config = tiny_config();
    const auto base = random_llama(config, 3);
    base->save(scratch / "original");
    fs::create_directories(scratch / "parallel");
    surgery::add_parallel_blocks(scratch / "original", scratch / "parallel", {1}, 0.5, kind);

    std::vector<std::pair<std::string, Tensor>> after_plain;
    for (const bool checkpointing : {false, true}) {
      CAPTURE(checkpointing);
      const auto model = llama::LlamaForCausalLM::load(scratch / "parallel");
      std::map<std::string, Tensor> before;
      for (const auto& [name, parameter] : model->named_parameters()) before[name] = parameter.clone();
      train::TrainOptions options;
      options.steps = 6;
      options.batch_size = 4;
      options.seq_len = 16;
      options.lr = 1e-2;
      options.warmup_steps = 0;
      options.weight_decay = 0;
      options.precision = "f32";
      options.progress = false;
      options.trainable = "expanded";
      options.gradient_checkpointing = checkpointing;
      train::Trainer trainer(model, options, examples(8, 1), examples(8, 1));
      const double loss_before = trainer.validation_loss();
      trainer.run();
      CHECK(trainer.validation_loss() < loss_before - 1e-3);
      int64_t changed = 0;
      for (const auto& [name, parameter] : model->named_parameters()) {
        CAPTURE(name);
        const bool copy = name.find(".expanded") != std::string::npos;  // the copy and its gate
        CHECK(parameter.requires_grad() == copy);
        if (!copy) CHECK(same_bytes(parameter, before.at(name)));
        changed += copy && !same_bytes(parameter, before.at(name));
      }
      CHECK(changed == (kind == "dynamic" ? 11 : 9));  // every tensor of the copy (its norms included), the gate
      // Gradient checkpointing recomputes the same activations: the same weights, bit for bit.
      if (!checkpointing) {
        for (const auto& [name, parameter] : model->named_parameters()) after_plain.emplace_back(name, parameter.clone());
      } else {
        size_t index = 0;
        for (const auto& [name, parameter] : model->named_parameters()) {
          CAPTURE(name);
          CHECK(same_bytes(parameter, after_plain[index++].second));
        }
      }
    }
  }
}

TEST_CASE("parallel blocks refuse what they cannot expand, and folders that contradict their config") {
  const ScratchDir scratch("parallel-blocks-errors");
  save_original(scratch / "original", 4);
  fs::create_directories(scratch / "out");
  const auto add = [&](const fs::path& from, std::vector<int64_t> layers, double alpha, const std::string& kind) {
    return error_of([&] { surgery::add_parallel_blocks(from, scratch / "out", layers, alpha, kind); });
  };
  CHECK(add(scratch / "original", {3}, 0.5, "linear").find("layer 3 does not exist (the model has 3 layers") !=
        std::string::npos);
  CHECK(add(scratch / "original", {-1}, 0.5, "linear").find("layer -1 does not exist") != std::string::npos);
  CHECK(add(scratch / "original", {1, 1}, 0.5, "linear").find("layer 1 is given twice") != std::string::npos);
  CHECK(add(scratch / "original", {}, 0.5, "linear").find("no layer") != std::string::npos);
  CHECK(add(scratch / "original", {1}, 1.01, "linear").find("alpha must lie in [0, 1]") != std::string::npos);
  CHECK(add(scratch / "original", {1}, -0.1, "linear").find("alpha must lie in [0, 1]") != std::string::npos);
  CHECK(add(scratch / "original", {1}, 0.5, "cubic").find("'cubic' is not supported") != std::string::npos);
  CHECK(add(scratch / "original", {1}, 0.0, "dynamic").find("(0, 1) with dynamic interpolation") != std::string::npos);
  CHECK(add(scratch / "missing", {1}, 0.5, "linear").find("is not a folder") != std::string::npos);
  CHECK(fs::is_empty(scratch / "out"));

  // An expanded folder is not expanded again, by either kind.
  fs::create_directories(scratch / "parallel");
  surgery::add_parallel_blocks(scratch / "original", scratch / "parallel", {1}, 0.5, "linear");
  CHECK(add(scratch / "parallel", {0}, 0.5, "linear").find("has parallel blocks already (layers [1]") != std::string::npos);
  CHECK(error_of([&] {
          surgery::expand_blocks(scratch / "parallel", scratch / "out", surgery::plan_insert_after(3, {0}));
        }).find("has parallel blocks") != std::string::npos);
  CHECK(fs::is_empty(scratch / "out"));

  // Copies without the config key, and the key without the copies.
  json::Value raw = json::parse_file(scratch / "parallel/config.json");
  json::Value without = raw;
  std::erase_if(without.as_object(), [](const json::Member& member) { return member.first == "lamina_parallel_blocks"; });
  std::ofstream(scratch / "parallel/config.json") << without.dump(2);
  CHECK(error_of([&] { llama::LlamaForCausalLM::load(scratch / "parallel"); })
            .find("has a tensor 'model.layers.1.expanded.") != std::string::npos);
  CHECK(add(scratch / "parallel", {0}, 0.5, "linear").find("a parallel copy, but config.json has no lamina_parallel_blocks") !=
        std::string::npos);
  raw.set("lamina_parallel_blocks", json::parse(R"({"layers": [0, 1], "alpha": 0.5})"));
  std::ofstream(scratch / "parallel/config.json") << raw.dump(2);
  CHECK(error_of([&] { llama::LlamaForCausalLM::load(scratch / "parallel"); })
            .find("has no tensor 'model.layers.0.expanded.self_attn.q_proj.weight'") != std::string::npos);
}
