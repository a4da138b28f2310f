// `lamina train preference|dpo|kto|...` end to end on a tiny byte-level model: TRL's metric
// names in metrics.jsonl, the chosen completions gaining on the rejected ones, a run killed
// after a checkpoint resuming to the same numbers as one never interrupted (a precomputed
// reference included), LoRA with the adapters-off reference, and clear errors.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "models/real_model.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"
#include "tools/smollm2_questions.h"
#include "tools/train_workspace.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A random byte-level model with its tokenizer, and pairs whose chosen answer is the next
// number and whose rejected one is another.
struct PreferenceWorkspace : ScratchDir {
  PreferenceWorkspace() : ScratchDir("cli-train-preference") {
    save_byte_level_model(*this / "model", 3, 0.3);  // logits that depend visibly on the input
    std::ofstream pairs(path / "pairs.jsonl");
    for (int i = 0; i < 8; ++i)
      pairs << R"({"prompt": "after )" << i << R"( comes", "chosen": " )" << i + 1 << R"(", "rejected": " )" << (i + 5) % 10
            << R"("})" << "\n";
    std::ofstream labelled(path / "labelled.jsonl");
    for (int i = 0; i < 8; ++i)
      labelled << R"({"prompt": "after )" << i << R"( comes", "completion": " )" << (i % 2 == 0 ? i + 1 : i + 3)
               << R"(", "label": )" << (i % 2 == 0 ? "true" : "false") << "}\n";
  }
  std::string command(const std::string& kind, const std::string& output) const {
    return "train " + kind + " --model " + (*this / "model") + " --data " + (*this / "pairs.jsonl") + " --output " +
           (*this / output) + " --batch-size 4 --lr 2e-2 --schedule constant --weight-decay 0 --quiet";
  }
};

std::vector<json::Value> metrics_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

}  // namespace

