// The training loop's parts: schedules, clipping, AdamW's master weights, data readers,
// packing layout, the metrics plot and the progress of long work.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "helpers.h"
#include "scratch_dir.h"
#include "models/tokenizer/builder.h"
#include "train/data.h"
#include "train/loss_curve.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/schedule.h"

using namespace lamina;
namespace fs = std::filesystem;

TEST_CASE("learning-rate schedules") {
  train::Schedule cosine{train::ScheduleKind::cosine, 1.0, 10, 110, 0.1};
  CHECK(cosine.lr(0) == doctest::Approx(0.1));  // warmup ramps to the peak
  CHECK(cosine.lr(9) == doctest::Approx(1.0));
  CHECK(cosine.lr(10) == doctest::Approx(1.0));
  CHECK(cosine.lr(109) == doctest::Approx(0.1));  // ends at min_lr_ratio x peak
  CHECK(cosine.lr(60) == doctest::Approx(0.55).epsilon(0.01));  // half way: the mean of peak and floor
  train::Schedule linear{train::ScheduleKind::linear, 2.0, 0, 11, 0.0};
  CHECK(linear.lr(0) == doctest::Approx(2.0));
  CHECK(linear.lr(5) == doctest::Approx(1.0));
  CHECK(linear.lr(10) == doctest::Approx(0.0));
  train::Schedule constant{train::ScheduleKind::constant, 0.5, 2, 100, 0.1};
  CHECK(constant.lr(1) == doctest::Approx(0.5));
  CHECK(constant.lr(99) == 0.5);
}

TEST_CASE("global-norm clipping") {
  const Tensor a = Tensor::from_vector(std::vector<double>{3, 0}, {2}), b = Tensor::from_vector(std::vector<double>{4}, {1});
  a.set_grad(Tensor::from_vector(std::vector<double>{3, 0}, {2}));
  b.set_grad(Tensor::from_vector(std::vector<double>{4}, {1}));
  CHECK(train::clip_grad_norm({a, b}, 10.0) == doctest::Approx(5.0));
  CHECK(a.grad().to_vector<double>()[0] == 3.0);  // under the limit: untouched
  CHECK(train::clip_grad_norm({a, b}, 1.0) == doctest::Approx(5.0));
  CHECK(b.grad().item<double>() == doctest::Approx(0.8).epsilon(1e-5));
}

TEST_CASE("AdamW keeps f32 master weights for bf16 parameters") {
  // A step of 1e-4 on a weight of 1.0 is lost in bf16 (its spacing at 1 is 2^-7) but adds up
  // in the f32 master copy, which is rounded into the weight.
  const Tensor weight = ones({4}, DType::bf16);
  weight.set_requires_grad(true);
  train::AdamWOptions options;
  train::AdamW optimizer({{"w", weight}}, options);
  for (int step = 0; step < 100; ++step) {
    weight.set_grad(full({4}, 1.0, DType::bf16));
    optimizer.step(1e-4);  // Adam's first steps move by ~lr each
  }
  const std::vector<nn::NamedTensor> state = optimizer.state_tensors();
  REQUIRE(state.size() == 3);
  CHECK(state[2].first == "w.master");
  CHECK(state[2].second.to_vector<double>()[0] == doctest::Approx(1.0 - 100 * 1e-4).epsilon(1e-3));
  CHECK(weight.to_vector<double>()[0] == doctest::Approx(0.99).epsilon(0.005));  // moved, in bf16 steps
  // Norms and other vectors do not decay by default.
  CHECK(train::decays_by_default("model.norm.weight", ones({4})) == false);
  CHECK(train::decays_by_default("model.layers.0.mlp.up_proj.weight", ones({4, 4})) == true);
}

