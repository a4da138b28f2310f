// What a run finds in its output folder and does with it: checkpoints ordered by step and
// complete only with their marker, debris of killed runs removed, resume falling back past a
// checkpoint that does not load, refusing changed options; and the failures that must be
// errors: options out of range, a step too large for the machine, a full disk under metrics.jsonl.
#include <sys/file.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "scratch_dir.h"
#include "train/checkpoint.h"
#include "train/run_folder.h"
#include "train/tiny_training.h"
#include "tiny_run.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

train::TrainOptions options_in(const fs::path& dir, int64_t steps) { return tiny_run_options(dir, steps, 2); }

std::vector<double> losses_of(const fs::path& metrics) {
  std::vector<double> out;
  for (const json::Value& line : train::read_metrics(metrics.string())) out.push_back(line.at("loss").as_double());
  return out;
}

std::string name_of(const std::optional<std::string>& path) {
  return path ? fs::path(*path).filename().string() : "none";
}

}  // namespace

TEST_CASE("checkpoints are ordered by their step number, and only folders with COMPLETE count") {
  ScratchDir dir("faults-order");
  train::Trainer(tiny_model(1), options_in(dir.path, 10), examples(6, 2)).run();
  const fs::path checkpoints = dir.path / "checkpoints";
  // By name "step-9" sorts after "step-00000010"; by step it is older.
  fs::copy(checkpoints / "step-00000002", checkpoints / "step-9", fs::copy_options::recursive);
  CHECK(name_of(train::latest_checkpoint(dir.path.string())) == "step-00000010");
  // A checkpoint that lost its marker (pruning killed part-way, in older versions) is not one,
  // even with trainer.json in place; the next run removes it.
  fs::remove(checkpoints / "step-00000010" / "COMPLETE");
  fs::remove(checkpoints / "step-00000010" / "model.safetensors");
  CHECK(name_of(train::latest_checkpoint(dir.path.string())) == "step-9");
  const std::vector<std::string> newest_first = train::complete_checkpoints(dir.path.string());
  REQUIRE(newest_first.size() == 5);
  CHECK(fs::path(newest_first[1]).filename() == "step-00000008");
  CHECK(fs::path(newest_first[4]).filename() == "step-00000002");
  const std::vector<std::string> removed = train::remove_incomplete_checkpoints(dir.path.string());
  CHECK(removed == std::vector<std::string>{"checkpoints/step-00000010 (no COMPLETE marker)"});
  CHECK_FALSE(fs::exists(checkpoints / "step-00000010"));
}

TEST_CASE("a resume removes killed runs' debris and falls back past a checkpoint that does not load") {
  ScratchDir straight("faults-straight"), dir("faults-fallback");
  const std::vector<train::Example> data = examples(8, 3);
  train::Trainer(tiny_model(4), options_in(straight.path, 6), data).run();
  train::Trainer(tiny_model(4), options_in(dir.path, 4), data).run();
  const fs::path checkpoints = dir.path / "checkpoints";
  // What kill -9 leaves: a partial checkpoint (of any PID: the folder lock says no live run
  // writes here), a checkpoint half pruned, a final model never swapped in.
  fs::create_directories(checkpoints / "step-00000006.partial-1");
  std::ofstream(checkpoints / "step-00000006.partial-1" / "model.safetensors") << "half";
  fs::copy(checkpoints / "step-00000002", checkpoints / "step-00000002.deleting-77", fs::copy_options::recursive);
  fs::create_directories(dir.path / "model.partial-5");
  std::ofstream(dir.path / "model.partial-5" / "config.json") << "{}";
  // The newest complete checkpoint is damaged: its weights cut short.
  fs::resize_file(checkpoints / "step-00000004" / "model.safetensors", 100);
  std::vector<double> resumed;
  train::Trainer again(tiny_model(99), options_in(dir.path, 6), data);
  again.on_metrics = [&](const json::Value& line) { resumed.push_back(line.at("loss").as_double()); };
  again.run({train::ExistingRun::resume});
  const std::vector<double> expected = losses_of(straight.path / "metrics.jsonl");
  REQUIRE(resumed.size() == 4);  // steps 3-6: from step 2, the newest checkpoint that loads
  CHECK(std::vector<double>(expected.begin() + 2, expected.end()) == resumed);
  CHECK(losses_of(dir.path / "metrics.jsonl") == expected);
  for (const auto& entry : fs::directory_iterator(checkpoints)) {
    INFO(entry.path());
    CHECK(fs::exists(entry.path() / "COMPLETE"));
    CHECK(entry.path().filename().string().find('.') == std::string::npos);
  }
  CHECK_FALSE(fs::exists(dir.path / "model.partial-5"));
  // The damaged step 4 was written again.
  CHECK(fs::file_size(checkpoints / "step-00000004" / "model.safetensors") ==
        fs::file_size(straight.path / "checkpoints" / "step-00000004" / "model.safetensors"));
  // When none loads, that is an error, not a silent fresh start.
  for (const std::string& checkpoint : train::complete_checkpoints(dir.path.string()))
    fs::resize_file(fs::path(checkpoint) / "optimizer.safetensors", 10);
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(4), options_in(dir.path, 6), data).run({train::ExistingRun::resume}),
                       doctest::Contains("none of the 3 complete checkpoints"), Error);
}

