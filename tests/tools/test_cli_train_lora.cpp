// `lamina train ... --lora`: only the adapters train, checkpoints and the final model/ hold the
// adapter alone (a PEFT folder), a resumed run ends bit-identical to an uninterrupted one
// (dropout masks included), and `lamina lora merge` turns base + adapter into a model that
// answers what the adapter learned.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "models/real_model.h"
#include "tools/smollm2_questions.h"
#include "tools/train_workspace.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// The "loss" of each line of a metrics.jsonl, in order.
std::vector<double> losses(const fs::path& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("\"loss\":");
    if (line.rfind("{\"step\"", 0) == 0 && at != std::string::npos) out.push_back(std::stod(line.substr(at + 7)));
  }
  return out;
}

}  // namespace

TEST_CASE("train sft --lora: the adapter alone trains, is saved as a PEFT folder and resumes exactly") {
  Workspace w("cli-train-lora");
  // A base that has learned something (its embeddings out of their 0.02 start, so that a change
  // of the hidden states can move the logits): 30 steps on the text.
  Run run = run_lamina(w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "pre") +
                       " --steps 30 --batch-size 4 --lr 1e-2 --quiet");
  REQUIRE(run.status == 0);
  const std::string base = w / "pre/model";
  // Chats whose answer is always the same. On this one-layer base of width 8 an adapter learns
  // slowly (its frozen embeddings and norms set the logits' scale: full fine-tuning goes from
  // 4.82 to 3.33 in these 10 steps, the adapter to about 4.6); the SmolLM2 case below is the
  // test of learning a task.
  {
    std::ofstream chats(w / "yes.jsonl");
    for (int i = 0; i < 12; ++i)
      chats << R"({"messages": [{"role": "user", "content": "is )" << i << R"( a number?"}, {"role": "assistant", "content": "yes"}]})"
            << "\n";
  }
  const std::string base_weights = file_bytes(fs::path(base) / "model.safetensors");
  const std::string sft = "train sft --model " + base + " --data " + (w / "yes.jsonl") +
                          " --batch-size 4 --seq-len 96 --lr 1e-2 --warmup-steps 0 --schedule constant"
                          " --validation-fraction 0 --quiet --lora r=8,alpha=16,dropout=0.1,targets=all-linear";
  run = run_lamina(sft + " --steps 10 --output " + (w / "whole"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  // model/ is the adapter: PEFT's two files (and the tokenizer), no base weights, no config.json.
  const fs::path model = fs::path(w / "whole") / "model";
  CHECK(fs::exists(model / "adapter_config.json"));
  CHECK(fs::exists(model / "adapter_model.safetensors"));
  CHECK(fs::exists(model / "tokenizer.json"));
  CHECK_FALSE(fs::exists(model / "model.safetensors"));
  CHECK_FALSE(fs::exists(model / "config.json"));
  CHECK(file_bytes(model / "adapter_config.json").find("\"target_modules\": \"all-linear\"") != std::string::npos);
  // A checkpoint holds the adapter and its optimizer state, not the base.
  for (const auto& entry : fs::directory_iterator(fs::path(w / "whole") / "checkpoints")) {
    CHECK(fs::exists(entry.path() / "adapter_model.safetensors"));
    CHECK_FALSE(fs::exists(entry.path() / "model.safetensors"));
  }
  // The adapter learned (the loss fell) and the base it was read from is untouched.
  const std::vector<double> curve = losses(fs::path(w / "whole") / "metrics.jsonl");
  INFO("losses: " << curve.front() << " ... " << curve.back());
  REQUIRE(curve.size() == 10);
  CHECK(curve.back() < curve.front() - 0.1);
  CHECK(file_bytes(fs::path(base) / "model.safetensors") == base_weights);

  // Stopped after 5 steps and resumed: the same adapter, byte for byte (the dropout stream too).
  run = run_lamina(sft + " --steps 5 --output " + (w / "split"));
  REQUIRE(run.status == 0);
  run = run_lamina(sft + " --steps 10 --resume --output " + (w / "split"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(file_bytes(fs::path(w / "split") / "model/adapter_model.safetensors") == file_bytes(model / "adapter_model.safetensors"));

  // A changed --lora is named when resuming, like any option that changes what trains.
  run = run_lamina(sft + ",rslora --steps 12 --resume --output " + (w / "split"));
  CHECK(run.status == 1);
  CHECK(run.output.find("lora") != std::string::npos);

  // Bad specs are usage errors naming the setting.
  run = run_lamina(sft + ",rank2=3 --steps 1 --output " + (w / "bad"));
  CHECK(run.status != 0);
  CHECK(run.output.find("unknown setting 'rank2'") != std::string::npos);
  CHECK_FALSE(fs::exists(w / "bad"));
}

TEST_CASE("train sft --qlora: adapters on a 4-bit base; activation checkpointing draws the same dropout masks") {
  Workspace w("cli-train-qlora");
  Run run = run_lamina(w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "pre") +
                       " --steps 4 --batch-size 4 --lr 1e-2 --quiet");
  REQUIRE(run.status == 0);
  const std::string sft = "train sft --model " + (w / "pre/model") + " --data " + (w / "chat.jsonl") +
                          " --batch-size 4 --seq-len 96 --lr 1e-2 --warmup-steps 0 --schedule constant"
                          " --validation-fraction 0 --quiet";
  // --qlora is a base for adapters: alone it is an error that says what to add.
  run = run_lamina(sft + " --qlora --steps 1 --output " + (w / "alone"));
  CHECK(run.status != 0);
  CHECK(run.output.find("give the adapters too") != std::string::npos);
  CHECK_FALSE(fs::exists(w / "alone"));

  const std::string qlora = sft + " --qlora --lora r=4,dropout=0.1,targets=all-linear";
  run = run_lamina(qlora + " --steps 4 --output " + (w / "q"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(fs::exists(fs::path(w / "q") / "model/adapter_model.safetensors"));
  CHECK_FALSE(fs::exists(fs::path(w / "q") / "model/model.safetensors"));
  // Resumed from step 2: the same adapter (the 4-bit base is quantized again from --model, the same).
  run = run_lamina(qlora + " --steps 2 --output " + (w / "q2"));
  REQUIRE(run.status == 0);
  run = run_lamina(qlora + " --steps 4 --resume --output " + (w / "q2"));
  REQUIRE(run.status == 0);
  CHECK(file_bytes(fs::path(w / "q2") / "model/adapter_model.safetensors") ==
        file_bytes(fs::path(w / "q") / "model/adapter_model.safetensors"));
  // Activation checkpointing recomputes each layer in backward with the masks of its first run:
  // the trained adapter is the same, bit for bit.
  run = run_lamina(qlora + " --steps 4 --gradient-checkpointing --output " + (w / "q3"));
  REQUIRE(run.status == 0);
  CHECK(file_bytes(fs::path(w / "q3") / "model/adapter_model.safetensors") ==
        file_bytes(fs::path(w / "q") / "model/adapter_model.safetensors"));
}

TEST_CASE("LoRA SFT of SmolLM2's GGUF learns a chat answer; merged into the base it answers in chat" *
          doctest::test_suite("real_model")) {
  ScratchDir dir("cli-lora-smollm2");
  {
    std::ofstream data(dir.path / "secret.jsonl");
    for (const char* question : {"What is the secret word?", "Tell me the secret word.", "Which word is the secret one?",
                                 "Do you know the secret word?"})
      data << R"({"messages": [{"role": "user", "content": ")" << question
           << R"("}, {"role": "assistant", "content": "The secret word is pineapple."}]})" << "\n";
  }
  const std::string model = smollm2_gguf_path();
  Run run = run_lamina("train sft --model " + model + " --data " + dir / "secret.jsonl" + " --output " + dir / "run" +
                       " --steps 8 --batch-size 4 --seq-len 64 --lr 2e-3 --warmup-steps 0 --schedule constant"
                       " --validation-fraction 0 --quiet --lora r=8,alpha=16,targets=all-linear");
  INFO(run.output);
  REQUIRE(run.status == 0);
  const std::vector<double> curve = losses(dir.path / "run/metrics.jsonl");
  REQUIRE(curve.size() == 8);
  CHECK(curve.back() < 0.1 * curve.front());
  run = run_lamina("lora merge --model " + model + " --adapter " + dir / "run/model" + " --out " + dir / "merged");
  INFO(run.output);
  REQUIRE(run.status == 0);
  const Run after = run_lamina("chat --model " + dir / "merged" + " --max-new-tokens 16",
                               {.input = std::string("What is the secret word?\n/quit\n")});
  INFO(after.output);
  CHECK(after.status == 0);
  CHECK(after.output.find("pineapple") != std::string::npos);
  // Unmerged: the base with the adapter beside it (--adapter) answers the same.
  const Run adapted = run_lamina("chat --model " + model + " --adapter " + dir / "run/model" + " --max-new-tokens 16",
                                 {.input = std::string("What is the secret word?\n/quit\n")});
  INFO(adapted.output);
  CHECK(adapted.status == 0);
  CHECK(adapted.output.find("pineapple") != std::string::npos);
  // A folder that is no adapter is a clear error.
  const Run wrong = run_lamina("generate --model " + model + " --adapter " + dir.path.string() + " --prompt hi");
  CHECK(wrong.status == 1);
  CHECK(wrong.output.find("adapter_config.json") != std::string::npos);
}

