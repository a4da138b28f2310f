// `lamina train online-dpo|inpo --judge` and the reward_model= reward end to end on a tiny
// byte-level model: a shell judge that picks the second completion makes exactly those pairs and
// is sent the documented JSONL; a failing judge, a judge with G != 2 and a judge on another kind
// are clear errors; a reward model trained by `lamina train reward` ranks a known pair as `lamina
// score --reward-model` does, scores the completions of an online run, and judges them.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"
#include "tools/train_workspace.h"
#include "train/judges.h"
#include "train/model_reward.h"
#include "train/rewards.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A policy, prompts with fields, a judge that keeps a copy of its input and always answers 1,
// and polite-versus-curt pairs to train a reward model on.
struct JudgeWorkspace : ScratchDir {
  JudgeWorkspace() : ScratchDir("cli-online-judges") {
    save_byte_level_model(*this / "model", 3, 0.3);
    std::ofstream prompts(path / "prompts.jsonl");
    for (int i = 0; i < 4; ++i)
      prompts << R"({"prompt": "request )" << i << R"(:", "answer": ")" << i + 1 << R"(", "id": )" << i << "}\n";
    std::ofstream(path / "second.sh") << "while IFS= read -r line; do\n  printf '%s\\n' \"$line\" >> '"
                                      << (*this / "seen.jsonl") << "'\n  echo 1\ndone\n";
    std::ofstream pairs(path / "pairs.jsonl");
    for (int i = 0; i < 12; ++i)
      pairs << R"({"prompt": "request )" << i << R"(:", "chosen": " yes, gladly", "rejected": " )"
            << (i % 2 == 0 ? "no" : "go away") << R"("})" << "\n";
  }
  std::string command(const std::string& kind, const std::string& output) const {
    return "train " + kind + " --model " + (*this / "model") + " --prompts " + (*this / "prompts.jsonl") +
           " --output " + (*this / output) + " --prompts-per-step 2 --max-new-tokens 5 --lr 1e-2 --schedule constant "
           "--seed 5 --quiet";
  }
  std::string second() const { return "command=\"sh " + (*this / "second.sh") + "\""; }
};

std::vector<json::Value> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

}  // namespace

TEST_CASE("lamina train online-dpo --judge: the judge's choice makes each pair, from the documented JSONL") {
  const JudgeWorkspace dir;
  Run run = run_lamina(dir.command("online-dpo", "run") + " --steps 2 --judge '" + dir.second() + "'");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("reward none, judge command=") != std::string::npos);
  const std::vector<json::Value> samples = lines_of(dir / "run/samples.jsonl");
  const std::vector<json::Value> seen = lines_of(dir / "seen.jsonl");
  REQUIRE(samples.size() == 2 * 2 * 2);
  REQUIRE(seen.size() == samples.size() / 2);
  for (size_t i = 0; i < samples.size(); i += 2) {
    CHECK(samples[i].at("chosen").as_bool() == false);
    CHECK(samples[i + 1].at("chosen").as_bool() == true);
    CHECK(samples[i].find("reward") == nullptr);  // no --reward: nothing scored
    CHECK(samples[i].at("prompt_index").as_int64() == samples[i + 1].at("prompt_index").as_int64());
    // {"prompt", "completions": [first, second], the line's other fields}, in that order.
    const json::Value& line = seen[i / 2];
    const int64_t index = samples[i].at("prompt_index").as_int64();
    json::Value expected = json::Object{};
    expected.set("prompt", str_cat("request ", index, ":"));
    expected.set("completions", json::Array{samples[i].at("completion"), samples[i + 1].at("completion")});
    expected.set("answer", std::to_string(index + 1));
    expected.set("id", index);
    CHECK(line.dump() == expected.dump());
  }
  const std::vector<json::Value> metrics = lines_of(dir / "run/metrics.jsonl");
  REQUIRE(metrics.size() == 2);
  CHECK(metrics.back().find("rewards/margins") != nullptr);
  CHECK(metrics.back().find("completions/mean_length") != nullptr);

  // inpo with a reward too: scored for the metrics, the judge still decides.
  run = run_lamina(dir.command("inpo", "inpo") + " --steps 1 --reward length=3 --judge '" + dir.second() + "'");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const std::vector<json::Value> inpo = lines_of(dir / "inpo/samples.jsonl");
  REQUIRE(inpo.size() == 4);
  for (size_t i = 0; i < inpo.size(); ++i) {
    CHECK(inpo[i].find("reward") != nullptr);
    CHECK(inpo[i].at("chosen").as_bool() == (i % 2 == 1));
  }
  CHECK(lines_of(dir / "inpo/metrics.jsonl").back().find("reward") != nullptr);
}

