// What a training run must never do to its folder, its inputs or its numbers: delete its own
// input (an --overwrite of the folder the model came from), delete a file lamina did not write,
// prune checkpoints on a resume that merely did not repeat --keep-checkpoints, resume across a
// changed model config or precision without saying so, train on a NaN loss, or start what
// cannot fit in memory; and the data lines that hold nothing to learn.
#include <fstream>
#include <limits>
#include <sstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "scratch_dir.h"
#include "tensor/host_memory.h"
#include "train/checkpoint.h"
#include "train/run_folder.h"
#include "train/tiny_training.h"
#include "tiny_run.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

train::TrainOptions run_options(const fs::path& dir, int64_t steps) { return tiny_run_options(dir, steps, 1); }

std::vector<std::string> checkpoint_names(const fs::path& dir) {
  std::vector<std::string> names;
  for (const std::string& path : train::complete_checkpoints(dir.string())) names.push_back(fs::path(path).filename().string());
  return names;
}

void fill_weights(llama::LlamaForCausalLM& model, double value) {
  autograd::NoGradGuard no_grad;
  ops::copy_(model.named_parameters().front().second, Tensor::scalar(value));
}

std::vector<train::Example> read_lines(const std::string& text, const train::JsonlOptions& options = {}) {
  std::istringstream in(text);
  return train::read_jsonl(in, "data.jsonl", tokenizer::byte_level_tokenizer(), options);
}

}  // namespace

TEST_CASE("an input inside the run's own files is refused, whether named directly or through a link") {
  ScratchDir dir("safety-inputs");
  const fs::path out = dir.path / "run";
  train::Trainer(tiny_model(1), run_options(out, 2), examples(6, 1)).run();
  fs::create_symlink(out / "model", dir.path / "link");
  std::ofstream(dir.path / "data.jsonl") << "{}\n";
  std::ofstream(out / "notes.txt") << "mine\n";  // beside the run's files: never removed
  for (const fs::path& inside : {out / "model", out / "model" / "config.json", out / "checkpoints" / "step-00000002",
                                 dir.path / "link", out / "metrics.jsonl", out / "model" / ".." / "model"}) {
    INFO(inside);
    CHECK_THROWS_WITH_AS(train::check_inputs_outside_run(out.string(), {{"--model", inside.string()}},
                                                         train::ExistingRun::overwrite),
                         doctest::Contains("the run would delete its own input"), Error);
  }
  CHECK_THROWS_WITH_AS(train::check_inputs_outside_run(out.string(), {{"--model", (dir.path / "link").string()}},
                                                       train::ExistingRun::resume),
                       doctest::Contains(("--model " + (dir.path / "link").string() + " (").c_str()), Error);
  train::check_inputs_outside_run(out.string(),
                                  {{"--data", (dir.path / "data.jsonl").string()}, {"--tokenizer", (out / "notes.txt").string()},
                                   {"--config", (dir.path / "run-other").string()}},
                                  train::ExistingRun::overwrite);
  // The trainer checks again under the folder's lock, and removes nothing when it refuses.
  fs::remove(out / "notes.txt");
  train::RunStart start{train::ExistingRun::overwrite};
  start.inputs = {{"--model", (out / "model").string()}};
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), run_options(out, 2), examples(6, 1)).run(start),
                       doctest::Contains(("--model " + (out / "model").string() + " is inside " +
                                          (out / "model/").string() + ", which --overwrite removes")
                                             .c_str()),
                       Error);
  CHECK(fs::exists(out / "model" / "model.safetensors"));
}