TEST_CASE("a run refuses a folder holding another run, and overwriting never removes other files") {
  ScratchDir dir("faults-refuse");
  const std::vector<train::Example> data = examples(6, 5);
  train::Trainer(tiny_model(1), options_in(dir.path, 2), data).run();
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options_in(dir.path, 4), data).run(),
                       doctest::Contains("already holds a training run (checkpoints/, metrics.jsonl, model/)"), Error);
  CHECK(fs::exists(dir.path / "checkpoints" / "step-00000002" / "COMPLETE"));  // untouched
  fs::create_directories(dir.path / "checkpoints" / "mine");
  CHECK_THROWS_WITH_AS(train::check_output_folder(dir.path.string(), train::ExistingRun::overwrite),
                       doctest::Contains("holds checkpoints/mine, which lamina did not write"), Error);
  fs::remove(dir.path / "checkpoints" / "mine");
  train::Trainer(tiny_model(1), options_in(dir.path, 4), data).run({train::ExistingRun::overwrite});
  CHECK(losses_of(dir.path / "metrics.jsonl").size() == 4);
  // Two runs into one folder at once: the second is refused while the first holds the lock.
  {
    const train::OutputFolderLock held(dir.path.string());
    CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options_in(dir.path, 4), data).run({train::ExistingRun::resume}),
                         doctest::Contains("is in use: another lamina run is training into it"), Error);
  }
  train::Trainer(tiny_model(1), options_in(dir.path, 4), data).run({train::ExistingRun::resume});  // lock released
}

TEST_CASE("resume refuses options and data that break exactness, naming old and new values") {
  ScratchDir dir("faults-changes");
  const std::vector<train::Example> data = examples(6, 6);
  train::Trainer(tiny_model(1), options_in(dir.path, 2), data).run();
  train::TrainOptions changed = options_in(dir.path, 4);
  changed.lr = 1e-3;
  changed.clip = 0.5;
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), changed, data).run({train::ExistingRun::resume}),
                       doctest::Contains("lr: 0.003 -> 0.001\n  clip: 1.0 -> 0.5"), Error);
  std::vector<train::Example> other = data;
  other[3].loss_mask[3] = 1 - other[3].loss_mask[3];  // one mask bit differs
  CHECK(train::fingerprint(other) != train::fingerprint(data));
  CHECK(train::fingerprint(other).examples == 6);
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options_in(dir.path, 4), other).run({train::ExistingRun::resume}),
                       doctest::Contains("training data: 6 examples"), Error);
  train::Trainer(tiny_model(1), changed, other).run({train::ExistingRun::resume, true});
  CHECK(losses_of(dir.path / "metrics.jsonl").size() == 4);
  // A checkpoint past the steps asked for is not silently "finished".
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options_in(dir.path, 3), data).run({train::ExistingRun::resume, true}),
                       doctest::Contains("it is at step 4, beyond --steps 3"), Error);
}

TEST_CASE("which option changes break a resumed run's exactness") {
  train::TrainOptions saved;
  const auto keys = [&](const train::TrainOptions& now) {
    std::vector<std::string> out;
    for (const train::OptionChange& change : train::exactness_breaking_changes(saved, now)) out.push_back(change.key);
    return out;
  };
  train::TrainOptions now = saved;
  now.eval_every = 5;
  now.save_every = 7;
  now.keep_checkpoints = 9;
  now.gradient_checkpointing = true;
  now.precision = dtype_name(saved.compute_dtype());  // what auto resolves to here: no change
  CHECK(keys(now).empty());
  now.steps = saved.steps + 10;  // the cosine decay stretches
  CHECK(keys(now) == std::vector<std::string>{"steps"});
  saved.schedule = now.schedule = "constant";
  CHECK(keys(now).empty());
  now.micro_batch_size = saved.batch_size;  // the same as 0
  CHECK(keys(now).empty());
  now.micro_batch_size = 2;
  now.seed = 1;
  now.beta2 = 0.99;
  now.precision = saved.compute_dtype() == DType::bf16 ? "f32" : "bf16";  // the other one
  now.device = "cuda:1";
  CHECK(keys(now) == std::vector<std::string>{"micro-batch-size", "seed", "beta2", "precision", "device"});
  saved.device = "cuda:0";
  saved.precision = now.precision;
  CHECK(keys(now) == std::vector<std::string>{"micro-batch-size", "seed", "beta2"});
}