TEST_CASE("lamina train online-dpo --judge: a failing judge, G != 2 and other kinds are clear errors") {
  const JudgeWorkspace dir;
  Run run = run_lamina(dir.command("online-dpo", "bad") + " --steps 1 --judge 'command=\"exit 4\"'");
  CHECK(run.status == 1);
  CHECK(run.output.find("judge command 'exit 4' exited with status 4 while judging 2 pairs") != std::string::npos);
  run = run_lamina(dir.command("online-dpo", "bad") + " --steps 1 --judge 'command=\"while read -r l; do echo 3; done\"'");
  CHECK(run.status == 1);
  CHECK(run.output.find("judge command 'while read -r l; do echo 3; done': output line 1 is not 0, 1 or "
                        "{\"choice\": 0 or 1} (the index of the better completion): 3") != std::string::npos);
  run = run_lamina(dir.command("online-dpo", "bad") + " --steps 1 --num-generations 3 --judge '" + dir.second() + "'");
  CHECK(run.status == 2);
  CHECK(run.output.find("--num-generations must be 2") != std::string::npos);
  run = run_lamina(dir.command("online-dpo", "bad") + " --steps 1 --judge nonsense");
  CHECK(run.status == 1);
  CHECK(run.output.find("unknown judge 'nonsense'") != std::string::npos);
  run = run_lamina(dir.command("online-dpo", "bad") + " --steps 1 --judge '" + dir.second() + "' --validation " +
                   (dir / "prompts.jsonl"));
  CHECK(run.status == 2);
  CHECK(run.output.find("--judge without --reward") != std::string::npos);
  run = run_lamina(dir.command("rebel", "bad") + " --steps 1 --judge '" + dir.second() + "'");
  CHECK(run.status == 2);
  run = run_lamina("train online-dpo --help");
  REQUIRE(run.status == 0);
  CHECK(run.output.find("--judge SPEC") != std::string::npos);
  CHECK(run.output.find("reward_model=DIR") != std::string::npos);
}

TEST_CASE("reward_model=DIR: a trained reward model ranks a known pair, as `lamina score` does, online too") {
  const JudgeWorkspace dir;
  Run run = run_lamina("train reward --model " + (dir / "model") + " --data " + (dir / "pairs.jsonl") + " --output " +
                       (dir / "rm") + " --batch-size 4 --lr 3e-2 --schedule constant --weight-decay 0 --steps 24 --quiet");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const std::string folder = dir / "rm/model";
  // The known pair: the polite answer above the curt one, for a prompt it never saw.
  const std::unique_ptr<train::Reward> reward = train::make_reward("reward_model=" + folder);
  train::RewardInput polite, curt;
  polite.prompt = curt.prompt = "request 40:";
  polite.completion = " yes, gladly";
  curt.completion = " no";
  const std::vector<double> scores = reward->score({polite, curt}).total;
  CHECK(scores[0] > scores[1]);
  // The same numbers `lamina score --reward-model` prints for that pair.
  std::ofstream(dir.path / "known.jsonl") << R"({"prompt": "request 40:", "chosen": " yes, gladly", "rejected": " no"})"
                                          << "\n";
  run = run_lamina("score --reward-model " + folder + " --data " + (dir / "known.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const json::Value scored = json::parse(run.output.substr(run.output.find("{\"line\":1"),
                                                           run.output.find('\n', run.output.find("{\"line\":1")) -
                                                               run.output.find("{\"line\":1")));
  CHECK(scored.at("chosen_reward").as_double() == doctest::Approx(scores[0]).epsilon(1e-6));
  CHECK(scored.at("rejected_reward").as_double() == doctest::Approx(scores[1]).epsilon(1e-6));
  CHECK(train::make_judge("reward_model=" + folder)->judge({{"request 40:", " no", " yes, gladly"}}) ==
        std::vector<int>{1});

  // Online: each completion's reward is the reward model's score of it (of the text samples.jsonl
  // holds: broken characters replaced by U+FFFD in both).
  run = run_lamina(dir.command("online-dpo", "scored") + " --steps 3 --temperature 0.3 --reward "
                   "reward_model=" + folder);
  REQUIRE_MESSAGE(run.status == 0, run.output);
  std::vector<double> online_rewards;
  for (const json::Value& sample : lines_of(dir / "scored/samples.jsonl")) {
    online_rewards.push_back(sample.at("reward").as_double());
    train::RewardInput input;
    input.prompt = str_cat("request ", sample.at("prompt_index").as_int64(), ":");
    input.completion = sample.at("completion").as_string();
    CHECK(sample.at("reward").as_double() == doctest::Approx(reward->score({input}).total[0]).epsilon(1e-5));
  }
  REQUIRE(online_rewards.size() == 3 * 2 * 2);
  CHECK(*std::min_element(online_rewards.begin(), online_rewards.end()) <
        *std::max_element(online_rewards.begin(), online_rewards.end()));
  run = run_lamina(dir.command("online-dpo", "judged") + " --steps 1 --judge reward_model=" + folder);
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("judge reward_model=") != std::string::npos);
  // Not a reward model: the policy folder.
  run = run_lamina(dir.command("online-dpo", "bad") + " --steps 1 --reward reward_model=" + (dir / "model"));
  CHECK(run.status == 1);
  CHECK(run.output.find("not a reward model") != std::string::npos);
}
