// `lamina expand --parallel` (Control LLM's parallel blocks) end to end: a saved byte-level model
// in, a folder out with the copies and config.json's lamina_parallel_blocks whose logits equal
// the original's; `lamina train sft --trainable expanded` then trains the copies alone (the
// originals bit-identical, the loss down); `lamina generate` on the trained folder gives the
// greedy ids of a full forward's argmax. Bad layers, alpha, kinds and an already-expanded folder
// are refused with nothing left behind; --help says transformers cannot run the result. Dynamic
// interpolation's folder (copies and gates) loads with the original's logits.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"
#include "train/metrics.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<llama::LlamaForCausalLM> save_model(const std::string& folder, uint64_t seed) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.num_hidden_layers = 2;
  config.tie_word_embeddings = false;
  return save_byte_level_model(folder, seed, config);
}

Tensor some_ids() { return Tensor::from_vector<int64_t>({256, 72, 105, 33, 10, 200}, {1, 6}); }

}  // namespace

TEST_CASE("lamina expand --parallel, then train sft --trainable expanded, then generate") {
  const ScratchDir scratch("cli-parallel");
  const auto original = save_model(scratch / "a", 1);
  Run run = run_lamina("expand --model " + (scratch / "a") + " --parallel --layers 1 --alpha 0.25 --out " +
                       (scratch / "p"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value report = report_of(run.output);
  CHECK(report.at("parallel").dump() == "[1]");
  CHECK(report.at("alpha").as_double() == 0.25);
  CHECK(report.at("trainable").as_string() == "expanded");
  CHECK(report.at("tensors").as_int64() == 2 * 9 + 3 + 9);
  CHECK(folder_entries(scratch.path / "p") ==
        std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json"});
  CHECK(json::parse_file(scratch / "p/config.json").at("lamina_parallel_blocks").dump() ==
        R"({"layers":[1],"alpha":0.25,"interpolation":"linear"})");
  const auto expanded = llama::LlamaForCausalLM::load(scratch / "p");
  CHECK(same_bytes(original->forward(some_ids()), expanded->forward(some_ids())));
  // Dynamic interpolation: the copies and their gates.
  run = run_lamina("expand --model " + (scratch / "a") + " --parallel --layers 0,1 --interpolation dynamic --out " +
                   (scratch / "d"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(report_of(run.output).at("tensors").as_int64() == 2 * 9 + 3 + 2 * 9 + 2 * 2);
  const auto gated = llama::LlamaForCausalLM::load(scratch / "d");
  CHECK(gated->config().parallel_blocks->interpolation == "dynamic");
  CHECK(same_bytes(original->forward(some_ids()), gated->forward(some_ids())));

  std::ofstream(scratch / "data.jsonl") << "{\"text\": \"hello there, general kenobi\"}\n"
                                           "{\"text\": \"a second line of text, a little longer\"}\n";
  run = run_lamina("train sft --model " + (scratch / "p") + " --data " + (scratch / "data.jsonl") +
                   " --steps 8 --batch-size 2 --seq-len 32 --lr 1e-2 --precision f32 --quiet --trainable expanded"
                   " --output " + (scratch / "run"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const safetensors::Checkpoint before = safetensors::Checkpoint::open(scratch / "p");
  const safetensors::Checkpoint after = safetensors::Checkpoint::open(scratch / "run/model");
  CHECK(after.names().size() == before.names().size());
  int64_t copies_changed = 0;
  for (const std::string& name : before.names()) {
    CAPTURE(name);
    const bool moved = !same_bytes(before.read(name), after.read(name));
    if (name.find(".expanded.") == std::string::npos) CHECK_FALSE(moved);
    else copies_changed += moved;
  }
  CHECK(copies_changed == 9);
  const std::vector<json::Value> metrics = train::read_metrics(scratch / "run/metrics.jsonl");
  std::vector<double> losses;
  for (const json::Value& line : metrics)
    if (const json::Value* loss = line.find("loss")) losses.push_back(loss->as_double());
  REQUIRE(losses.size() >= 2);
  CHECK(losses.back() < losses.front());
  CHECK(json::parse_file(scratch / "run/model/config.json").at("lamina_parallel_blocks").at("layers").dump() == "[1]");

  // Generation through the KV cache (the copy in its own slots) against full forwards.
  run = run_lamina("generate --model " + (scratch / "run/model") + " --prompt-ids \"256 72 105\" --max-new-tokens 5"
                   " --no-stop --output ids");
  INFO(run.output);
  REQUIRE(run.status == 0);
  const std::vector<int64_t> generated = ids_of(last_line(run.output));
  REQUIRE(generated.size() == 8);
  const auto trained = llama::LlamaForCausalLM::load(scratch / "run/model");
  CHECK_FALSE(same_bytes(trained->forward(some_ids()), original->forward(some_ids())));
  for (size_t length = 3; length < generated.size(); ++length) {
    CAPTURE(length);
    const std::vector<int64_t> prefix(generated.begin(), generated.begin() + int64_t(length));
    const Tensor logits = trained->forward(Tensor::from_vector(prefix, {1, int64_t(length)}));
    const std::vector<float> last = logits.select(1, int64_t(length) - 1).contiguous().to_vector<float>();
    CHECK(generated[length] == std::max_element(last.begin(), last.end()) - last.begin());
  }
}

TEST_CASE("lamina expand --parallel refuses bad layers, alpha, kinds and expanded folders, leaving nothing behind") {
  const ScratchDir scratch("cli-parallel-errors");
  save_model(scratch / "a", 2);
  const std::string model = " --model " + (scratch / "a");
  const std::string out = " --out " + (scratch / "x");
  Run run = run_lamina("expand" + model + " --parallel --layers 2" + out);
  CHECK(run.status == 1);
  CHECK(run.output.find("layer 2 does not exist (the model has 2 layers, 0 to 1)") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel --layers 1,1" + out);
  CHECK(run.status == 1);
  CHECK(run.output.find("layer 1 is given twice") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel --layers one" + out);
  CHECK(run.status == 2);
  CHECK(run.output.find("--layers: 'one' is not a block index") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel --layers 1 --alpha 1.5" + out);
  CHECK(run.status == 2);
  CHECK(run.output.find("--alpha must be in [0, 1], got 1.5") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel --layers 1 --interpolation cubic" + out);
  CHECK(run.status == 1);
  CHECK(run.output.find("interpolation 'cubic' is not supported") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel --layers 1 --interpolation dynamic --alpha 1" + out);
  CHECK(run.status == 1);
  CHECK(run.output.find("alpha must lie in (0, 1) with dynamic interpolation") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel" + out);
  CHECK(run.status == 2);
  CHECK(run.output.find("--parallel needs --layers") != std::string::npos);
  run = run_lamina("expand" + model + " --parallel --layers 1 --every 1" + out);
  CHECK(run.status == 2);
  CHECK(run.output.find("does not go with --insert-after or --every") != std::string::npos);
  run = run_lamina("expand" + model + " --every 1 --alpha 0.5" + out);
  CHECK(run.status == 2);
  CHECK(run.output.find("--alpha goes with --parallel") != std::string::npos);
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"a"});

  run = run_lamina("expand" + model + " --parallel --layers 0" + out);
  REQUIRE(run.status == 0);
  run = run_lamina("expand --model " + (scratch / "x") + " --parallel --layers 1 --out " + (scratch / "y"));
  CHECK(run.status == 1);
  CHECK(run.output.find("has parallel blocks already (layers [0]") != std::string::npos);
  run = run_lamina("expand --model " + (scratch / "x") + " --insert-after 1 --out " + (scratch / "y"));
  CHECK(run.status == 1);
  CHECK(run.output.find("has parallel blocks") != std::string::npos);
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"a", "x"});

  run = run_lamina("expand --help");
  CHECK(run.status == 0);
  CHECK(run.output.find("--parallel") != std::string::npos);
  CHECK(run.output.find("transformers has no class for it") != std::string::npos);
}
