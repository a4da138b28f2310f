// PEFT adapter folders (formats-and-quantization.md 3.5, 3.6): the keys, shapes and config
// fields lamina writes, a folder written by hand the way PEFT names things (values chosen by
// hand, forward computed by hand in f64), and the errors for broken folders.
#include <filesystem>
#include <fstream>
#include <set>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/io/peft.h"
#include "models/io/safetensors.h"
#include "models/llama/reward_model.h"
#include "nn/layers.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// model.layers.0.self_attn.q_proj (in 3, out 2) and model.layers.0.mlp.down_proj (in 2, out 3),
// named as in a Llama checkpoint, in f64.
class HandAttention : public nn::Module {
 public:
  HandAttention() { q_proj = register_module("q_proj", std::make_shared<nn::Linear>(3, 2, nn::LinearOptions{false, DType::f64})); }
  std::shared_ptr<nn::Linear> q_proj;
};
class HandMlp : public nn::Module {
 public:
  HandMlp() { down_proj = register_module("down_proj", std::make_shared<nn::Linear>(2, 3, nn::LinearOptions{false, DType::f64})); }
  std::shared_ptr<nn::Linear> down_proj;
};
class HandLayer : public nn::Module {
 public:
  HandLayer() {
    self_attn = register_module("self_attn", std::make_shared<HandAttention>());
    mlp = register_module("mlp", std::make_shared<HandMlp>());
  }
  std::shared_ptr<HandAttention> self_attn;
  std::shared_ptr<HandMlp> mlp;
};
class HandInner : public nn::Module {
 public:
  HandInner() {
    layers = register_module("layers", std::make_shared<nn::ModuleList>());
    layers->push_back(std::make_shared<HandLayer>());
  }
  std::shared_ptr<nn::ModuleList> layers;
};
class HandModel : public nn::Module {
 public:
  HandModel() { model = register_module("model", std::make_shared<HandInner>()); }
  std::shared_ptr<HandInner> model;
  nn::Linear& q_proj() const { return *std::dynamic_pointer_cast<HandLayer>((*model->layers)[0])->self_attn->q_proj; }
  nn::Linear& down_proj() const { return *std::dynamic_pointer_cast<HandLayer>((*model->layers)[0])->mlp->down_proj; }
};

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

const char* kHandConfig = R"({
  "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "hand/made",
  "r": 2, "lora_alpha": 3, "lora_dropout": 0.1, "target_modules": ["q_proj"], "bias": "none",
  "use_rslora": false, "use_dora": false, "fan_in_fan_out": false, "inference_mode": true,
  "init_lora_weights": true, "modules_to_save": null, "rank_pattern": {}, "alpha_pattern": {},
  "peft_version": "0.13.2", "some_future_field": 1
})";

// The hand folder: q_proj's A [2, 3] and B [2, 2] under PEFT's names (B stored as BF16, whose
// values here are exact in it).
void write_hand_adapter(const std::string& folder) {
  fs::create_directories(folder);
  write_text(folder + "/adapter_config.json", kHandConfig);
  safetensors::save(folder + "/adapter_model.safetensors",
                    {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                      Tensor::from_vector<float>({1, 0, -1, 0.5, 2, 0}, {2, 3})},
                     {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                      Tensor::from_vector<float>({1, -2, 0.25, 3}, {2, 2}, DType::bf16)}});
}

}  // namespace

TEST_CASE("a PEFT folder written by hand loads and gives the forward computed by hand") {
  const ScratchDir scratch("peft-hand");
  write_hand_adapter(scratch / "adapter");
  HandModel model;
  model.q_proj().weight().set_data(Tensor::from_vector<double>({1, 2, 3, -1, 0, 1}, {2, 3}));
  const nn::LoraConfig config = peft::load_adapter(scratch / "adapter", model);
  CHECK(config.options.rank == 2);
  CHECK(config.options.alpha == 3.0);
  CHECK(config.base_model_name_or_path == "hand/made");
  CHECK(!model.down_proj().has_adapter("default"));
  model.eval();  // lora_dropout 0.1 acts in training only
  // x = [1, 2, -1]: W x = [1 + 4 - 3, -1 + 0 - 1] = [2, -2]; A x = [1 + 0 + 1, 0.5 + 4 + 0] = [2, 4.5];
  // B (A x) = [2 - 9, 0.5 + 13.5] = [-7, 14]; s = 3 / 2, so y = [2 - 10.5, -2 + 21] = [-8.5, 19].
  const Tensor x = Tensor::from_vector<double>({1, 2, -1}, {1, 3});
  CHECK(model.q_proj().forward(x).to_vector<double>() == std::vector<double>{-8.5, 19.0});
  // The file's values, not a fresh init, are the adapter's.
  CHECK(model.parameter("model.layers.0.self_attn.q_proj.lora_B.default.weight").to_vector<double>() ==
        std::vector<double>{1, -2, 0.25, 3});
}

