// `lamina train reward` end to end on a tiny byte-level model: from a causal LM to a reward model
// folder (LlamaForSequenceClassification) whose rewards rank held-out pairs, scored by `lamina
// score --reward-model`; a killed run resumes to the same numbers; a reward model is no policy.
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"
#include "tools/train_workspace.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A causal LM with its tokenizer; pairs whose chosen answer is polite and whose rejected one is
// curt, after varied prompts: 12 to train on.
struct RewardWorkspace : ScratchDir {
  RewardWorkspace() : ScratchDir("cli-train-reward") {
    save_byte_level_model(*this / "model", 5, 0.3);
    std::ofstream train(path / "train.jsonl"), held_out(path / "held_out.jsonl");
    for (int i = 0; i < 18; ++i)
      (i < 12 ? train : held_out) << R"({"prompt": "request )" << i << R"(:", "chosen": " yes, gladly", "rejected": " )"
                                  << (i % 2 == 0 ? "no" : "go away") << R"("})" << "\n";
  }
  std::string command(const std::string& output) const {
    return "train reward --model " + (*this / "model") + " --data " + (*this / "train.jsonl") + " --output " +
           (*this / output) + " --batch-size 4 --lr 3e-2 --schedule constant --weight-decay 0 --quiet";
  }
};

std::vector<json::Value> metrics_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

}  // namespace

TEST_CASE("lamina train reward turns a causal LM into a reward model that ranks the pairs") {
  const RewardWorkspace dir;
  Run run = run_lamina(dir.command("run") + " --steps 24 --eval-every 12 --validation " + (dir / "train.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("new score head") != std::string::npos);
  const std::vector<json::Value> lines = metrics_of(dir / "run/metrics.jsonl");
  REQUIRE(lines.size() == 24);
  for (const char* key : {"loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward"})
    CHECK_MESSAGE(lines.back().find(key) != nullptr, key);
  CHECK(lines[11].find("val_accuracy") != nullptr);
  CHECK(lines.back().at("val_loss").as_double() < lines[11].at("val_loss").as_double());
  CHECK(lines.back().at("val_accuracy").as_double() >= 0.9);
  // The folder is transformers' LlamaForSequenceClassification, with its tokenizer.
  const json::Value config = json::parse_file(dir / "run/model/config.json");
  CHECK(config.at("architectures").as_array()[0].as_string() == "LlamaForSequenceClassification");
  CHECK(fs::exists(dir.path / "run/model/tokenizer.json"));
  // Scored by the CLI: the training pairs ranked as the last validation said, and the held-out
  // pairs (new prompts) ranked too.
  run = run_lamina("score --reward-model " + (dir / "run/model") + " --data " + (dir / "train.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("12 pairs: accuracy 1.0000") != std::string::npos);
  run = run_lamina("score --reward-model " + (dir / "run/model") + " --data " + (dir / "held_out.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("6 pairs: accuracy 1.0000") != std::string::npos);
  // Continuing from the reward model itself (no new head).
  run = run_lamina("train reward --model " + (dir / "run/model") + " --data " + (dir / "train.jsonl") + " --output " +
                   (dir / "more") + " --steps 2 --quiet");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("model: the reward model") != std::string::npos);
  // A reward model is not a policy: preference training refuses it.
  run = run_lamina("train dpo --model " + (dir / "run/model") + " --data " + (dir / "train.jsonl") + " --output " +
                   (dir / "dpo") + " --steps 1 --quiet");
  CHECK(run.status == 1);
}

TEST_CASE("lamina train reward resumes a killed run to the numbers of an uninterrupted one") {
  const RewardWorkspace dir;
  const std::string flags = " --steps 6 --save-every 3";
  const Run straight = run_lamina(dir.command("straight") + flags);
  REQUIRE_MESSAGE(straight.status == 0, straight.output);
  const Run killed = run_lamina(dir.command("killed") + flags, {.environment = "LAMINA_FAILPOINT=train.after-step@5:kill"});
  CHECK(killed.status != 0);
  const Run resumed = run_lamina(dir.command("killed") + flags + " --resume");
  REQUIRE_MESSAGE(resumed.status == 0, resumed.output);
  const std::vector<json::Value> a = metrics_of(dir / "straight/metrics.jsonl"), b = metrics_of(dir / "killed/metrics.jsonl");
  REQUIRE(a.size() == 6);
  REQUIRE(b.size() == 6);
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].at("loss").as_double() == b[i].at("loss").as_double());
  CHECK(file_bytes(dir / "straight/model/model.safetensors") == file_bytes(dir / "killed/model/model.safetensors"));
}

TEST_CASE("lamina train reward --lora trains the adapters and the score head, saved as PEFT's SEQ_CLS adapter") {
  const RewardWorkspace dir;
  Run run = run_lamina(dir.command("lora") + " --steps 24 --lora r=4,targets=all-linear");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const json::Value config = json::parse_file(dir / "lora/model/adapter_config.json");
  CHECK(config.at("task_type").as_string() == "SEQ_CLS");
  REQUIRE(config.at("modules_to_save").is_array());
  CHECK(config.at("modules_to_save").as_array()[0].as_string() == "score");
  // The adapter over the causal LM it started from ranks the held-out pairs.
  run = run_lamina("score --reward-model " + (dir / "model") + " --adapter " + (dir / "lora/model") + " --data " +
                   (dir / "held_out.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("6 pairs: accuracy 1.0000") != std::string::npos);
  // Resumed from a checkpoint, a LoRA reward run ends where an uninterrupted one does.
  const std::string flags = " --steps 4 --save-every 2 --lora r=4,targets=all-linear";
  run = run_lamina(dir.command("lora-straight") + flags);
  REQUIRE_MESSAGE(run.status == 0, run.output);
  run = run_lamina(dir.command("lora-killed") + flags, {.environment = "LAMINA_FAILPOINT=train.after-step@3:kill"});
  CHECK(run.status != 0);
  run = run_lamina(dir.command("lora-killed") + flags + " --resume");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(file_bytes(dir / "lora-straight/model/adapter_model.safetensors") ==
        file_bytes(dir / "lora-killed/model/adapter_model.safetensors"));
}
