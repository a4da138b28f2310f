// `lamina train grpo|rloo|online-dpo|inpo|rebel|spin` end to end on a tiny byte-level model: TRL's
// metric names, samples.jsonl, an external judge that sees each prompt line's fields, a run killed
// mid-way (also in the middle of an iteration) resuming to the same metrics and samples, SPIN on
// SFT lines, and clear errors for bad prompts, specs, judges and data without answers.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A random byte-level model with its tokenizer, prompts with an "answer", and a judge that
// scores a completion by its length (mod 7) and keeps a copy of what it was sent.
struct OnlineWorkspace : ScratchDir {
  OnlineWorkspace() : ScratchDir("cli-train-online") {
    llama::LlamaConfig config = byte_level_llama_config();
    config.initializer_range = 0.3;
    random_llama(config, 3)->save(*this / "model");
    std::ofstream(path / "model" / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
    std::ofstream prompts(path / "prompts.jsonl");
    for (int i = 0; i < 6; ++i)
      prompts << R"({"prompt": "add one to )" << i << R"(:", "answer": ")" << i + 1 << R"(", "id": )" << i << "}\n";
    std::ofstream(path / "judge.sh") << "while IFS= read -r line; do\n  printf '%s\\n' \"$line\" >> '" << (*this / "seen.jsonl")
                                     << "'\n  echo $(( $(printf '%s' \"$line\" | wc -c) % 7 ))\ndone\n";
    std::ofstream(path / "pairs.jsonl") << R"({"prompt": "a", "chosen": "b", "rejected": "c"})" << "\n";
    std::ofstream sft(path / "sft.jsonl");
    for (int i = 0; i < 4; ++i)
      sft << R"({"prompt": "add one to )" << i << R"(:", "completion": " )" << i + 1 << R"("})" << "\n";
    std::ofstream chat(path / "chat.jsonl");
    for (int i = 0; i < 2; ++i)
      chat << R"({"messages": [{"role": "user", "content": "add one to )" << i
           << R"("}, {"role": "assistant", "content": ")" << i + 1 << R"("}]})" << "\n";
    std::ofstream(path / "chat_no_answer.jsonl") << R"({"messages": [{"role": "user", "content": "hi"}]})" << "\n";
  }
  std::string command(const std::string& kind, const std::string& output, const std::string& reward) const {
    return "train " + kind + " --model " + (*this / "model") + " --prompts " + (*this / "prompts.jsonl") + " --output " +
           (*this / output) + " --reward '" + reward + "' --prompts-per-step 2 --num-generations 3 --max-new-tokens 6 " +
           "--lr 1e-2 --schedule constant --seed 5 --quiet";
  }
  std::string judge() const { return "command=\"sh " + (*this / "judge.sh") + "\""; }
  std::string spin(const std::string& output, const std::string& data = "sft.jsonl") const {
    return "train spin --model " + (*this / "model") + " --data " + (*this / data) + " --output " + (*this / output) +
           " --prompts-per-step 2 --iteration-steps 2 --max-new-tokens 4 --lr 1e-2 --schedule constant --seed 5 --quiet";
  }
};

std::vector<json::Value> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

