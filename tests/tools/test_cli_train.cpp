// `lamina train`, `lamina plot` and `lamina demo` end to end, on tiny settings.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "helpers.h"
#include "tools/train_workspace.h"
#include "train/metrics.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

TEST_CASE("pretrain from a config, resume, fine-tune, generate from the result and plot") {
  Workspace w;
  const std::string pretrain = w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "pre") +
                               " --batch-size 2 --seq-len 32 --save-every 2 --quiet --steps ";
  Run run = run_lamina(pretrain + "4");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(train::read_metrics(w / "pre/metrics.jsonl").size() == 4);
  CHECK(fs::exists(w / "pre/model/model.safetensors"));
  CHECK(fs::exists(w / "pre/model/tokenizer.json"));
  CHECK(fs::exists(w / "pre/checkpoints/step-00000004/optimizer.safetensors"));
  // More steps stretch the cosine schedule, so a resume refuses them unless told, and then
  // says what changed and continues from step 4.
  run = run_lamina(pretrain + "6 --resume");
  CHECK(run.status == 1);
  CHECK(run.output.find("steps: 4 (the cosine schedule's length) -> 6") != std::string::npos);
  run = run_lamina(pretrain + "6 --resume --allow-option-changes");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("steps: 4 (the cosine schedule's length) -> 6") != std::string::npos);
  CHECK(run.output.find("resuming from") != std::string::npos);
  const std::vector<json::Value> lines = train::read_metrics(w / "pre/metrics.jsonl");
  REQUIRE(lines.size() == 6);
  CHECK(lines.back().at("step").as_int64() == 6);
  // Fine-tune the pretrained model on chats, then generate from it.
  run = run_lamina("train sft --model " + (w / "pre/model") + " --data " + (w / "chat.jsonl") + " --output " + (w / "sft") +
                   " --steps 3 --batch-size 2 --seq-len 48 --quiet");
  REQUIRE(run.status == 0);
  CHECK(run.output.find("fine-tuned 3 steps") != std::string::npos);
  run = run_lamina("generate --model " + (w / "sft/model") + " --prompt \"next after 3\" --chat --max-new-tokens 3 --output ids");
  CHECK(run.status == 0);
  // Mixed precision: bf16 weights are what the run trains and saves.
  run = run_lamina("train sft --model " + (w / "pre/model") + " --data " + (w / "chat.jsonl") + " --output " +
                   (w / "sft-bf16") + " --steps 2 --batch-size 2 --seq-len 48 --quiet --precision bf16");
  REQUIRE(run.status == 0);
  CHECK(json::parse_file(w / "sft-bf16/model/config.json").at("torch_dtype").as_string() == "bfloat16");
  run = run_lamina("plot " + (w / "pre/metrics.jsonl") + " --output " + (w / "loss.svg"));
  CHECK(run.status == 0);
  std::ifstream svg(w / "loss.svg");
  std::string first_line;
  std::getline(svg, first_line);
  CHECK(first_line.rfind("<svg", 0) == 0);
}

TEST_CASE("bad training input: clear errors, non-zero exit, no crash") {
  Workspace w;
  std::ofstream(w / "bad.jsonl") << R"({"text": "fine"})" << "\n" << R"({"txt": "typo"})" << "\n";
  const std::string common = w.pretrain_command() + " --output " + (w / "out") + " --steps 1 --seq-len 16 --quiet";
  const std::string base = common + " --batch-size 1 --data ";
  Run run = run_lamina(base + (w / "bad.jsonl"));
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(run.output.find("bad.jsonl:2: expected a") != std::string::npos);
  run = run_lamina(base + (w / "bad.jsonl") + " --skip-malformed");
  CHECK(run.status == 0);
  CHECK(run.output.find("skipped 1 malformed lines of 2") != std::string::npos);
  fs::remove_all(w / "out");
  run = run_lamina(common + " --data " + (w / "text.jsonl") + " --batch-size 3 --micro-batch-size 2");
  CHECK(run.status == 1);
  CHECK(run.output.find("not a multiple of the micro-batch size") != std::string::npos);
  std::ofstream(w / "options.json") << R"({"learning-rate": 1})";
  run = run_lamina(base + (w / "text.jsonl") + " --options " + (w / "options.json"));
  CHECK(run.status == 1);
  CHECK(run.output.find("unknown key \"learning-rate\"") != std::string::npos);
  run = run_lamina(base + (w / "text.jsonl") + " --device tpu");
  CHECK(run.status != 0);
  CHECK(run.output.find("unknown device 'tpu' (expected cpu, cuda or cuda:N)") != std::string::npos);
  run = run_lamina(base + (w / "text.jsonl") + " --precision fp8");
  CHECK(run.status != 0);
  CHECK(run.output.find("precision must be auto, f32 or bf16, got 'fp8'") != std::string::npos);
  CHECK(run_lamina("train pretrian").status == 2);
  CHECK(run_lamina("train sft --data x.jsonl --output o").status == 2);  // no --model
  run = run_lamina("plot " + (w / "missing.jsonl"));
  CHECK(run.status == 1);
  CHECK(run.output.find("cannot open") != std::string::npos);
}

