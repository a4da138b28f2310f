// The training loop: it learns, accumulation and packing are exact, masks hold, and runs
// resume bit-identically from checkpoints that survive failed writes.
#include <filesystem>
#include <fstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "scratch_dir.h"
#include "models/tokenizer/builder.h"
#include "models/io/safetensors.h"
#include "ops/cpu/gemm_bf16.h"
#include "train/checkpoint.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

train::TrainOptions quiet_options() {
  train::TrainOptions options;
  options.precision = "f32";  // the exactness checks below are f32's, on every CPU
  options.progress = false;
  options.lr = 3e-3;
  options.warmup_steps = 0;
  options.weight_decay = 0.0;
  options.seq_len = 16;
  return options;
}

std::vector<std::vector<float>> parameter_values(const nn::Module& model) {
  std::vector<std::vector<float>> out;
  for (const Tensor& p : model.parameters()) out.push_back(p.to_vector<float>());
  return out;
}

}  // namespace

TEST_CASE("a tiny model overfits a fixed batch") {
  auto model = tiny_model(1);
  train::TrainOptions options = quiet_options();
  options.steps = 150;
  options.batch_size = 4;
  options.pack = false;
  options.schedule = "constant";
  options.lr = 1e-2;
  std::vector<double> losses;
  train::Trainer trainer(model, options, examples(4, 2));
  trainer.on_metrics = [&](const json::Value& line) { losses.push_back(line.at("loss").as_double()); };
  trainer.run();
  REQUIRE(losses.size() == 150);
  MESSAGE("loss " << losses.front() << " -> " << losses.back());
  CHECK(losses.front() > 3.0);  // about ln(48) at the start
  CHECK(losses.back() < 0.05);
}

TEST_CASE("k micro-batches of b rows equal one batch of k*b rows") {
  const std::vector<train::Example> data = examples(8, 3);  // uneven target counts per example
  std::vector<std::vector<float>> results[2];
  for (int accumulate = 0; accumulate < 2; ++accumulate) {
    auto model = tiny_model(4);
    train::TrainOptions options = quiet_options();
    options.steps = 2;
    options.batch_size = 4;
    options.micro_batch_size = accumulate ? 1 : 4;
    options.pack = false;
    options.clip = 0.0;
    train::Trainer trainer(model, options, data);
    trainer.run();
    results[accumulate] = parameter_values(*model);
  }
  for (size_t i = 0; i < results[0].size(); ++i)
    for (size_t j = 0; j < results[0][i].size(); ++j) REQUIRE(results[0][i][j] == doctest::Approx(results[1][i][j]).epsilon(1e-4));
}

TEST_CASE("masked prompt and padding positions contribute exactly zero gradient") {
  auto model = tiny_model(5);
  train::Example example = examples(1, 6)[0];
  std::vector<const train::Example*> row{&example};
  const train::Batch batch = train::make_batch({row}, 16, 0);
  const train::Batch other_padding = train::make_batch({row}, 16, 47);
  // Targets exist only where the mask says so.
  const std::vector<int64_t> targets = batch.targets.to_vector<int64_t>();
  for (size_t t = 0; t < targets.size(); ++t) {
    const bool predicted = t + 1 < example.ids.size() && example.loss_mask[t + 1];
    CHECK((targets[t] != -100) == predicted);
  }
  auto gradients = [&](const train::Batch& b) {
    for (const Tensor& p : model->parameters()) p.set_grad(Tensor());
    llama::ForwardOptions forward;
    forward.positions = b.positions;
    Tensor logits = model->forward(b.ids, forward);
    logits.retain_grad();
    cross_entropy_sum(logits, b.targets).loss_sum.backward();
    std::vector<std::vector<float>> out{logits.grad().to_vector<float>()};
    for (const Tensor& p : model->parameters()) out.push_back(p.grad().to_vector<float>());
    return out;
  };
  const auto with_zeros = gradients(batch), with_other_padding = gradients(other_padding);
  CHECK(with_zeros == with_other_padding);  // padding ids change nothing at all
  // The logits gradient is zero at every unmasked-out position.
  const std::vector<float>& logit_grad = with_zeros[0];
  for (size_t t = 0; t < targets.size(); ++t) {
    if (targets[t] != -100) continue;
    for (int64_t v = 0; v < 48; ++v) REQUIRE(logit_grad[t * 48 + size_t(v)] == 0.0f);
  }
}

