// The model code and the training loop on the GPU, unchanged: a trainer with device "cuda"
// follows the same run on the CPU, bf16 mixed precision learns there, and greedy generation
// picks the CPU's tokens.
//
// Tolerances: f32 training losses agree to 1e-4 relative over 5 steps (kernels differ from the
// CPU's in summation order only); bf16 runs are judged by what they reach, not step by step.
#include "cuda_cases.h"
#include "models/generate/generate.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

namespace {

train::TrainOptions options_on(const std::string& device, const std::string& precision, int64_t steps) {
  train::TrainOptions options;
  options.progress = false;
  options.steps = steps;
  options.batch_size = 4;
  options.micro_batch_size = 2;
  options.seq_len = 16;
  options.lr = 1e-2;
  options.schedule = "constant";
  options.device = device;
  options.precision = precision;
  return options;
}

std::vector<double> train_losses(std::shared_ptr<llama::LlamaForCausalLM> model, const train::TrainOptions& options,
                                 const std::vector<train::Example>& data) {
  std::vector<double> losses;
  train::Trainer trainer(std::move(model), options, data);
  trainer.on_metrics = [&](const json::Value& line) { losses.push_back(line.at("loss").as_double()); };
  trainer.run();
  return losses;
}

}  // namespace

TEST_CASE("a trainer on the GPU follows the same f32 run on the CPU") {
  const std::vector<train::Example> data = examples(16, 3);  // packed rows with per-document masks
  auto cpu_model = tiny_model(4), gpu_model = tiny_model(4);
  const std::vector<double> cpu = train_losses(cpu_model, options_on("cpu", "f32", 5), data);
  const std::vector<double> gpu = train_losses(gpu_model, options_on("cuda", "f32", 5), data);
  REQUIRE(gpu.size() == 5);
  CHECK(gpu_model->device() == kCuda);
  for (size_t i = 0; i < cpu.size(); ++i) CHECK(gpu[i] == doctest::Approx(cpu[i]).epsilon(1e-4));
  const Tensor on_gpu = gpu_model->parameter("model.layers.1.mlp.down_proj.weight");
  CHECK_CLOSE(to_cpu(on_gpu), cpu_model->parameter("model.layers.1.mlp.down_proj.weight"), (Tolerance{1e-4, 1e-3}));
}

TEST_CASE("bf16 mixed precision on the GPU learns, with an MFU-ready metrics line") {
  auto model = tiny_model(1);
  train::TrainOptions options = options_on("cuda", "auto", 100);  // auto: bf16 on a GPU
  options.micro_batch_size = 0;
  options.pack = false;
  std::vector<json::Value> lines;
  train::Trainer trainer(model, options, examples(4, 2));
  trainer.on_metrics = [&](const json::Value& line) { lines.push_back(line); };
  trainer.run();
  CHECK(model->dtype() == DType::bf16);
  REQUIRE(lines.size() == 100);
  const double first = lines.front().at("loss").as_double(), last = lines.back().at("loss").as_double();
  MESSAGE("bf16 on the GPU: loss " << first << " -> " << last);
  CHECK(first > 3.0);
  CHECK(last < 0.1);
  CHECK(lines.back().at("peak_tensor_bytes").as_int64() > 0);
}

TEST_CASE("greedy generation on the GPU picks the CPU's tokens, left-padded batch included") {
  auto cpu_model = tiny_model(7), gpu_model = tiny_model(7);
  gpu_model->to(kCuda, DType::f32);
  generate::GenerateOptions options;
  options.max_new_tokens = 12;
  options.use_config_stop_tokens = false;
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9, 11}, {1, 30}};
  const generate::GenerateResult cpu = generate::generate(*cpu_model, prompts, options);
  const generate::GenerateResult gpu = generate::generate(*gpu_model, prompts, options);
  CHECK(gpu.tokens == cpu.tokens);
}