// Metrics without the timing and memory fields, which differ between runs.
std::string comparable(const std::vector<json::Value>& lines) {
  std::string out;
  for (const json::Value& line : lines) {
    json::Value kept = json::Object{};
    for (const auto& [key, value] : line.as_object())
      if (key != "tokens_per_s" && key != "flops_per_s" && key != "peak_rss_bytes" && key != "peak_tensor_bytes")
        kept.set(key, value);
    out += kept.dump() + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("lamina train grpo samples, asks the judge, and logs TRL's metrics and every sample") {
  const OnlineWorkspace dir;
  const Run run = run_lamina(dir.command("grpo", "run", dir.judge()) + " --steps 3 --beta 0.04 --validation " +
                             (dir / "prompts.jsonl") + " --eval-every 2");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("trained 3 steps; reward ") != std::string::npos);
  CHECK(run.output.find("loss grpo, reference copy") != std::string::npos);
  const std::vector<json::Value> metrics = lines_of(dir / "run/metrics.jsonl");
  REQUIRE(metrics.size() == 3);
  CHECK(metrics[1].find("val_reward") != nullptr);  // --eval-every 2, and at the end
  CHECK(metrics[0].find("val_reward") == nullptr);
  CHECK(metrics[2].find("val_reward") != nullptr);
  for (const char* key : {"loss", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                          "completions/clipped_ratio", "kl", "clip_ratio/region_mean", "grad_norm"})
    CHECK_MESSAGE(metrics.back().find(key) != nullptr, key);
  const std::vector<json::Value> samples = lines_of(dir / "run/samples.jsonl");
  REQUIRE(samples.size() == 3 * 2 * 3);
  // The judge also scored the 6 validation completions of each of the two evaluations (after step 2's
  // samples and after step 3's): those lines are left out below.
  std::vector<json::Value> seen = lines_of(dir / "seen.jsonl");
  REQUIRE(seen.size() == samples.size() + 2 * 6);
  seen.erase(seen.begin() + 12, seen.begin() + 18);
  seen.resize(samples.size());
  std::vector<std::string> seen_text;
  std::ifstream seen_file(dir.path / "seen.jsonl");
  for (std::string line; std::getline(seen_file, line);) seen_text.push_back(line);
  seen_text.erase(seen_text.begin() + 12, seen_text.begin() + 18);
  for (size_t i = 0; i < samples.size(); ++i) {
    // The judge got the line's prompt and fields with the completion, and its answer is the reward.
    const int64_t index = samples[i].at("prompt_index").as_int64();
    CHECK(seen[i].at("prompt").as_string() == str_cat("add one to ", index, ":"));
    CHECK(seen[i].at("answer").as_string() == std::to_string(index + 1));
    CHECK(seen[i].at("id").as_int64() == index);
    CHECK(seen[i].at("completion").as_string() == samples[i].at("completion").as_string());
    CHECK(samples[i].at("reward").as_double() == double(seen_text[i].size() % 7));
    CHECK(samples[i].at("line").as_int64() == index + 1);
    CHECK(samples[i].find("advantage") != nullptr);
  }
  CHECK(fs::exists(dir.path / "run/model/model.safetensors"));
  CHECK(fs::exists(dir.path / "run/model/tokenizer.json"));
}

TEST_CASE("lamina train grpo killed after step 3 resumes to the same metrics and samples.jsonl") {
  const OnlineWorkspace dir;
  const std::string flags = " --steps 4 --save-every 2 --beta 0.04";
  Run run = run_lamina(dir.command("grpo", "whole", "length=4") + flags);
  REQUIRE_MESSAGE(run.status == 0, run.output);
  // Killed once step 3's samples are written, before its metrics line (the checkpoint is step 2's).
  run = run_lamina(dir.command("grpo", "cut", "length=4") + flags, {"LAMINA_FAILPOINT=train.after-step@3:kill"});
  CHECK(run.status == 128 + 9);
  CHECK(lines_of(dir / "cut/samples.jsonl").size() == 3 * 6);
  run = run_lamina(dir.command("grpo", "cut", "length=4") + flags + " --resume");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(lines_of(dir / "cut/samples.jsonl").size() == 4 * 6);
  CHECK(file_bytes(dir.path / "cut/samples.jsonl") == file_bytes(dir.path / "whole/samples.jsonl"));
  CHECK(comparable(lines_of(dir / "cut/metrics.jsonl")) == comparable(lines_of(dir / "whole/metrics.jsonl")));
  // A changed reward is a changed run.
  run = run_lamina(dir.command("grpo", "cut", "length=5") + " --steps 6 --save-every 2 --beta 0.04 --resume");
  CHECK(run.status == 1);
  CHECK(run.output.find("length=5") != std::string::npos);
  // samples.jsonl is one of the run's files: refused without --resume or --overwrite, replaced with --overwrite.
  run = run_lamina(dir.command("grpo", "cut", "length=4") + " --steps 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("already holds a training run") != std::string::npos);
  run = run_lamina(dir.command("grpo", "cut", "length=4") + " --steps 1 --overwrite");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(lines_of(dir / "cut/samples.jsonl").size() == 6);
}

TEST_CASE("lamina train rloo, online-dpo, inpo and rebel run on the same engine") {
  const OnlineWorkspace dir;
  Run run = run_lamina(dir.command("rloo", "rloo", "max_length=3") + " --steps 2");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(lines_of(dir / "rloo/metrics.jsonl").back().find("kl") != nullptr);  // beta 0.05 by default
  run = run_lamina(dir.command("online-dpo", "dpo", "length=3") + " --steps 2");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const std::vector<json::Value> metrics = lines_of(dir / "dpo/metrics.jsonl");
  CHECK(metrics.back().find("rewards/margins") != nullptr);
  CHECK(metrics.back().at("objective/scores_margin").as_double() >= 0);
  int chosen = 0;
  for (const json::Value& sample : lines_of(dir / "dpo/samples.jsonl"))
    chosen += sample.at("chosen").is_bool() && sample.at("chosen").as_bool() ? 1 : 0;
  CHECK(chosen == 2 * 2);  // one per group
  run = run_lamina(dir.command("inpo", "inpo", "length=3") + " --steps 2 --loss-params eta=0.01,tau=0.002");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(lines_of(dir / "inpo/metrics.jsonl").back().find("inpo/h") != nullptr);
  run = run_lamina(dir.command("rebel", "rebel", "length=3") + " --steps 2");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("reference none") != std::string::npos);
}

TEST_CASE("lamina train grpo: bad prompts, reward specs, losses and judges are clear errors") {
  const OnlineWorkspace dir;
  Run run = run_lamina("train grpo --model " + (dir / "model") + " --prompts " + (dir / "pairs.jsonl") + " --output " +
                       (dir / "bad") + " --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("needs prompt-only lines") != std::string::npos);
  run = run_lamina(dir.command("grpo", "bad", "exact_match:lots"));
  CHECK(run.status == 1);
  CHECK(run.output.find("the weight of 'exact_match' is not a number") != std::string::npos);
  run = run_lamina(dir.command("grpo", "bad", "exact_match") + " --loss rloo");
  CHECK(run.status == 2);
  CHECK(run.output.find("lamina train rloo") != std::string::npos);
  run = run_lamina(dir.command("grpo", "bad", "command=\"exit 4\"") + " --steps 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("reward command 'exit 4' exited with status 4") != std::string::npos);
  CHECK_FALSE(fs::exists(dir.path / "bad/samples.jsonl"));
}

TEST_CASE("lamina train inpo --iteration-steps samples once per iteration and resumes mid-iteration exactly") {
  const OnlineWorkspace dir;
  const std::string flags = " --steps 4 --save-every 2 --iteration-steps 3 --loss-params eta=0.01,tau=0.002";
  Run run = run_lamina(dir.command("inpo", "whole", "length=3") + flags);
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("iterations of 3 steps") != std::string::npos);
  // Iterations start at steps 1 and 4, each with 2 x 3 prompts of 3 completions.
  const std::vector<json::Value> samples = lines_of(dir / "whole/samples.jsonl");
  REQUIRE(samples.size() == 2 * 6 * 3);
  for (size_t i = 0; i < samples.size(); ++i) CHECK(samples[i].at("step").as_int64() == (i < 18 ? 1 : 4));
  CHECK(lines_of(dir / "whole/metrics.jsonl").size() == 4);
  // Killed after step 3: the checkpoint (step 2) is in the middle of the first iteration.
  run = run_lamina(dir.command("inpo", "cut", "length=3") + flags, {"LAMINA_FAILPOINT=train.after-step@3:kill"});
  CHECK(run.status == 128 + 9);
  run = run_lamina(dir.command("inpo", "cut", "length=3") + flags + " --resume");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(file_bytes(dir.path / "cut/samples.jsonl") == file_bytes(dir.path / "whole/samples.jsonl"));
  CHECK(comparable(lines_of(dir / "cut/metrics.jsonl")) == comparable(lines_of(dir / "whole/metrics.jsonl")));
  CHECK(file_bytes(dir.path / "cut/model/model.safetensors") == file_bytes(dir.path / "whole/model/model.safetensors"));
  // Another iteration length is another run.
  run = run_lamina(dir.command("inpo", "cut", "length=3") + " --steps 6 --save-every 2 --iteration-steps 2 "
                   "--loss-params eta=0.01,tau=0.002 --resume");
  CHECK(run.status == 1);
  CHECK(run.output.find("iteration_steps") != std::string::npos);
  run = run_lamina(dir.command("grpo", "bad", "length=3") + " --steps 1 --iteration-steps 2");
  CHECK(run.status == 2);
  run = run_lamina(dir.command("inpo", "bad", "length=3") + " --steps 1 --iteration-steps 0");
  CHECK(run.status == 2);
  CHECK(run.output.find("--iteration-steps") != std::string::npos);
}

TEST_CASE("lamina train spin pairs the data's answers with the model's responses, and needs answers") {
  const OnlineWorkspace dir;
  Run run = run_lamina(dir.spin("spin") + " --steps 4");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("loss spin, reference none, reward none") != std::string::npos);
  const std::vector<json::Value> metrics = lines_of(dir / "spin/metrics.jsonl");
  REQUIRE(metrics.size() == 4);
  for (const char* key : {"rewards/real", "rewards/generated", "rewards/margins", "logps/real", "completions/mean_length"})
    CHECK_MESSAGE(metrics.back().find(key) != nullptr, key);
  // The policy is its opponent at an iteration's first step, and has moved toward the answers by its second.
  CHECK(metrics[0].at("rewards/margins").as_double() == 0.0);
  CHECK(metrics[1].at("rewards/margins").as_double() > 0.0);
  // Iterations at steps 1 and 3, each generating one (greedy) response to each of its 4 prompts.
  const std::vector<json::Value> samples = lines_of(dir / "spin/samples.jsonl");
  REQUIRE(samples.size() == 2 * 4);
  for (size_t i = 0; i < samples.size(); ++i) {
    CHECK(samples[i].at("step").as_int64() == (i < 4 ? 1 : 3));
    CHECK(samples[i].at("chosen").as_bool() == false);
  }
  // A prompt-only file has no answers to learn.
  run = run_lamina(dir.spin("bad", "prompts.jsonl") + " --steps 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("prompts.jsonl:1") != std::string::npos);
  CHECK(run.output.find("trains on the data's own answers") != std::string::npos);
  // Chat lines: the last message is the answer.
  run = run_lamina(dir.spin("chat", "chat.jsonl") + " --steps 2");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  // The pool of P x K = 4 prompts draws the 2 lines of two epochs.
  const std::vector<json::Value> chat_samples = lines_of(dir / "chat/samples.jsonl");
  REQUIRE(chat_samples.size() == 4);
  CHECK(chat_samples[0].at("line").as_int64() + chat_samples[1].at("line").as_int64() == 3);
  run = run_lamina(dir.spin("bad", "chat_no_answer.jsonl") + " --steps 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("chat_no_answer.jsonl:1") != std::string::npos);
  CHECK(run.output.find("the assistant") != std::string::npos);
  run = run_lamina(dir.spin("bad") + " --steps 1 --validation " + (dir / "sft.jsonl"));
  CHECK(run.status == 2);
  CHECK(run.output.find("--validation") != std::string::npos);
}