TEST_CASE("a model whose training state cannot fit in memory is refused from its config, weights alone fitting") {
  const HostMemory memory = host_memory();
  if (memory.available_bytes == 0 || memory.available_bytes > (uint64_t(1) << 50)) {
    MESSAGE("SKIPPED: this machine reports no memory limit to test against");
    return;
  }
  // Llama-3-8B-shaped layers, as many as make the f32 weights 40% of the memory available now.
  llama::LlamaConfig config = tiny_llama_config(32000);
  config.hidden_size = 4096;
  config.intermediate_size = 14336;
  config.num_attention_heads = 32;
  config.num_key_value_heads = 8;
  config.head_dim = 128;
  config.max_position_embeddings = 8192;
  config.num_hidden_layers = 1;
  const double layer = [&] {
    llama::LlamaConfig two = config;
    two.num_hidden_layers = 2;
    return double(two.parameter_count() - config.parameter_count());
  }();
  config.num_hidden_layers = std::max<int64_t>(1, int64_t(0.4 * double(memory.available_bytes) / 4 / layer));
  const double parameters = double(config.parameter_count());
  REQUIRE(parameters * 4 < 0.5 * double(memory.available_bytes));  // the weights alone would fit
  train::TrainOptions options;
  options.seq_len = 16;
  options.batch_size = 1;
  options.precision = "f32";
  // Weights, gradients and two AdamW moments: 16 bytes a parameter, 1.6x what is available.
  const train::TrainingMemory estimate = train::estimate_training_memory(config, options);
  CHECK(estimate.weights == parameters * 4);
  CHECK(estimate.gradients == parameters * 4);
  CHECK(estimate.moments == parameters * 8);
  CHECK(estimate.master == 0);
  CHECK_THROWS_WITH_AS(train::check_model_fits(config, options),
                       doctest::Contains("GiB of host memory (weights "), Error);
  CHECK_THROWS_WITH_AS(train::check_model_fits(config, options), doctest::Contains("AdamW moments"), Error);
  // bf16: half-size weights and gradients, f32 master weights on top.
  options.precision = "bf16";
  const train::TrainingMemory mixed = train::estimate_training_memory(config, options);
  CHECK(mixed.weights == parameters * 2);
  CHECK(mixed.gradients == parameters * 2);
  CHECK(mixed.master == parameters * 4);
  CHECK_THROWS_WITH_AS(train::check_model_fits(config, options), doctest::Contains("f32 master weights"), Error);
  // A model that fits passes, and so does one whose weights are already in memory.
  train::check_model_fits(tiny_config(), options);
}

TEST_CASE("resume compares the model's config: architecture changes are errors, numeric ones are listed") {
  ScratchDir dir("safety-config");
  const std::vector<train::Example> data = examples(6, 2);
  train::Trainer(tiny_model(1), run_options(dir.path, 2), data).run();
  llama::LlamaConfig numeric = tiny_config();
  numeric.rms_norm_eps = 1e-6;
  numeric.rope_theta = 10000;
  CHECK_THROWS_WITH_AS(
      train::Trainer(random_llama(numeric, 1), run_options(dir.path, 3), data).run({train::ExistingRun::resume}),
      doctest::Contains("config rms_norm_eps: 1e-05 -> 1e-06\n  config rope_theta: 5e+05 -> 10000.0"), Error);
  llama::LlamaConfig wider = tiny_config();
  wider.intermediate_size = 48;
  CHECK_THROWS_WITH_AS(train::Trainer(random_llama(wider, 1), run_options(dir.path, 3), data)
                           .run({train::ExistingRun::resume, true}),
                       doctest::Contains("its model has intermediate_size 32, the model being trained 48"), Error);
  train::Trainer(random_llama(numeric, 1), run_options(dir.path, 3), data).run({train::ExistingRun::resume, true});
  CHECK(train::read_metrics((dir.path / "metrics.jsonl").string()).size() == 3);
}

TEST_CASE("resume across a precision change names it before loading anything, and continues when allowed") {
  ScratchDir dir("safety-precision");
  const std::vector<train::Example> data = examples(6, 3);
  train::Trainer(tiny_model(1), run_options(dir.path, 2), data).run();
  train::TrainOptions bf16 = run_options(dir.path, 4);
  bf16.precision = "bf16";
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), bf16, data).run({train::ExistingRun::resume}),
                       doctest::Contains("precision: f32 (f32) -> bf16 (bf16)"), Error);
  train::Trainer(tiny_model(1), bf16, data).run({train::ExistingRun::resume, true});
  CHECK(train::read_metrics((dir.path / "metrics.jsonl").string()).size() == 4);
  // Back from bf16 to f32: the bf16 run's master weights are what the f32 run continues from.
  train::Trainer(tiny_model(1), run_options(dir.path, 6), data).run({train::ExistingRun::resume, true});
  CHECK(train::read_metrics((dir.path / "metrics.jsonl").string()).size() == 6);
}

