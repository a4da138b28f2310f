// Routed multi-LoRA (nn/routed_lora.h): one adapter at top-1 is plain LoRA, bit for bit; with
// forced gates the output is the hand-weighted sum of the adapters' outputs (top-2 of 2, top-1 of
// 2, top-2 of 3); the gate's gradient against central differences (f64); training the gates on
// two synthetic tasks lowers the loss and sends each task's tokens mostly to its own adapter; bad
// combinations are errors naming the problem.
#include <cmath>

#include "autograd/autograd.h"
#include "autograd/gradcheck.h"
#include "helpers.h"
#include "model_presets.h"
#include "nn/layers.h"
#include "nn/lora.h"
#include "nn/routed_lora.h"
#include "train/trainer.h"

using namespace lamina;
using testing::random_tensor;

namespace {

// A module holding one Linear named "proj", so that model-level functions find it.
struct OneProjection : nn::Module {
  std::shared_ptr<nn::Linear> proj;
  OneProjection(int64_t in, int64_t out, DType dtype, uint64_t seed) {
    proj = register_module("proj", std::make_shared<nn::Linear>(in, out, nn::LinearOptions{true, dtype}));
    Generator generator(seed);
    proj->reset_parameters(generator);
  }
};

nn::LoraConfig random_adapter_config(const std::vector<std::string>& targets, int64_t rank, double alpha, uint64_t seed) {
  nn::LoraConfig config;
  config.target_modules = targets;
  config.options.rank = rank;
  config.options.alpha = alpha;
  config.options.init = nn::LoraInit::random;  // B non-zero: each adapter changes the output
  config.seed = seed;
  return config;
}

double max_abs_difference(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

// Sets the gate of `layer` to `values` ([N, in], row-major).
void force_gate(const nn::RoutedLora& router, const nn::Linear& layer, const std::vector<double>& values) {
  const Tensor& gate = router.gate(layer);
  gate.set_data(Tensor::from_vector(values, gate.shape(), gate.dtype()));
}

// Each adapter's output alone (active), and the base's: what the routed sum is made of.
std::vector<std::vector<double>> single_outputs(OneProjection& module, const std::vector<std::string>& names,
                                                const Tensor& x) {
  auto router = nn::lora_router(module);
  nn::set_lora_router(module, nullptr);
  std::vector<std::vector<double>> outputs;
  nn::disable_adapters(module);
  outputs.push_back(module.proj->forward(x).to_vector<double>());
  for (const std::string& name : names) {
    nn::set_active_adapter(module, name);
    outputs.push_back(module.proj->forward(x).to_vector<double>());
  }
  nn::set_lora_router(module, router);
  return outputs;
}

}  // namespace

TEST_CASE("routed LoRA: one adapter at top-1 equals plain LoRA with that adapter, bit for bit") {
  auto model = testing::random_llama(testing::tiny_llama_config(32), 5);
  nn::apply_lora(*model, random_adapter_config({"all-linear"}, 4, 8.0, 6), "only");
  model->eval();
  const Tensor ids = Tensor::from_vector<int64_t>({1, 7, 3, 9, 12, 30, 2, 5, 6, 8}, {2, 5});
  const Tensor plain = model->forward(ids);
  nn::disable_adapters(*model);
  const Tensor base = model->forward(ids);
  const auto router = nn::add_lora_router(*model, {"only"}, 1, 3);
  CHECK(nn::router_parameters(*model).size() == 14);  // 7 projections x 2 layers
  // The selection's active adapter is none: what the adapter adds comes through the router.
  const Tensor routed = model->forward(ids);
  // softmax over one logit is exactly 1: the same operations on the same values.
  CHECK(max_abs_difference(routed, plain) == 0.0);
  CHECK(max_abs_difference(routed, base) > 1e-3);  // the adapter does change the output
}

TEST_CASE("routed LoRA: with forced gates the output is the hand-weighted sum of the adapters (f64)") {
  const int64_t in = 4, out = 3, tokens = 6;
  OneProjection module(in, out, DType::f64, 1);
  nn::apply_lora(module, random_adapter_config({"proj"}, 2, 4.0, 2), "a");
  nn::apply_lora(module, random_adapter_config({"proj"}, 3, 3.0, 3), "b");
  module.eval();
  Generator generator(4);
  const Tensor x = random_tensor({tokens, in}, DType::f64, generator);
  const std::vector<double> xs = x.to_vector<double>();
  const auto outputs = single_outputs(module, {"a", "b"}, x);  // base, a, b

  SUBCASE("top-2 of 2: weights = softmax(0, c x0)") {
    const auto router = nn::add_lora_router(module, {"a", "b"}, 2);
    const double c = 1.7;
    force_gate(*router, *module.proj, {0, 0, 0, 0, c, 0, 0, 0});  // logits (0, c x0)
    const std::vector<double> y = module.proj->forward(x).to_vector<double>();
    for (int64_t t = 0; t < tokens; ++t) {
      const double w_b = 1.0 / (1.0 + std::exp(-c * xs[size_t(t * in)])), w_a = 1.0 - w_b;
      for (int64_t o = 0; o < out; ++o) {
        const size_t i = size_t(t * out + o);
        const double expected = outputs[0][i] + w_a * (outputs[1][i] - outputs[0][i]) + w_b * (outputs[2][i] - outputs[0][i]);
        CHECK(std::abs(y[i] - expected) < 1e-12);
      }
    }
  }
  SUBCASE("top-1 of 2: each token gets the adapter of the larger logit, weight 1") {
    const auto router = nn::add_lora_router(module, {"a", "b"}, 1);
    force_gate(*router, *module.proj, {0, 0, 0, 0, 1, 0, 0, 0});  // b when x0 > 0
    const std::vector<double> y = module.proj->forward(x).to_vector<double>();
    int64_t chose_b = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t chosen = xs[size_t(t * in)] > 0 ? 2 : 1;
      chose_b += chosen == 2;
      for (int64_t o = 0; o < out; ++o)
        CHECK(std::abs(y[size_t(t * out + o)] - outputs[size_t(chosen)][size_t(t * out + o)]) < 1e-12);
    }
    CHECK(chose_b > 0);
    CHECK(chose_b < tokens);  // both adapters were chosen somewhere
  }
}