TEST_CASE("JSONL readers: text, prompt/completion and chat, with line-numbered errors") {
  const tokenizer::Tokenizer tok = tokenizer::byte_level_tokenizer();
  const lamina::testing::ScratchDir scratch("data-jsonl");  // its own folder: the ASan twin runs beside
  const fs::path path = scratch.path / "lamina-test-data.jsonl";
  std::ofstream(path) << R"({"text": "ab"})" << "\n\n"
                      << R"({"prompt": "Q", "completion": "A"})" << "\n"
                      << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})"
                      << "\n";
  const std::vector<train::Example> examples = train::read_jsonl(path.string(), tok);
  REQUIRE(examples.size() == 3);
  const int32_t bos = *tok.bos_id(), eos = *tok.added_token_id("<|end_of_text|>");
  CHECK(examples[0].ids == std::vector<int32_t>{bos, 'a', 'b', eos});
  CHECK(examples[0].loss_mask == std::vector<uint8_t>{0, 1, 1, 1});
  CHECK(examples[1].ids == std::vector<int32_t>{bos, 'Q', 'A', eos});
  CHECK(examples[1].loss_mask == std::vector<uint8_t>{0, 0, 1, 1});
  // Chat: only the assistant's answer and its <|eot_id|> are learned.
  std::string learned;
  for (size_t i = 0; i < examples[2].ids.size(); ++i)
    if (examples[2].loss_mask[i]) learned += std::string(tok.token_bytes(examples[2].ids[i]));
  CHECK(learned == "yo<|eot_id|>");

  std::ofstream(path) << R"({"text": "ok"})" << "\n" << R"({"text": 5})" << "\n" << "{not json" << "\n" << R"({"other": 1})" << "\n";
  CHECK_THROWS_WITH_AS(train::read_jsonl(path.string(), tok), doctest::Contains("lamina-test-data.jsonl:2: \"text\": expected a string"), Error);
  train::JsonlOptions lenient;
  lenient.skip_malformed = true;
  train::JsonlStats stats;
  CHECK(train::read_jsonl(path.string(), tok, lenient, &stats).size() == 1);
  CHECK(stats.skipped == 3);
  CHECK(stats.first_skipped.find(":2:") != std::string::npos);
  fs::remove(path);
}

TEST_CASE("token shards round trip and are cut into examples") {
  const lamina::testing::ScratchDir scratch("tokens-bin");  // its own folder: the ASan twin runs beside
  const fs::path path = scratch.path / "lamina-test-tokens.bin";
  std::vector<int32_t> tokens;
  for (int i = 0; i < 25; ++i) tokens.push_back(i * 1000);
  train::write_token_shard(path.string(), tokens, 4);
  const std::vector<train::Example> pieces = train::read_token_shard(path.string(), 10);
  REQUIRE(pieces.size() == 3);
  CHECK(pieces[0].ids.size() == 10);
  CHECK(pieces[2].ids == std::vector<int32_t>{20000, 21000, 22000, 23000, 24000});
  CHECK_THROWS_WITH_AS(train::write_token_shard(path.string(), {70000}, 2), doctest::Contains("does not fit in 2 bytes"), Error);
  std::ofstream(path, std::ios::binary) << "garbage";
  CHECK_THROWS_WITH_AS(train::read_token_shard(path.string(), 10), doctest::Contains("not a lamina token shard"), Error);
  fs::remove(path);
}