TEST_CASE("a NaN loss stops the run at its step, and no metrics line or file is left half made") {
  ScratchDir dir("safety-nan");
  const fs::path out = dir.path / "run";
  const std::vector<train::Example> data = examples(6, 4);
  auto broken = tiny_model(1);
  fill_weights(*broken, std::numeric_limits<double>::quiet_NaN());
  CHECK_THROWS_WITH_AS(train::Trainer(broken, run_options(out, 3), data).run(),
                       doctest::Contains("train: the loss is NaN at step 1"), Error);
  CHECK_FALSE(fs::exists(out));  // a fresh run that failed leaves nothing
  // Weights that turn infinite after step 2: the loss of step 3 is NaN, and two whole lines stay.
  auto model = tiny_model(1);
  train::Trainer trainer(model, run_options(out, 4), data);
  trainer.on_metrics = [&](const json::Value& line) {
    if (line.at("step").as_int64() == 2) fill_weights(*model, std::numeric_limits<double>::infinity());
  };
  CHECK_THROWS_WITH_AS(trainer.run(), doctest::Contains("at step 3"), Error);
  CHECK(train::read_metrics((out / "metrics.jsonl").string()).size() == 2);
  CHECK(checkpoint_names(out) == std::vector<std::string>{"step-00000002", "step-00000001"});
  // A line that cannot be serialised never creates the file.
  train::MetricsLog log((dir.path / "fresh.jsonl").string(), -1);
  json::Value line = json::Object{};
  line.set("step", 1);
  line.set("loss", std::numeric_limits<double>::quiet_NaN());
  CHECK_THROWS_AS(log.write(line), Error);
  CHECK_FALSE(fs::exists(dir.path / "fresh.jsonl"));
}

TEST_CASE("a checkpoint folder holding a file lamina did not write is never removed") {
  ScratchDir dir("safety-foreign");
  const std::vector<train::Example> data = examples(6, 5);
  train::Trainer(tiny_model(1), run_options(dir.path, 2), data).run();
  const fs::path mine = dir.path / "checkpoints" / "step-00000003";
  fs::create_directories(mine);
  std::ofstream(mine / "important.txt") << "notes\n";
  CHECK_THROWS_WITH_AS(train::Trainer(tiny_model(1), run_options(dir.path, 4), data).run({train::ExistingRun::resume}),
                       doctest::Contains("step-00000003/important.txt, which lamina did not write"), Error);
  CHECK(fs::exists(mine / "important.txt"));
  CHECK_THROWS_WITH_AS(train::check_output_folder(dir.path.string(), train::ExistingRun::overwrite),
                       doctest::Contains("holds checkpoints/step-00000003/important.txt, which lamina did not write"),
                       Error);
  // Also in a complete checkpoint that pruning would remove.
  fs::rename(mine / "important.txt", dir.path / "checkpoints" / "step-00000001" / "important.txt");
  fs::remove(mine);
  CHECK_THROWS_WITH_AS(train::prune_checkpoints(dir.path.string(), 1), doctest::Contains("important.txt"), Error);
  CHECK(checkpoint_names(dir.path).size() == 2);
  // A marker-less folder of lamina's own files is a killed run's debris, and goes.
  fs::remove(dir.path / "checkpoints" / "step-00000001" / "important.txt");
  fs::copy(dir.path / "checkpoints" / "step-00000002", mine);
  fs::remove(mine / "COMPLETE");
  CHECK(train::remove_incomplete_checkpoints(dir.path.string()) ==
        std::vector<std::string>{"checkpoints/step-00000003 (no COMPLETE marker)"});
}

TEST_CASE("a resume prunes at start only what the stopped run would have pruned") {
  ScratchDir dir("safety-keep");
  const std::vector<train::Example> data = examples(6, 6);
  train::TrainOptions keep_four = run_options(dir.path, 4);
  keep_four.keep_checkpoints = 4;
  train::Trainer(tiny_model(1), keep_four, data).run();
  REQUIRE(checkpoint_names(dir.path).size() == 4);
  // Resumed without repeating --keep-checkpoints (2 by default): nothing goes before this run
  // writes a checkpoint of its own.
  train::TrainOptions keep_two = run_options(dir.path, 4);
  keep_two.keep_checkpoints = 2;
  train::Trainer(tiny_model(1), keep_two, data).run({train::ExistingRun::resume});
  CHECK(checkpoint_names(dir.path).size() == 4);
  keep_two.steps = 5;
  train::Trainer(tiny_model(1), keep_two, data).run({train::ExistingRun::resume});
  CHECK(checkpoint_names(dir.path) == std::vector<std::string>{"step-00000005", "step-00000004"});
  // A checkpoint the run kept by its own count but did not prune (stopped in between) goes.
  fs::copy(dir.path / "checkpoints" / "step-00000004", dir.path / "checkpoints" / "step-00000001");
  train::Trainer(tiny_model(1), keep_two, data).run({train::ExistingRun::resume});
  CHECK(checkpoint_names(dir.path) == std::vector<std::string>{"step-00000005", "step-00000004"});
}