TEST_CASE("routed LoRA: top-2 of 3 zeroes the smallest logit and softmaxes the other two") {
  const int64_t in = 3, out = 2;
  OneProjection module(in, out, DType::f64, 7);
  uint64_t seed = 8;
  for (const char* name : {"a", "b", "c"}) nn::apply_lora(module, random_adapter_config({"proj"}, 2, 2.0, ++seed), name);
  module.eval();
  const auto router = nn::add_lora_router(module, {"a", "b", "c"}, 2);
  force_gate(*router, *module.proj, {1, 0, 0, 0, 1, 0, 0, 0, 1});  // logits = x
  const Tensor x = Tensor::from_vector<double>({0.5, -1.0, 0.25, -2.0, 3.0, 1.0}, {2, in});
  const std::vector<double> w = router->routing_weights(*module.proj, x).to_vector<double>();
  const double e = 1.0 / (1.0 + std::exp(-(0.5 - 0.25)));  // token 0: a (0.5) and c (0.25)
  CHECK(std::abs(w[0] - e) < 1e-15);
  CHECK(w[1] == 0.0);
  CHECK(std::abs(w[2] - (1 - e)) < 1e-15);
  const double f = 1.0 / (1.0 + std::exp(-(3.0 - 1.0)));  // token 1: b (3) and c (1)
  CHECK(w[3] == 0.0);
  CHECK(std::abs(w[4] - f) < 1e-15);
  CHECK(std::abs(w[5] - (1 - f)) < 1e-15);
  // The output with the gate as forced: base + sum of the weighted adapters.
  const auto outputs = single_outputs(module, {"a", "b", "c"}, x);
  const std::vector<double> y = module.proj->forward(x).to_vector<double>();
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t o = 0; o < out; ++o) {
      const size_t i = size_t(t * out + o);
      double expected = outputs[0][i];
      for (size_t j = 0; j < 3; ++j) expected += w[size_t(t) * 3 + j] * (outputs[j + 1][i] - outputs[0][i]);
      CHECK(std::abs(y[i] - expected) < 1e-12);
    }
}