TEST_CASE("an output folder that holds a run: refused, resumed or overwritten, never mixed") {
  Workspace w;
  const std::string pretrain = w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "run") +
                               " --batch-size 2 --seq-len 32 --save-every 1 --quiet --steps ";
  Run run = run_lamina(pretrain + "3");
  INFO(run.output);
  REQUIRE(run.status == 0);
  // A second, shorter run into the same folder used to keep the old step-3 and prune its own.
  run = run_lamina(pretrain + "2");
  CHECK(run.status == 1);
  CHECK(run.output.find("already holds a training run (checkpoints/, metrics.jsonl, model/)") != std::string::npos);
  CHECK(run_lamina(pretrain + "2 --resume --overwrite").status == 2);
  run = run_lamina(pretrain + "2 --overwrite");
  CHECK(run.status == 0);
  CHECK(run.output.find("overwrite: removed the run in") != std::string::npos);
  CHECK(train::read_metrics(w / "run/metrics.jsonl").size() == 2);
  CHECK_FALSE(fs::exists(w / "run/checkpoints/step-00000003"));
  CHECK(fs::exists(w / "run/checkpoints/step-00000002/COMPLETE"));
  CHECK(fs::exists(w / "run/model/tokenizer.json"));
  // A file lamina did not write is never removed: --overwrite refuses, naming it.
  std::ofstream(w / "run/notes.txt") << "mine";
  run = run_lamina(pretrain + "2 --overwrite");
  CHECK(run.status == 1);
  CHECK(run.output.find("holds notes.txt, which lamina did not write") != std::string::npos);
  CHECK(fs::exists(w / "run/notes.txt"));
  CHECK(fs::exists(w / "run/checkpoints/step-00000002/COMPLETE"));
  std::ofstream(w / "run/model/README.md") << "mine";
  fs::remove(w / "run/notes.txt");
  run = run_lamina(pretrain + "2 --overwrite");
  CHECK(run.status == 1);
  CHECK(run.output.find("holds model/README.md") != std::string::npos);
  // A folder holding only other files is not a run to resume or replace.
  fs::create_directories(w / "other");
  std::ofstream(w / "other/data.csv") << "1,2\n";
  run = run_lamina(w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "other") +
                   " --steps 1 --batch-size 2 --seq-len 32 --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("is not empty (it holds data.csv)") != std::string::npos);
}