TEST_CASE("JSONL: empty texts hold nothing to learn, a BOM is skipped, a line of two layouts is ambiguous") {
  CHECK_THROWS_WITH_AS(read_lines("{\"text\": \"fine\"}\n{\"text\": \"\"}\n"),
                       doctest::Contains("data.jsonl:2: \"text\" is empty: there is nothing to learn from it"), Error);
  CHECK_THROWS_WITH_AS(read_lines("{\"text\": \" \\n\\t \"}\n"), doctest::Contains("\"text\" is only whitespace"), Error);
  train::JsonlOptions lenient;
  lenient.skip_malformed = true;
  CHECK_THROWS_WITH_AS(read_lines("{\"text\": \"\"}\n{\"text\": \"\"}\n", lenient),
                       doctest::Contains("all 2 lines were skipped as malformed"), Error);
  const tokenizer::Tokenizer tok = tokenizer::byte_level_tokenizer();
  const std::vector<train::Example> bom = read_lines("\xEF\xBB\xBF{\"text\": \"ab\"}\n");
  REQUIRE(bom.size() == 1);
  CHECK(bom[0].ids == std::vector<int32_t>{*tok.bos_id(), 'a', 'b', *tok.added_token_id("<|end_of_text|>")});
  const std::string chat = R"("messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])";
  CHECK_THROWS_WITH_AS(read_lines("{" + chat + ", \"text\": \"x\"}\n"),
                       doctest::Contains("both \"messages\" and \"text\" fields"), Error);
  CHECK_THROWS_WITH_AS(read_lines("{" + chat + ", \"conversations\": []}\n"),
                       doctest::Contains("both \"messages\" and \"conversations\" fields"), Error);
  train::JsonlOptions as_chat;
  as_chat.format = train::DataFormat::chat;  // naming the layout settles it
  CHECK(read_lines("{" + chat + ", \"text\": \"x\"}\n", as_chat).size() == 1);
  // A file may mix layouts; the reader counts them, for the CLI to report.
  train::JsonlStats stats;
  std::istringstream mixed("{" + chat + "}\n{\"text\": \"x\"}\n{\"text\": \"y\"}\n");
  train::read_jsonl(mixed, "mixed.jsonl", tok, {}, &stats);
  CHECK(stats.layouts == std::map<std::string, int64_t>{{"chat", 1}, {"text", 2}});
}

TEST_CASE("an --options file takes the training knobs keyed like their flags, and names the flags it does not take") {
  const auto from = [](const std::string& text) { return train::TrainOptions::from_json(json::parse(text), {}); };
  const train::TrainOptions options = from(R"({"no-pack": true, "quiet": true, "output": "runs/a", "lr": 0.001})");
  CHECK_FALSE(options.pack);
  CHECK_FALSE(options.progress);
  CHECK(options.output_dir == "runs/a");
  CHECK(from(R"({"no-pack": false})").pack);
  for (const char* key : {"data", "config", "resume", "overwrite", "validation"}) {
    INFO(key);
    CHECK_THROWS_WITH_AS(from(str_cat("{\"", key, "\": true}")),
                         doctest::Contains(str_cat("\"", key, "\" is given as a flag only (--", key, ")").c_str()), Error);
  }
  CHECK_THROWS_WITH_AS(from(R"({"learning-rate": 1})"), doctest::Contains("(the keys are steps, batch-size,"), Error);
  // Every key it lists is one it reads.
  for (const std::string& key : train::TrainOptions::json_keys()) {
    INFO(key);
    json::Value object = json::Object{};
    const train::TrainOptions defaults;
    const json::Value saved = defaults.to_json();
    if (const json::Value* value = saved.find(key)) object.set(key, *value);
    else if (key == "no-pack" || key == "quiet") object.set(key, false);
    else object.set(key, std::string("out"));
    CHECK_NOTHROW(train::TrainOptions::from_json(object, defaults));
  }
}