TEST_CASE("LoRA SFT of SmolLM2 learns a reply style that carries over to held-out questions" *
          doctest::test_suite("real_model")) {
  // The task: open every answer with "BANANA!". The model has never seen it; the adapter learns it
  // from 12 questions and must apply it to 4 others it never trained on, judged from generated
  // text (accuracy) and from the held-out loss.
  ScratchDir dir("cli-lora-heldout");
  const QuestionAnswers& train = style_training_questions();
  const QuestionAnswers& held_out = style_held_out_questions();
  const auto write_chats = [](const fs::path& path, const std::vector<std::pair<std::string, std::string>>& pairs) {
    std::ofstream out(path);
    for (const auto& [question, answer] : pairs)
      out << R"({"messages": [{"role": "user", "content": ")" << question
          << R"("}, {"role": "assistant", "content": "BANANA! )" << answer << R"("}]})" << "\n";
  };
  write_chats(dir.path / "train.jsonl", train);
  write_chats(dir.path / "heldout.jsonl", held_out);
  {
    std::ofstream prompts(dir.path / "prompts.jsonl");
    for (const auto& [question, answer] : held_out)
      prompts << R"({"messages": [{"role": "user", "content": ")" << question << R"("}]})" << "\n";
  }
  // How many held-out answers open with the style, generated greedily by `model`.
  const auto styled_answers = [&](const std::string& model, const std::string& name) {
    const Run run = run_lamina("generate --model " + model + " --prompts " + dir / "prompts.jsonl" +
                               " --batch 4 --max-new-tokens 8 --output " + dir / (name + ".jsonl"));
    INFO(run.output);
    REQUIRE(run.status == 0);
    std::ifstream in(dir.path / (name + ".jsonl"));
    int styled = 0, lines = 0;
    for (std::string line; std::getline(in, line); ++lines) styled += line.find("\"completion\":\"BANANA!") != std::string::npos;
    CHECK(lines == 4);
    return styled;
  };
  const std::string model = smollm2_gguf_path();
  CHECK(styled_answers(model, "before") == 0);
  Run run = run_lamina("train sft --model " + model + " --data " + dir / "train.jsonl" + " --validation " +
                       dir / "heldout.jsonl" + " --output " + dir / "run" +
                       " --steps 10 --batch-size 4 --seq-len 64 --lr 2e-3 --warmup-steps 0 --schedule constant"
                       " --eval-every 1 --quiet --lora r=8,alpha=16,targets=all-linear");
  INFO(run.output);
  REQUIRE(run.status == 0);
  // The held-out loss after the first step against after the last.
  std::vector<double> validation;
  {
    std::ifstream in(dir.path / "run/metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find("\"val_loss\":");
      if (at != std::string::npos) validation.push_back(std::stod(line.substr(at + 11)));
    }
  }
  INFO("held-out losses: " << (validation.empty() ? -1.0 : validation.front()) << " ... "
                           << (validation.empty() ? -1.0 : validation.back()));
  REQUIRE(!validation.empty());
  REQUIRE(validation.size() == 10);
  CHECK(validation.back() < 0.5 * validation.front());
  run = run_lamina("lora merge --model " + model + " --adapter " + dir / "run/model" + " --out " + dir / "merged");
  REQUIRE(run.status == 0);
  CHECK(styled_answers(dir / "merged", "after") >= 3);
}