TEST_CASE("the hand-written adapter on a Llama equals the Llama with W + s B A by hand") {
  const ScratchDir scratch("peft-llama");
  llama::LlamaConfig config = tiny_llama_config(32);
  config.hidden_size = 3 * 4, config.num_attention_heads = 3, config.num_key_value_heads = 1;
  const auto adapted = random_llama(config, 5, DType::f64);
  const auto by_hand = random_llama(config, 5, DType::f64);
  // q_proj is [12, 12]; the adapter: rank 1, A = e_0 (picks x[0]), B = (1, 2, ..., 12) / 8, alpha 2.
  fs::create_directories(scratch / "adapter");
  write_text(scratch / "adapter/adapter_config.json",
             R"({"peft_type":"LORA","r":1,"lora_alpha":2,"target_modules":["q_proj"],"bias":"none","use_dora":false})");
  std::vector<float> a(12, 0.0f), b(12);
  a[0] = 1.0f;
  for (int i = 0; i < 12; ++i) b[size_t(i)] = float(i + 1) / 8.0f;
  safetensors::save(scratch / "adapter/adapter_model.safetensors",
                    {{"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", Tensor::from_vector(a, {1, 12})},
                     {"base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight", Tensor::from_vector(b, {12, 1})},
                     {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", Tensor::from_vector(a, {1, 12})},
                     {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                      Tensor::from_vector(std::vector<float>(12, 0.0f), {12, 1})}});
  peft::load_adapter(scratch / "adapter", *adapted);
  // By hand: W[o][0] += 2 * b[o] in layer 1 only (layer 0's B is zero).
  const Tensor weight = by_hand->parameter("model.layers.1.self_attn.q_proj.weight");
  std::vector<double> w = weight.to_vector<double>();
  for (int o = 0; o < 12; ++o) w[size_t(o * 12)] += 2.0 * double(b[size_t(o)]);
  weight.set_data(Tensor::from_vector(w, {12, 12}));
  const Tensor ids = Tensor::from_vector<int64_t>({4, 8, 15, 16, 23, 3}, {2, 3});
  const Tensor expected = by_hand->forward(ids);
  CHECK_CLOSE(adapted->forward(ids), expected, tolerance_for(DType::f64));
  nn::disable_adapters(*adapted);
  CHECK(compare(adapted->forward(ids), expected, tolerance_for(DType::f64)).ok == false);
}

TEST_CASE("lamina writes PEFT's key names, shapes and config fields, and reads them back") {
  const ScratchDir scratch("peft-roundtrip");
  const auto model = random_llama(tiny_llama_config(32), 9);
  nn::LoraConfig config;
  config.options.rank = 4;
  config.options.alpha = 8;
  config.options.dropout = 0.05;
  config.options.use_rslora = true;
  config.options.use_dora = true;
  config.options.init = nn::LoraInit::gaussian;
  config.target_modules = {"q_proj", "down_proj"};
  config.alpha_pattern = {{"down_proj", 16.0}};
  config.base_model_name_or_path = "tiny/llama";
  config.exclude_regex = "model\\.layers\\.9\\..*";  // excludes nothing here; checks the field's round trip
  nn::apply_lora(*model, config);
  // Non-trivial values for B (zero after init) and m.
  Generator generator(10);
  for (const auto& [path, linear] : nn::named_linears(*model))
    if (linear->has_adapter("default")) {
      linear->adapter("default").lora_B.set_data(random_tensor(linear->adapter("default").lora_B.shape(), DType::f32, generator));
      linear->adapter("default").magnitude.set_data(random_tensor({linear->out_features()}, DType::f32, generator, 0.5, 2));
    }
  peft::save_adapter(scratch / "adapter", *model, config);

  const safetensors::File file = safetensors::File::open(scratch / "adapter/adapter_model.safetensors");
  CHECK(file.metadata().at("format") == "pt");
  std::set<std::string> keys;
  for (const auto& info : file.tensors()) {
    keys.insert(info.name);
    CHECK(info.file_dtype == "F32");
  }
  std::set<std::string> expected;
  for (const char* layer : {"0", "1"}) {
    const std::string q = std::string("base_model.model.model.layers.") + layer + ".self_attn.q_proj.";
    const std::string down = std::string("base_model.model.model.layers.") + layer + ".mlp.down_proj.";
    for (const std::string& module : {q, down})
      for (const char* part : {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector"}) expected.insert(module + part);
  }
  CHECK(keys == expected);
  CHECK(file.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")->shape == Shape{4, 16});
  CHECK(file.find("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")->shape == Shape{16, 4});
  CHECK(file.find("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")->shape == Shape{4, 32});
  CHECK(file.find("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")->shape == Shape{16, 4});
  CHECK(file.find("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector")->shape == Shape{16});

  const json::Value written = json::parse_file(scratch / "adapter/adapter_config.json");
  CHECK(written.at("peft_type").as_string() == "LORA");
  CHECK(written.at("task_type").as_string() == "CAUSAL_LM");
  CHECK(written.at("base_model_name_or_path").as_string() == "tiny/llama");
  CHECK(written.at("r").as_int64() == 4);
  CHECK(written.at("lora_alpha").as_double() == 8.0);
  CHECK(written.at("lora_dropout").as_double() == 0.05);
  CHECK(written.at("target_modules").dump() == R"(["q_proj","down_proj"])");
  CHECK(written.at("bias").as_string() == "none");
  CHECK(written.at("fan_in_fan_out").as_bool() == false);
  CHECK(written.at("use_rslora").as_bool() == true);
  CHECK(written.at("use_dora").as_bool() == true);
  CHECK(written.at("init_lora_weights").as_string() == "gaussian");
  CHECK(written.at("modules_to_save").is_null());
  CHECK(written.at("inference_mode").as_bool() == true);
  CHECK(written.at("alpha_pattern").dump() == R"({"down_proj":16})");

  const nn::LoraConfig read = peft::read_adapter_config(scratch / "adapter");
  CHECK(read.options.rank == 4);
  CHECK(read.options.alpha == 8);
  CHECK(read.options.dropout == 0.05);
  CHECK(read.options.use_rslora);
  CHECK(read.options.use_dora);
  CHECK(read.options.init == nn::LoraInit::gaussian);
  CHECK(read.target_modules == config.target_modules);
  CHECK(read.alpha_pattern == config.alpha_pattern);
  CHECK(read.base_model_name_or_path == "tiny/llama");
  CHECK(read.exclude_regex == config.exclude_regex);
  CHECK(read.exclude_modules.empty());

  // Loaded into a second copy of the base, the adapter gives the same logits.
  model->eval();
  const Tensor ids = Tensor::from_vector<int64_t>({3, 1, 4, 1, 5, 9}, {2, 3});
  const Tensor original = model->forward(ids);
  const auto copy = random_llama(tiny_llama_config(32), 9);
  copy->eval();
  const Tensor base = copy->forward(ids);
  peft::load_adapter(scratch / "adapter", *copy, "loaded");
  CHECK_CLOSE(copy->forward(ids), original, tolerance_for(DType::f32));
  CHECK(compare(base, original, tolerance_for(DType::f32)).ok == false);
}

TEST_CASE("a broken adapter folder is an error naming the file and key, and leaves the model untouched") {
  const ScratchDir scratch("peft-errors");
  const std::string folder = scratch / "adapter";
  const std::string weights = folder + "/adapter_model.safetensors";
  const std::string a_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  const std::string b_key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
  const auto expect_error = [&](const std::string& first, const std::string& second) {
    HandModel model;
    std::string message;
    try {
      peft::load_adapter(folder, model);
    } catch (const Error& error) {
      message = error.what();
    }
    INFO(message);
    CHECK(message.find(first) != std::string::npos);
    CHECK(message.find(second) != std::string::npos);
    for (const auto& [name, parameter] : model.named_parameters()) {
      CHECK(name.find("lora") == std::string::npos);
      CHECK(parameter.requires_grad());
    }
  };
  SUBCASE("no adapter_config.json") {
    fs::create_directories(folder);
    expect_error(folder + "/adapter_config.json", "not found");
  }
  SUBCASE("no weights") {
    write_hand_adapter(folder);
    fs::remove(weights);
    expect_error(weights, "not found");
  }
  SUBCASE("a missing key") {
    write_hand_adapter(folder);
    safetensors::save(weights, {{a_key, zeros({2, 3})}});
    expect_error(weights, b_key);
  }
  SUBCASE("a wrong shape") {
    write_hand_adapter(folder);
    safetensors::save(weights, {{a_key, zeros({2, 3})}, {b_key, zeros({2, 3})}});
    expect_error(weights, b_key + " has shape [2, 3], expected [2, 2]");
  }
  SUBCASE("a key no target module owns") {
    write_hand_adapter(folder);
    safetensors::save(weights, {{a_key, zeros({2, 3})}, {b_key, zeros({2, 2})},
                                {"base_model.model.model.layers.0.mlp.down_proj.lora_A.weight", zeros({2, 2})}});
    expect_error(weights, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
  }
  SUBCASE("a target module the model lacks") {
    write_hand_adapter(folder);
    write_text(folder + "/adapter_config.json", R"({"peft_type":"LORA","r":2,"target_modules":["q_proj","gate_proj"]})");
    expect_error(folder + "/adapter_config.json", "gate_proj");
  }
  SUBCASE("settings lamina cannot honour") {
    write_hand_adapter(folder);
    write_text(folder + "/adapter_config.json", R"({"peft_type":"LORA","r":2,"target_modules":["q_proj"],"bias":"all"})");
    expect_error(folder + "/adapter_config.json", "bias");
    write_text(folder + "/adapter_config.json", R"({"peft_type":"PREFIX_TUNING"})");
    expect_error(folder + "/adapter_config.json", "PREFIX_TUNING");
    write_text(folder + "/adapter_config.json", R"({"r":2})");
    expect_error(folder + "/adapter_config.json", "peft_type");
  }
}

TEST_CASE("a reward model's adapter saves its score head whole (modules_to_save) and loads it back") {
  autograd::NoGradGuard no_grad;
  const testing::ScratchDir dir("peft-modules-to-save");
  const llama::LlamaConfig config = testing::tiny_llama_config(40);
  const auto causal = testing::random_llama(config, 2);
  Generator generator(3);
  const auto trained = llama::LlamaForSequenceClassification::from_causal_lm(*causal, {}, generator);
  nn::LoraConfig lora;
  lora.options.rank = 2;
  lora.options.init = nn::LoraInit::random;
  lora.target_modules = {"q_proj", "v_proj"};
  lora.modules_to_save = {"score"};
  lora.task_type = "SEQ_CLS";
  nn::apply_lora(*trained, lora);
  CHECK(trained->score->weight().requires_grad());  // trained whole, beside the adapters
  CHECK_FALSE(trained->model->norm->weight().requires_grad());
  trained->score->weight().set_data(testing::random_tensor({1, config.hidden_size}, DType::f32, generator, -1, 1));
  peft::save_adapter(dir / "adapter", *trained, lora);
  const json::Value saved = json::parse_file(dir / "adapter/adapter_config.json");
  CHECK(saved.at("task_type").as_string() == "SEQ_CLS");
  CHECK(saved.at("modules_to_save").as_array()[0].as_string() == "score");
  const safetensors::File file = safetensors::File::open(dir / "adapter/adapter_model.safetensors");
  REQUIRE(file.find("base_model.model.score.weight") != nullptr);
  // Loaded over a fresh head on the same trunk: the same rewards.
  Generator other(9);
  const auto loaded = llama::LlamaForSequenceClassification::from_causal_lm(*testing::random_llama(config, 2), {}, other);
  const nn::LoraConfig read = peft::load_adapter(dir / "adapter", *loaded);
  CHECK(read.modules_to_save == std::vector<std::string>{"score"});
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 5, 9, 13}, {1, 4});
  const Tensor lengths = Tensor::from_vector(std::vector<int64_t>{4}, {1});
  CHECK(loaded->forward(ids, lengths).to_vector<float>() == trained->forward(ids, lengths).to_vector<float>());
  // An entry naming no module is an error.
  lora.modules_to_save = {"classifier"};
  CHECK_THROWS_WITH_AS(peft::save_adapter(dir / "bad", *trained, lora), doctest::Contains("no module of the model is named \"classifier\""), Error);
}