TEST_CASE("resume names the options that changed, and --allow-option-changes continues") {
  Workspace w;
  const std::string pretrain =
      w.pretrain_command() + " --output " + (w / "run") + " --seq-len 32 --save-every 1 --quiet --schedule constant";
  Run run = run_lamina(pretrain + " --steps 2 --batch-size 2 --lr 0.001 --data " + (w / "text.jsonl"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  run = run_lamina(pretrain + " --steps 2 --batch-size 4 --lr 0.002 --seed 7 --data " + (w / "text.jsonl") + " --resume");
  CHECK(run.status == 1);
  for (const char* change : {"batch-size: 2 -> 4", "micro-batch-size: 2 -> 4", "lr: 0.001 -> 0.002", "seed: 0 -> 7"})
    CHECK(run.output.find(change) != std::string::npos);
  CHECK(run.output.find("--allow-option-changes") != std::string::npos);
  // The data, as a fingerprint of what was trained on: another file is refused too.
  std::ofstream more(w / "more.jsonl");
  for (int i = 0; i < 30; ++i) more << R"({"text": "another line )" << i << R"("})" << "\n";
  more.close();
  run = run_lamina(pretrain + " --batch-size 2 --lr 0.001 --steps 3 --data " + (w / "more.jsonl") + " --resume");
  CHECK(run.status == 1);
  CHECK(run.output.find("training data: 29 examples") != std::string::npos);
  // With a constant schedule more steps keep the run exact: that alone is no change.
  run = run_lamina(pretrain + " --steps 3 --batch-size 2 --lr 0.001 --data " + (w / "more.jsonl") +
                   " --resume --allow-option-changes");
  CHECK(run.status == 0);
  CHECK(run.output.find("continuing with changes that break exactness") != std::string::npos);
  CHECK(run.output.find("training data: 29 examples") != std::string::npos);
  CHECK(run.output.find("steps:") == std::string::npos);
  CHECK(train::read_metrics(w / "run/metrics.jsonl").size() == 3);
  CHECK(run_lamina(pretrain + " --steps 2 --data " + (w / "text.jsonl") + " --allow-option-changes").status == 2);
}

TEST_CASE("training flags: given twice, full-range seeds, --options ranges, context length, vocabulary") {
  Workspace w;
  const std::string pretrain = w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "run") +
                               " --batch-size 2 --seq-len 32 --quiet --steps 1";
  Run run = run_lamina(pretrain + " --lr 0.01 --lr 0.02");
  INFO(run.output);
  CHECK(run.status == 2);
  CHECK(run.output.find("flag --lr is given more than once") != std::string::npos);
  CHECK_FALSE(fs::exists(w / "run"));
  run = run_lamina(pretrain + " --seed 18446744073709551615");
  CHECK(run.status == 0);
  CHECK(json::parse_file(w / "run/checkpoints/step-00000001/trainer.json").at("trainer").at("options").at("seed").as_string() ==
        "18446744073709551615");
  CHECK(run_lamina(pretrain + " --seed 18446744073709551616").status == 2);
  std::ofstream(w / "options.json") << R"({"lr": 1e308})";
  run = run_lamina(pretrain + " --options " + (w / "options.json"));
  CHECK(run.status == 1);
  CHECK(run.output.find("lr (--lr) must be a finite number in [1e-12, 10], got 1e+308") != std::string::npos);
  run = run_lamina(pretrain + " --lr inf");
  CHECK(run.status == 1);
  CHECK(run.output.find("lr (--lr) must be a finite number") != std::string::npos);
  const std::string long_run = w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "long") +
                               " --quiet --steps 1 --seq-len 100000";
  run = run_lamina(long_run);
  CHECK(run.status == 1);
  CHECK(run.output.find("--seq-len 100000 is longer than the model's context, max_position_embeddings 8192") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(w / "long"));
  // SFT checks the tokenizer against the model before reading data, and leaves nothing behind.
  llama::LlamaConfig small = llama::LlamaConfig::load(w / "config.json");
  small.vocab_size = 100;
  small.bos_token_id = 1;
  small.eos_token_ids = {2};
  fs::create_directories(w / "small");
  std::ofstream(w / "small/config.json") << small.to_json().dump();
  run = run_lamina("train sft --model " + (w / "small") + " --tokenizer " + (w / "tokenizer.json") + " --data " +
                   (w / "chat.jsonl") + " --output " + (w / "sft") + " --steps 1 --batch-size 2 --seq-len 48 --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("ids but the model's vocab_size is 100") != std::string::npos);
  CHECK_FALSE(fs::exists(w / "sft"));
}

TEST_CASE("validation is capped by tokens; the held-out rest trains") {
  Workspace w;
  std::ofstream big(w / "big.jsonl");
  char line[64];
  for (int i = 0; i < 400; ++i) {
    std::snprintf(line, sizeof(line), R"({"text": "line %03d of a larger corpus"})", i);  // 27 bytes: 29 tokens
    big << line << "\n";
  }
  big.close();
  const std::string pretrain = w.pretrain_command() + " --data " + (w / "big.jsonl") +
                               " --batch-size 2 --seq-len 32 --quiet --steps 1 --validation-fraction 0.5 --output ";
  Run run = run_lamina(pretrain + (w / "capped") + " --validation-tokens 200");
  INFO(run.output);
  REQUIRE(run.status == 0);
  // 29 tokens an example (with BOS and EOS): 6 of the 200 held out fit in 200; the other 194 train.
  CHECK(run.output.find("validation: 6 of 200 examples (--validation-tokens 200); the others train") != std::string::npos);
  CHECK(run.output.find("data: 394 training examples, 6 validation examples") != std::string::npos);
  run = run_lamina(pretrain + (w / "all") + " --validation-tokens 0");
  CHECK(run.status == 0);
  CHECK(run.output.find("data: 200 training examples, 200 validation examples") != std::string::npos);
}

TEST_CASE("sft: over-long conversations are truncated or dropped with a count; ShareGPT files train") {
  Workspace w;
  {
    std::ofstream data(w / "long.jsonl");
    // A short prompt with a long answer (truncated, keeping the prompt), a prompt that alone
    // fills the row (dropped: no target would remain), and a conversation that fits.
    data << R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ")"
         << std::string(80, 'a') << R"("}]})" << "\n";
    data << R"({"messages": [{"role": "user", "content": ")" << std::string(80, 'q')
         << R"("}, {"role": "assistant", "content": "ok"}]})" << "\n";
    data << R"({"messages": [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]})" << "\n";
    std::ofstream sharegpt(w / "sharegpt.jsonl");
    for (int i = 0; i < 6; ++i)
      sharegpt << R"({"conversations": [{"from": "human", "value": "next after )" << i << R"("}, {"from": "gpt", "value": ")"
               << i + 1 << R"("}]})" << "\n";
  }
  // A model folder (weights, config and tokenizer) to fine-tune.
  Run run = run_lamina(w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "pre") +
                       " --steps 1 --batch-size 1 --quiet");
  REQUIRE(run.status == 0);
  const std::string model = " --model " + (w / "pre/model");
  run = run_lamina("train sft" + model + " --data " + (w / "long.jsonl") + " --output " + (w / "long") +
                   " --steps 1 --batch-size 1 --seq-len 48 --quiet --validation-fraction 0");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("2 examples longer than 49 tokens") != std::string::npos);
  CHECK(run.output.find("1 truncated keeping the prompt") != std::string::npos);
  CHECK(run.output.find("1 dropped") != std::string::npos);
  CHECK(run.output.find("data: 2 training examples") != std::string::npos);
  run = run_lamina("train sft" + model + " --data " + (w / "sharegpt.jsonl") + " --output " + (w / "sharegpt") +
                   " --steps 2 --batch-size 2 --seq-len 48 --quiet");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("fine-tuned 2 steps") != std::string::npos);
  // ShareGPT's roles under "messages" are an unknown role, named with the file and line.
  std::ofstream(w / "wrong.jsonl") << R"({"messages": [{"role": "human", "content": "a"}, {"role": "gpt", "content": "b"}]})"
                                   << "\n";
  run = run_lamina("train sft" + model + " --data " + (w / "wrong.jsonl") + " --output " + (w / "wrong") +
                   " --steps 1 --batch-size 1 --seq-len 48 --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("wrong.jsonl:1:") != std::string::npos);
  CHECK(run.output.find("\"human\"") != std::string::npos);
  CHECK_FALSE(fs::exists(w / "wrong"));
}