TEST_CASE("packing: positions restart and each example sees only itself") {
  train::Example a{{1, 5, 6}, {0, 1, 1}}, b{{1, 7, 8, 9}, {0, 1, 1, 1}};
  const train::Batch batch = train::make_batch({{&a, &b}}, 8, 0);
  CHECK(batch.ids.to_vector<int64_t>() == std::vector<int64_t>{1, 5, 1, 7, 8, 0, 0, 0});
  CHECK(batch.targets.to_vector<int64_t>() == std::vector<int64_t>{5, 6, 7, 8, 9, -100, -100, -100});
  CHECK(batch.positions.to_vector<int64_t>() == std::vector<int64_t>{0, 1, 0, 1, 2, 0, 0, 0});
  CHECK(batch.target_tokens == 5);
  // a fills slots 0-1, b slots 2-4, padding the rest: attention stays inside each.
  CHECK(batch.document_ids.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 1, 1, 1, -1, -1, -1});
  // The loader fills rows greedily and cycles epochs with a reshuffle from the seed.
  std::vector<train::Example> data(5, a);
  train::DataLoader loader(data, {2, 4, true, true, 7, 0});
  CHECK(loader.next().target_tokens == 8);  // two examples per row, two rows
  train::DataLoader again(data, {2, 4, true, true, 7, 0});
  again.restore(loader.cursor());
  CHECK(again.next().ids.to_vector<int64_t>() == loader.next().ids.to_vector<int64_t>());
}

TEST_CASE("MFU peaks: bf16 dense peaks of known GPUs by driver name, none otherwise") {
  CHECK(train::peak_flops_per_s("NVIDIA H100 80GB HBM3", DType::bf16) == 989.4e12);
  CHECK(train::peak_flops_per_s("NVIDIA H100 PCIe", DType::bf16) == 756.0e12);
  CHECK(train::peak_flops_per_s("NVIDIA H200", DType::bf16) == 989.4e12);
  CHECK(train::peak_flops_per_s("NVIDIA A100-SXM4-80GB", DType::bf16) == 312.0e12);
  CHECK_FALSE(train::peak_flops_per_s("NVIDIA H100 80GB HBM3", DType::f32).has_value());
  CHECK_FALSE(train::peak_flops_per_s("cpu", DType::bf16).has_value());
  CHECK_FALSE(train::peak_flops_per_s("NVIDIA GeForce RTX 4090", DType::bf16).has_value());
}

TEST_CASE("the loss curve plot draws train and validation losses") {
  std::vector<json::Value> lines;
  for (int step = 1; step <= 5; ++step) {
    json::Value line = json::Object{};
    line.set("step", step);
    line.set("loss", 3.0 / step);
    if (step % 2 == 0) line.set("val_loss", 3.5 / step);
    lines.push_back(line);
  }
  const std::string svg = train::loss_curve_svg(lines, "run <1>");
  CHECK(svg.find("<svg") == 0);
  CHECK(svg.find("<polyline") != std::string::npos);
  CHECK(svg.find("run &lt;1&gt;") != std::string::npos);
  size_t circles = 0;
  for (size_t at = svg.find("<circle"); at != std::string::npos; at = svg.find("<circle", at + 1)) ++circles;
  CHECK(circles == 2);
  CHECK_THROWS_WITH_AS(train::loss_curve_svg({}, "empty"), doctest::Contains("no \"loss\""), Error);
}

TEST_CASE("long work shows its progress on stderr, after a delay and only when enabled") {
  const fs::path captured = fs::temp_directory_path() / ("lamina-progress-" + std::to_string(::getpid()));
  const auto stderr_of = [&](bool enabled, double delay_seconds) {
    std::fflush(stderr);
    const int saved = ::dup(2);
    std::FILE* file = std::fopen(captured.c_str(), "w");
    REQUIRE(file != nullptr);
    ::dup2(::fileno(file), 2);
    train::TaskProgress progress(enabled, "validation batch", 4, delay_seconds);
    for (int64_t done = 1; done <= 4; ++done) progress.update(done);
    progress.finish();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::fclose(file);
    std::ifstream in(captured);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  // Not a terminal here: a line for each tenth of the work that is reached.
  const std::string shown = stderr_of(true, 0.0);
  CHECK(shown.find("validation batch 1/4") != std::string::npos);
  CHECK(shown.find("validation batch 4/4") != std::string::npos);
  CHECK(stderr_of(false, 0.0).empty());    // --quiet
  CHECK(stderr_of(true, 3600.0).empty());  // short work says nothing
  fs::remove(captured);
}