TEST_CASE("a packed row gives the per-example losses and gradients of running them one by one") {
  auto model = tiny_model(7, DType::f64);
  const std::vector<train::Example> data = examples(3, 8);
  auto loss_and_grads = [&](const std::vector<std::vector<const train::Example*>>& rows) {
    for (const Tensor& p : model->parameters()) p.set_grad(Tensor());
    double total = 0;
    for (const auto& row : rows) {
      const train::Batch batch = train::make_batch({row}, 32, 0);
      llama::ForwardOptions forward;
      forward.positions = batch.positions;
      forward.document_ids = batch.document_ids;
      const CrossEntropySum loss = cross_entropy_sum(model->forward(batch.ids, forward), batch.targets);
      loss.loss_sum.backward();
      total += loss.loss_sum.item<double>();
    }
    std::vector<std::vector<double>> grads;
    for (const Tensor& p : model->parameters()) grads.push_back(p.grad().to_vector<double>());
    return std::make_pair(total, grads);
  };
  const auto packed = loss_and_grads({{&data[0], &data[1], &data[2]}});
  const auto separate = loss_and_grads({{&data[0]}, {&data[1]}, {&data[2]}});
  CHECK(packed.first == doctest::Approx(separate.first).epsilon(1e-12));
  for (size_t i = 0; i < packed.second.size(); ++i)
    for (size_t j = 0; j < packed.second[i].size(); ++j)
      REQUIRE(packed.second[i][j] == doctest::Approx(separate.second[i][j]).epsilon(1e-9).scale(1e-12));
}

TEST_CASE("20 steps straight equal 10 steps, a resume, and 10 more") {
  const std::vector<train::Example> data = examples(24, 9);
  auto options_for = [](const fs::path& dir, int64_t steps) {
    train::TrainOptions options = quiet_options();
    options.steps = steps;
    options.batch_size = 4;
    options.micro_batch_size = 2;
    options.warmup_steps = 3;
    options.weight_decay = 0.1;
    options.output_dir = dir.string();
    options.save_every = 5;
    return options;
  };
  auto losses_of = [](const fs::path& metrics) {
    std::vector<std::pair<int64_t, double>> out;
    for (const json::Value& line : train::read_metrics(metrics.string()))
      out.emplace_back(line.at("step").as_int64(), line.at("loss").as_double());
    return out;
  };
  ScratchDir straight("train-straight"), stopped("train-stopped");
  train::Trainer(tiny_model(10), options_for(straight.path, 20), data).run();
  // A crash after step 12 (the last checkpoint is step 10), then a resume of the same run.
  {
    train::Trainer crashing(tiny_model(10), options_for(stopped.path, 20), data);
    crashing.on_metrics = [](const json::Value& line) {
      if (line.at("step").as_int64() == 12) throw Error("killed (simulated)");
    };
    CHECK_THROWS_WITH_AS(crashing.run(), doctest::Contains("killed"), Error);
  }
  CHECK(train::latest_checkpoint(stopped.path.string()).value().find("step-00000010") != std::string::npos);
  train::Trainer(tiny_model(99), options_for(stopped.path, 20), data).run({train::ExistingRun::resume});  // weights come from the checkpoint
  const auto expected = losses_of(straight.path / "metrics.jsonl"), resumed = losses_of(stopped.path / "metrics.jsonl");
  REQUIRE(expected.size() == 20);
  CHECK(resumed == expected);  // bit-identical losses, and no duplicated steps 11-12
  CHECK(train::latest_checkpoint(stopped.path.string()).value().find("step-00000020") != std::string::npos);
}

TEST_CASE("a checkpoint write that fails leaves the previous checkpoint loadable") {
  ScratchDir dir("train-fault");
  train::TrainOptions options = quiet_options();
  options.steps = 4;
  options.batch_size = 2;
  options.save_every = 2;
  options.output_dir = dir.path.string();
  auto model = tiny_model(11);
  train::Trainer trainer(model, options, examples(6, 12));
  trainer.checkpoint_fault = [&](const std::string& stage) {
    if (trainer.step() == 4 && stage == "optimizer") throw Error("disk full (simulated)");
  };
  CHECK_THROWS_WITH_AS(trainer.run(), doctest::Contains("disk full"), Error);
  const std::optional<std::string> latest = train::latest_checkpoint(dir.path.string());
  REQUIRE(latest.has_value());
  CHECK(latest->find("step-00000002") != std::string::npos);
  for (const auto& entry : fs::directory_iterator(dir.path / "checkpoints"))
    CHECK(entry.path().filename().string().find("partial") == std::string::npos);  // nothing half-written
  auto restored = tiny_model(12);
  train::AdamW optimizer(restored->named_parameters(), {});
  const train::CheckpointContents contents = train::load_training_checkpoint(*latest, *restored, optimizer);
  CHECK(contents.step == 2);
  CHECK(optimizer.steps() == 2);
}