// The held-out losses of one row of the demo's closing table ("| stage | statement loss | chat
// loss | accuracy | time |"), or {-1, -1} when the row is missing.
static std::pair<double, double> demo_losses(const std::string& output, const std::string& stage) {
  const size_t row = output.find("| " + stage + " |");
  if (row == std::string::npos) return {-1, -1};
  std::istringstream cells(output.substr(row + stage.size() + 4));
  double statement = -1, chat = -1;
  char bar = 0;
  cells >> statement >> bar >> chat;
  return {statement, chat};
}

TEST_CASE("lamina demo --quick: each stage improves what it trains for (DPO: its loss on its own pairs)") {
  const fs::path output = fs::temp_directory_path() / ("lamina-demo-test-" + std::to_string(::getpid()));
  const Run run = run_lamina("demo --quick --output " + output.string());
  INFO(run.output);
  CHECK(run.status == 0);
  const auto [initial_statement, initial_chat] = demo_losses(run.output, "random init");
  const auto [pretrained_statement, pretrained_chat] = demo_losses(run.output, "after pretraining");
  const auto [tuned_statement, tuned_chat] = demo_losses(run.output, "after fine-tuning");
  REQUIRE(initial_statement > 0);
  REQUIRE(tuned_chat > 0);
  // Random init sits near log(vocabulary) (~5.6); pretraining on statements must at least halve
  // their held-out loss, and fine-tuning must cut the held-out chat loss by a third.
  CHECK(pretrained_statement < 0.5 * initial_statement);
  CHECK(tuned_chat < 0.67 * pretrained_chat);
  CHECK(tuned_statement < initial_statement);  // fine-tuning keeps some of stage 1
  for (const char* file : {"model/model.safetensors", "model/tokenizer.json", "pretrain/metrics.jsonl", "pretrain/loss.svg",
                           "sft/metrics.jsonl", "sft/loss.svg"})
    CHECK(fs::exists(output / file));
  // Stage 3, DPO on the fine-tuned model's own answers: it lowers its loss on its own pairs and
  // has its row in the table.
  // "stage 3: ... give N pairs", then "DPO loss on its pairs 0.693 -> X".
  const size_t stage = run.output.find("stage 3: DPO on the fine-tuned model's own answers");
  REQUIRE(stage != std::string::npos);
  const size_t pairs_at = run.output.find(" pairs (", stage);
  REQUIRE(pairs_at != std::string::npos);
  const size_t count_start = run.output.rfind(' ', pairs_at - 1) + 1;
  CHECK(std::stoll(run.output.substr(count_start, pairs_at - count_start)) > 0);
  const std::string loss_text = "DPO loss on its pairs 0.693 -> ";
  const size_t loss_at = run.output.find(loss_text, stage);
  REQUIRE(loss_at != std::string::npos);
  CHECK(std::stod(run.output.substr(loss_at + loss_text.size())) < 0.69);
  // The closing table has the stage's row after fine-tuning's: losses, accuracy and time.
  const size_t tuned_row = run.output.find("| after fine-tuning |");
  const size_t dpo_row = run.output.find("| after DPO |");
  REQUIRE(tuned_row != std::string::npos);
  REQUIRE(dpo_row != std::string::npos);
  CHECK(dpo_row > tuned_row);
  std::istringstream cells(run.output.substr(dpo_row + std::string("| after DPO |").size()));
  double statement_loss = -1, chat_loss = -1, accuracy = -1;
  char bar = 0;
  cells >> statement_loss >> bar >> chat_loss >> bar >> accuracy;
  CHECK(statement_loss > 0);
  CHECK(chat_loss > 0);
  CHECK(accuracy >= 0);
  CHECK(accuracy <= 100);
  for (const char* file : {"dpo/metrics.jsonl", "dpo/loss.svg", "model/model.safetensors"}) {
    CAPTURE(file);
    CHECK(fs::exists(output / file));
  }
  // Stage 4, GRPO rewarded by exact_match: it ran its steps, wrote its samples, and has its row
  // after DPO's, with the greedy and the sampled held-out accuracy.
  CHECK(run.output.find("stage 4: GRPO on the ", stage) != std::string::npos);
  CHECK(run.output.find("rewarded by exact_match") != std::string::npos);
  CHECK(run.output.find("reward (the share of a step's sampled answers that are right)") != std::string::npos);
  const size_t grpo_row = run.output.find("| after GRPO |");
  REQUIRE(grpo_row != std::string::npos);
  CHECK(grpo_row > dpo_row);
  std::istringstream grpo_cells(run.output.substr(grpo_row + std::string("| after GRPO |").size()));
  double greedy = -1, sampled = -1;
  char percent = 0;
  grpo_cells >> statement_loss >> bar >> chat_loss >> bar >> greedy >> percent >> bar >> sampled;
  CHECK(chat_loss > 0);
  CHECK(greedy >= 0);
  CHECK(greedy <= 100);
  CHECK(sampled >= 0);
  CHECK(sampled <= 100);
  CHECK(run.output.find("GRPO: held-out answers ") != std::string::npos);
  for (const char* file : {"grpo/metrics.jsonl", "grpo/loss.svg", "grpo/samples.jsonl"}) {
    CAPTURE(file);
    CHECK(fs::exists(output / file));
  }
  // 3 steps of 8 questions x 4 answers, each rewarded 0 or 1 by the rule.
  std::ifstream samples(output / "grpo/samples.jsonl");
  int64_t sample_lines = 0;
  for (std::string line; std::getline(samples, line); ++sample_lines) {
    const json::Value sample = json::parse(line, "samples.jsonl");
    const double reward = sample.at("reward").as_double();
    CHECK((reward == 0 || reward == 1));
    CHECK(sample.find("advantage") != nullptr);
  }
  CHECK(sample_lines == 3 * 8 * 4);
  fs::remove_all(output);
}