TEST_CASE("lamina train dpo logs TRL's metrics and moves the policy towards the chosen answers") {
  const PreferenceWorkspace dir;
  const Run run = run_lamina(dir.command("dpo", "run") + " --steps 12 --beta 0.5 --eval-every 4 --validation " +
                             (dir / "pairs.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("aligned 12 steps, rewards/accuracies") != std::string::npos);
  const std::vector<json::Value> lines = metrics_of(dir / "run/metrics.jsonl");
  REQUIRE(lines.size() == 12);
  for (const char* key : {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                          "logps/chosen", "logps/rejected", "grad_norm", "tokens_per_s"})
    CHECK_MESSAGE(lines.back().find(key) != nullptr, key);
  // The reference is the starting model: the first step's implicit rewards are zero.
  CHECK(std::abs(lines.front().at("rewards/margins").as_double()) < 1e-6);
  // Over all eight pairs (the validation file is the training file): the margin grows and
  // most chosen answers end up ahead (from ties: accuracy 0 at the start).
  const json::Value& early = lines[3];
  const json::Value& late = lines.back();
  std::string all;
  for (const json::Value& line : lines) all += line.dump() + "\n";
  INFO(all);
  CHECK(late.at("val_rewards/margins").as_double() > early.at("val_rewards/margins").as_double());
  CHECK(late.at("val_loss").as_double() < early.at("val_loss").as_double());
  CHECK(late.at("val_rewards/accuracies").as_double() >= 0.75);
  CHECK(fs::exists(dir.path / "run/model/model.safetensors"));
  CHECK(fs::exists(dir.path / "run/model/tokenizer.json"));
}

TEST_CASE("lamina train dpo resumes a killed run to the numbers of an uninterrupted one") {
  const PreferenceWorkspace dir;
  for (const char* reference : {"copy", "precomputed"}) {
    CAPTURE(reference);
    const std::string flags = std::string(" --steps 6 --save-every 3 --reference ") + reference;
    const Run straight = run_lamina(dir.command("dpo", std::string("straight-") + reference) + flags);
    REQUIRE_MESSAGE(straight.status == 0, straight.output);
    const std::string output = std::string("killed-") + reference;
    const Run killed = run_lamina(dir.command("dpo", output) + flags, {.environment = "LAMINA_FAILPOINT=train.after-step@4:kill"});
    CHECK(killed.status != 0);
    const Run resumed = run_lamina(dir.command("dpo", output) + flags + " --resume");
    REQUIRE_MESSAGE(resumed.status == 0, resumed.output);
    const std::vector<json::Value> a = metrics_of(dir / (std::string("straight-") + reference + "/metrics.jsonl"));
    const std::vector<json::Value> b = metrics_of(dir / (output + "/metrics.jsonl"));
    REQUIRE(a.size() == 6);
    REQUIRE(b.size() == 6);
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      CHECK(a[i].at("loss").as_double() == b[i].at("loss").as_double());
      CHECK(a[i].at("rewards/margins").as_double() == b[i].at("rewards/margins").as_double());
    }
    CHECK(file_bytes(dir / (std::string("straight-") + reference + "/model/model.safetensors")) ==
          file_bytes(dir / (output + "/model/model.safetensors")));
  }
  // Another loss on the run's checkpoints is refused, naming what changed.
  const Run other = run_lamina(dir.command("ipo", "killed-copy") + " --steps 6 --save-every 3 --reference copy --resume");
  CHECK(other.status == 1);
  CHECK(other.output.find("objective: ") != std::string::npos);
}

TEST_CASE("lamina train kto reads labelled completions; LoRA runs use the base as the reference") {
  const PreferenceWorkspace dir;
  Run run = run_lamina("train kto --model " + (dir / "model") + " --data " + (dir / "labelled.jsonl") + " --output " +
                       (dir / "kto") + " --batch-size 4 --steps 4 --lr 1e-2 --quiet");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const std::vector<json::Value> kto = metrics_of(dir / "kto/metrics.jsonl");
  REQUIRE(kto.size() == 4);
  CHECK(kto.back().find("kl") != nullptr);
  run = run_lamina(dir.command("dpo", "lora") + " --steps 4 --lora r=4,targets=all-linear");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("reference adapters-off") != std::string::npos);
  CHECK(fs::exists(dir.path / "lora/model/adapter_model.safetensors"));
  // Reference-free losses need no reference; asking for one is an error.
  run = run_lamina(dir.command("simpo", "simpo") + " --steps 2");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("reference none") != std::string::npos);
  run = run_lamina(dir.command("simpo", "simpo-copy") + " --steps 2 --reference copy");
  CHECK(run.status == 1);
  CHECK(run.output.find("takes no reference") != std::string::npos);
  CHECK(!fs::exists(dir.path / "simpo-copy"));
  // A malformed line names the file and line; a pair file for KTO is unpaired as TRL does.
  std::ofstream(dir.path / "bad.jsonl") << R"({"prompt": "a", "chosen": "b", "rejected": "c"})" << "\n"
                                        << R"({"prompt": "a", "chosen": "b"})" << "\n";
  run = run_lamina("train dpo --model " + (dir / "model") + " --data " + (dir / "bad.jsonl") + " --output " +
                   (dir / "bad") + " --steps 1 --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("bad.jsonl:2:") != std::string::npos);
  run = run_lamina("train preference --loss grpo --model " + (dir / "model") + " --data " + (dir / "pairs.jsonl") +
                   " --output " + (dir / "grpo") + " --steps 1 --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("not an offline preference loss") != std::string::npos);
}

TEST_CASE("DPO with LoRA on SmolLM2 makes a preferred reply style carry over to held-out questions" *
          doctest::test_suite("real_model")) {
  // Chosen answers open with "Certainly!", rejected ones are the same answers without it: 12
  // training questions, 4 held out. Judged from the held-out implicit rewards and from greedy text.
  ScratchDir dir("cli-dpo-smollm2");
  const QuestionAnswers& train = style_training_questions();
  const QuestionAnswers& held_out = style_held_out_questions();
  const auto write_pairs = [](const fs::path& path, const std::vector<std::pair<std::string, std::string>>& pairs) {
    std::ofstream out(path);
    for (const auto& [question, answer] : pairs)
      out << R"({"prompt": [{"role": "user", "content": ")" << question
          << R"("}], "chosen": [{"role": "assistant", "content": "Certainly! )" << answer
          << R"("}], "rejected": [{"role": "assistant", "content": ")" << answer << R"("}]})" << "\n";
  };
  write_pairs(dir.path / "train.jsonl", train);
  write_pairs(dir.path / "heldout.jsonl", held_out);
  {
    std::ofstream prompts(dir.path / "prompts.jsonl");
    for (const auto& [question, answer] : held_out)
      prompts << R"({"messages": [{"role": "user", "content": ")" << question << R"("}]})" << "\n";
  }
  const std::string model = smollm2_gguf_path();
  const auto styled_answers = [&](const std::string& flags, const std::string& name) {
    const Run run = run_lamina("generate --model " + model + flags + " --prompts " + dir / "prompts.jsonl" +
                               " --batch 4 --max-new-tokens 10 --output " + dir / (name + ".jsonl"));
    INFO(run.output);
    REQUIRE(run.status == 0);
    std::ifstream in(dir.path / (name + ".jsonl"));
    int styled = 0, lines = 0;
    for (std::string line; std::getline(in, line); ++lines)
      styled += line.find("\"completion\":\"Certainly!") != std::string::npos;
    CHECK(lines == 4);
    return styled;
  };
  CHECK(styled_answers("", "before") == 0);
  const Run run = run_lamina("train dpo --model " + model + " --data " + dir / "train.jsonl" + " --validation " +
                             dir / "heldout.jsonl" + " --output " + dir / "run" +
                             " --steps 12 --batch-size 4 --lr 3e-4 --schedule constant --eval-every 4 --beta 0.1"
                             " --lora r=8,alpha=16,targets=all-linear --quiet");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("reference adapters-off") != std::string::npos);
  const std::vector<json::Value> lines = metrics_of(dir / "run/metrics.jsonl");
  REQUIRE(lines.size() == 12);
  CHECK(lines[3].at("val_rewards/accuracies").as_double() == 1.0);
  CHECK(lines.back().at("val_loss").as_double() < lines[3].at("val_loss").as_double());
  CHECK(lines.back().at("val_rewards/margins").as_double() > 1.0);
  CHECK(styled_answers(" --adapter " + dir / "run/model", "after") >= 3);
}