TEST_CASE("gradcheck: the gate through a routed Linear, top-2 of 3 (f64)") {
  OneProjection module(4, 3, DType::f64, 11);
  uint64_t seed = 12;
  for (const char* name : {"a", "b", "c"}) nn::apply_lora(module, random_adapter_config({"proj"}, 2, 3.0, ++seed), name);
  module.eval();
  const auto router = nn::add_lora_router(module, {"a", "b", "c"}, 2, 13);
  Generator generator(14);
  const Tensor x = random_tensor({2, 3, 4}, DType::f64, generator);
  Tensor gate = router->gate(*module.proj);
  CHECK(gate.requires_grad());
  const auto result = autograd::gradcheck(
      [&](const std::vector<Tensor>& inputs) {
        router->add_gate(*module.proj, inputs[0]);
        return module.proj->forward(x);
      },
      {gate});
  INFO(result.worst);
  CHECK(result.passed);
  // The gradient is not zero: the gate does learn.
  router->add_gate(*module.proj, gate);
  gate.set_grad(Tensor());
  sum(module.proj->forward(x)).backward();
  REQUIRE(gate.grad().defined());
  CHECK(max_abs_difference(gate.grad(), zeros_like(gate)) > 1e-6);
  // The base and the adapters are frozen.
  for (const auto& [name, parameter] : module.named_parameters())
    CHECK(parameter.requires_grad() == (name == "proj.lora_router.weight"));
}

TEST_CASE("routed LoRA: bad combinations are errors naming the problem") {
  SUBCASE("adapters on different modules") {
    auto model = testing::random_llama(testing::tiny_llama_config(32), 5);
    nn::apply_lora(*model, random_adapter_config({"q_proj"}, 2, 2.0, 1), "a");
    nn::apply_lora(*model, random_adapter_config({"v_proj"}, 2, 2.0, 2), "b");
    CHECK_THROWS_WITH(nn::add_lora_router(*model, {"a", "b"}, 2),
                      doctest::Contains("must target the same modules"));
    CHECK(nn::router_parameters(*model).empty());  // nothing changed
  }
  SUBCASE("top_k outside [1, N], unknown or repeated adapters, DoRA") {
    OneProjection module(4, 3, DType::f32, 1);
    nn::apply_lora(module, random_adapter_config({"proj"}, 2, 2.0, 1), "a");
    nn::apply_lora(module, random_adapter_config({"proj"}, 2, 2.0, 2), "b");
    CHECK_THROWS_WITH(nn::add_lora_router(module, {"a", "b"}, 3), doctest::Contains("top_k 3 is outside [1, 2]"));
    CHECK_THROWS_WITH(nn::add_lora_router(module, {"a", "b"}, 0), doctest::Contains("top_k 0 is outside [1, 2]"));
    CHECK_THROWS_WITH(nn::add_lora_router(module, {"a", "z"}, 1), doctest::Contains("no LoRA adapter named 'z'"));
    CHECK_THROWS_WITH(nn::add_lora_router(module, {"a", "a"}, 1), doctest::Contains("given twice"));
    nn::LoraConfig dora = random_adapter_config({"proj"}, 2, 2.0, 3);
    dora.options.use_dora = true;
    nn::apply_lora(module, dora, "d");
    CHECK_THROWS_WITH(nn::add_lora_router(module, {"a", "d"}, 2), doctest::Contains("uses DoRA"));
    nn::add_lora_router(module, {"a", "b"}, 2);
    CHECK_THROWS_WITH(nn::add_lora_router(module, {"a", "b"}, 2), doctest::Contains("has a gate already"));
  }
}