TEST_CASE("a fresh run that fails in its first step leaves no metrics.jsonl and no folder behind") {
  ScratchDir dir("faults-first-step");
  fs::remove(dir.path);  // the run is to create the folder itself
  std::vector<train::Example> data = examples(4, 7);
  data[0].ids[1] = 100;  // beyond the model's 48 ids: the embedding refuses it in step 1
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options_in(dir.path, 3), data).run(),
                       doctest::Contains("id 100"), Error);
  CHECK_FALSE(fs::exists(dir.path));  // neither an empty metrics.jsonl nor the folder it created
  // A folder that was there before stays, empty as it was.
  fs::create_directories(dir.path);
  CHECK_THROWS_AS(train::Trainer(tiny_model(1), options_in(dir.path, 3), data).run(), Error);
  CHECK(fs::is_directory(dir.path));
  CHECK(fs::is_empty(dir.path));
}

TEST_CASE("every option's range is checked, whether it came from a flag or a JSON file") {
  const auto from = [](const std::string& text) { return train::TrainOptions::from_json(json::parse(text), {}); };
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"lr": 1e308})", "lr (--lr) must be a finite number in [1e-12, 10], got 1e+308"},
      {R"({"eps": 0})", "eps (--eps) must be a finite number in [1e-30, 1]"},
      {R"({"beta1": 1})", "beta1 (--beta1) must be a finite number in [0, 0.999999]"},
      {R"({"clip": -1})", "clip (--clip)"},
      {R"({"weight-decay": 1e9})", "weight-decay (--weight-decay)"},
      {R"({"min-lr-ratio": 2})", "min-lr-ratio (--min-lr-ratio)"},
      {R"({"steps": -1})", "steps (--steps) must be in [0, 1099511627776], got -1"},
      {R"({"seq-len": 1})", "seq-len (--seq-len) must be in [2, "},
      {R"({"micro-batch-size": 16})", "micro-batch-size (--micro-batch-size) must be in [0, 8], got 16"},
      {R"({"keep-checkpoints": 0})", "keep-checkpoints (--keep-checkpoints) must be in [1, "},
      {R"({"warmup-steps": 2000000000000})", "warmup-steps (--warmup-steps)"},
  };
  for (const auto& [text, message] : bad) {
    INFO(text);
    CHECK_THROWS_WITH_AS(from(text).validate(), doctest::Contains(message.c_str()), Error);
  }
  // The seed's whole 64 bits: a JSON number up to 2^63 - 1, digits in a string above.
  CHECK(from(R"({"seed": "18446744073709551615"})").seed == UINT64_MAX);
  CHECK(from(R"({"seed": 9223372036854775807})").seed == uint64_t(INT64_MAX));
  train::TrainOptions big;
  big.seed = UINT64_MAX - 1;
  CHECK(train::TrainOptions::from_json(big.to_json(), {}).seed == UINT64_MAX - 1);
  CHECK_THROWS_WITH_AS(from(R"({"seed": 18446744073709551615})"), doctest::Contains("write it as a string"), Error);
  CHECK_THROWS_WITH_AS(from(R"({"seed": -1})"), doctest::Contains("seed must be in [0, 18446744073709551615]"), Error);
  CHECK_THROWS_WITH_AS(from(R"({"seed": "12x"})"), doctest::Contains("seed must be an integer"), Error);
}

TEST_CASE("a step that cannot fit the model's context or the machine's memory is refused up front") {
  train::TrainOptions options;
  options.seq_len = 65;
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), options, examples(2, 1)),
                       doctest::Contains("--seq-len 65 is longer than the model's context, max_position_embeddings 64"),
                       Error);
  llama::LlamaConfig long_context = tiny_config();
  long_context.max_position_embeddings = int64_t(1) << 30;
  options.seq_len = int64_t(1) << 24;  // a packing mask of 8 x 2^48 floats
  CHECK_THROWS_WITH_AS(train::check_model_fits(long_context, options), doctest::Contains("of memory: use a shorter --seq-len"),
                       Error);
  options.seq_len = 64;
  train::check_model_fits(long_context, options);
}

TEST_CASE("a metrics write that fails (a full disk) is an error naming the file") {
  if (!fs::exists("/dev/full")) {
    MESSAGE("SKIPPED: no /dev/full on this system");
    return;
  }
  train::MetricsLog log("/dev/full", -1);
  json::Value line = json::Object{};
  line.set("step", 1);
  line.set("loss", 2.5);
  CHECK_THROWS_WITH_AS(log.write(line), doctest::Contains("cannot write metrics to /dev/full: No space left on device"),
                       Error);
}

TEST_CASE("metrics.jsonl is created by the first line, and a resume keeps the lines up to its step") {
  ScratchDir dir("faults-metrics");
  const std::string path = dir / "metrics.jsonl";
  {
    train::MetricsLog log(path, -1);
    CHECK_FALSE(fs::exists(path));
  }
  CHECK_FALSE(fs::exists(path));
  std::ofstream(path) << R"({"step": 1})" << "\n" << R"({"step": 2})" << "\n" << R"({"step": 3, "lo)";
  train::MetricsLog log(path, 1);
  json::Value line = json::Object{};
  line.set("step", 2);
  log.write(line);
  log.close();
  CHECK(train::read_metrics(path).size() == 2);
}