TEST_CASE("mixed precision: bf16 weights and activations on f32 master weights learn and resume exactly") {
  const std::vector<train::Example> data = examples(4, 2);
  auto options_for = [](const std::string& precision, const fs::path& dir, int64_t steps) {
    train::TrainOptions options = quiet_options();
    options.steps = steps;
    options.batch_size = 4;
    options.pack = false;
    options.schedule = "constant";
    options.lr = 1e-2;
    options.precision = precision;
    options.output_dir = dir.string();
    options.save_every = 20;
    options.keep_checkpoints = 5;
    return options;
  };
  auto losses_of = [](const fs::path& metrics) {
    std::vector<double> out;
    for (const json::Value& line : train::read_metrics(metrics.string())) out.push_back(line.at("loss").as_double());
    return out;
  };
  ScratchDir f32_dir("train-f32"), bf16_dir("train-bf16"), resumed_dir("train-bf16-resumed");
  train::Trainer(tiny_model(1), options_for("f32", f32_dir.path, 100), data).run();
  auto model = tiny_model(1);
  const Tensor handle = model->parameter("model.norm.weight");
  train::Trainer(model, options_for("bf16", bf16_dir.path, 100), data).run();
  CHECK(model->dtype() == DType::bf16);
  CHECK(handle.dtype() == DType::bf16);  // converted in place: handles held elsewhere see it
  for (const Tensor& p : model->parameters()) CHECK(p.dtype() == DType::bf16);

  const std::vector<double> f32 = losses_of(f32_dir.path / "metrics.jsonl"), bf16 = losses_of(bf16_dir.path / "metrics.jsonl");
  REQUIRE(bf16.size() == 100);
  MESSAGE("bf16 loss " << bf16.front() << " -> " << bf16.back() << " (f32 " << f32.front() << " -> " << f32.back() << ")");
  CHECK(std::abs(bf16.front() - f32.front()) < 0.02);  // the same model, rounded to bf16
  CHECK(bf16.back() < 0.1);                            // it learns as f32 does
  // The checkpoint keeps the f32 master copy beside the bf16 weights ...
  const std::string checkpoint = train::latest_checkpoint(bf16_dir.path.string()).value();
  const safetensors::File optimizer_state = safetensors::File::open(checkpoint + "/optimizer.safetensors");
  const safetensors::TensorInfo* master = optimizer_state.find("model.norm.weight.master");
  REQUIRE(master != nullptr);
  CHECK(master->dtype == DType::f32);
  // ... so a run resumed from step 60 repeats the straight run's losses bit for bit (resuming from
  // the bf16 weights alone would drift: every update smaller than a bf16 step would be lost).
  fs::create_directories(resumed_dir.path / "checkpoints");
  const fs::path step60 = fs::path(checkpoint).parent_path() / "step-00000060";
  REQUIRE(fs::exists(step60));
  fs::copy(step60, resumed_dir.path / "checkpoints" / "step-00000060", fs::copy_options::recursive);
  std::vector<double> resumed;
  train::Trainer again(tiny_model(5), options_for("bf16", resumed_dir.path, 100), data);
  again.on_metrics = [&](const json::Value& line) { resumed.push_back(line.at("loss").as_double()); };
  again.run({train::ExistingRun::resume});
  REQUIRE(resumed.size() == 40);
  CHECK(std::vector<double>(bf16.begin() + 60, bf16.end()) == resumed);
}

TEST_CASE("training on a device that is not there fails before the first step, naming it") {
  train::TrainOptions options = quiet_options();
  options.steps = 1;
  options.batch_size = 2;
  options.device = "cuda:7";
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options, examples(2, 1)), doctest::Contains("cuda:7"), Error);
  options.device = "gpu";
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options, examples(2, 1)),
                       doctest::Contains("unknown device 'gpu' (expected cpu, cuda or cuda:N)"), Error);
  options.device = "cpu";
  options.precision = "fp8";
  CHECK_THROWS_WITH_AS(options.validate(), doctest::Contains("precision must be auto, f32 or bf16, got 'fp8'"), Error);
  options.precision = "auto";
  // auto on the CPU: bf16 where the products have a bf16 fast path (AMX, or AVX-512 BF16 faster
  // than f32 FMA), f32 elsewhere.
  CHECK(options.compute_dtype() == (ops::cpu::gemm_bf16_has_fast_path() ? DType::bf16 : DType::f32));
  options.device = "cuda:1";
  CHECK(options.resolved_device() == Device::cuda(1));
  CHECK(options.compute_dtype() == DType::bf16);  // auto: mixed precision on GPUs
}

TEST_CASE("training options: JSON config files and validation") {
  const json::Value config = json::parse(R"({"lr": 0.01, "micro-batch-size": 2, "schedule": "linear", "pack": false})");
  const train::TrainOptions options = train::TrainOptions::from_json(config, {});
  CHECK(options.lr == 0.01);
  CHECK(options.micro_batch_size == 2);
  CHECK_FALSE(options.pack);
  CHECK_THROWS_WITH_AS(train::TrainOptions::from_json(json::parse(R"({"learning_rate": 1})"), {}),
                       doctest::Contains("unknown key \"learning_rate\""), Error);
  train::TrainOptions bad;
  bad.batch_size = 6;
  bad.micro_batch_size = 4;
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("not a multiple of the micro-batch size 4"), Error);
  bad = {};
  bad.schedule = "cosin";
  CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains("unknown schedule 'cosin'"), Error);
}