namespace {

// Two synthetic tasks over a 32-token vocabulary: after BOS and a marker (3 or 4), task 1
// counts up from a random start in [8, 32) and task 2 counts down, wrapping inside [8, 32).
std::vector<train::Example> task_examples(int task, int64_t count, uint64_t seed) {
  Generator generator(seed);
  const std::vector<int64_t> starts = randint(8, 32, {count}, generator).to_vector<int64_t>();
  std::vector<train::Example> out;
  for (const int64_t start : starts) {
    train::Example example;
    example.ids = {1, task == 1 ? 3 : 4};
    int64_t value = start;
    for (int i = 0; i < 10; ++i) {
      example.ids.push_back(int32_t(value));
      value = 8 + ((value - 8 + (task == 1 ? 1 : 23)) % 24);
    }
    example.loss_mask.assign(example.ids.size(), 1);
    out.push_back(std::move(example));
  }
  return out;
}

train::TrainOptions small_run(int64_t steps, double lr) {
  train::TrainOptions options;
  options.steps = steps;
  options.batch_size = 8;
  options.seq_len = 16;
  options.pack = false;
  options.lr = lr;
  options.weight_decay = 0;
  options.schedule = "constant";
  options.precision = "f32";
  options.progress = false;
  return options;
}

// The mean routing weight of each adapter over the tokens of `examples` (every routed projection).
std::vector<double> mean_routing(llama::LlamaForCausalLM& model, nn::RoutedLora& router,
                                 const std::vector<train::Example>& examples) {
  autograd::NoGradGuard no_grad;
  router.set_recording(true);
  for (const train::Example& example : examples)
    model.forward(Tensor::from_vector(example.ids, {1, int64_t(example.ids.size())}, DType::i32));
  const std::vector<double> weights = router.stats().mean_weights();
  router.set_recording(false);
  return weights;
}

}  // namespace

TEST_CASE("training the gates on two tasks lowers the loss and routes each task to its own adapter") {
  auto model = testing::random_llama(testing::tiny_llama_config(32), 21);
  nn::LoraConfig config;
  config.target_modules = {"all-linear"};
  config.options.rank = 4;
  config.options.alpha = 8;
  const std::vector<train::Example> task1 = task_examples(1, 64, 1), task2 = task_examples(2, 64, 2);
  for (int task : {1, 2}) {
    config.seed = uint64_t(task);
    nn::apply_lora(*model, config, task == 1 ? "up" : "down");
    train::Trainer(model, small_run(60, 2e-2), task == 1 ? task1 : task2).run();
  }
  std::vector<train::Example> mix = task1;
  mix.insert(mix.end(), task2.begin(), task2.end());
  const std::vector<train::Example> held1 = task_examples(1, 16, 11), held2 = task_examples(2, 16, 12);
  std::vector<train::Example> held = held1;
  held.insert(held.end(), held2.begin(), held2.end());

  const auto router = nn::add_lora_router(*model, {"up", "down"}, 2, 5);
  train::Trainer trainer(model, small_run(150, 1e-1), mix, held);
  const double before = trainer.validation_loss();
  model->eval();
  const std::vector<double> up_before = mean_routing(*model, *router, held1);
  model->train();
  trainer.run();
  const double after = trainer.validation_loss();
  MESSAGE("held-out loss ", before, " -> ", after);
  CHECK(after < before - 0.1);
  model->eval();
  const std::vector<double> on_task1 = mean_routing(*model, *router, held1);
  const std::vector<double> on_task2 = mean_routing(*model, *router, held2);
  MESSAGE("adapter 'up' weight on task 1: ", up_before[0], " -> ", on_task1[0], "; on task 2: ", on_task2[0]);
  // Mostly, not wholly: the first layer's q, k, v, gate and up projections see a token's own
  // embedding alone, and the numbers are the same tokens in both tasks.
  CHECK(on_task1[0] > 0.55);  // task-1 tokens mostly to adapter 1
  CHECK(on_task2[1] > 0.55);  // task-2 tokens mostly to adapter 2
  CHECK(on_task1[0] - on_task2[0] > 0.15);
  CHECK(on_task1[0] > up_before[0] + 0.05);
  // Every gate trained, nothing else.
  for (const auto& [name, parameter] : model->named_parameters())
    CHECK(parameter.requires_grad() == (name.find(".lora_router.") != std::string::npos));
}
