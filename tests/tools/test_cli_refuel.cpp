// `lamina train refuel` end to end on a tiny byte-level chat model: the help names its flags and
// an unknown flag is refused; a run with the scripted user writes REBEL's metrics and both
// dialogues of each start to samples.jsonl; a command user simulator is called and a failing one
// is a clear error; a run killed mid-way resumes to the same samples and metrics; bad start
// lines name the file and line.
#include <filesystem>
#include <fstream>

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

// A random byte-level model with its tokenizer, dialogue starts with a script of user turns.
struct RefuelWorkspace : ScratchDir {
  RefuelWorkspace() : ScratchDir("cli-train-refuel") {
    llama::LlamaConfig config = byte_level_llama_config();
    config.initializer_range = 0.3;
    random_llama(config, 3)->save(*this / "model");
    std::ofstream(path / "model" / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
    std::ofstream starts(path / "starts.jsonl");
    for (int i = 0; i < 4; ++i)
      starts << R"({"prompt": "count to )" << i + 2 << R"(", "user_turns": ["and again", "once more"], "id": )" << i
             << "}\n";
    // Answers "go on <turn>", keeping what it was sent.
    std::ofstream(path / "user.sh") << "while IFS= read -r line; do\n  printf '%s\\n' \"$line\" >> '" << (*this / "seen.jsonl")
                                    << "'\n  echo '\"go on\"'\ndone\n";
  }
  std::string command(const std::string& output, const std::string& extra = "", int turns = 3) const {
    return "train refuel --model " + (*this / "model") + " --prompts " + (*this / "starts.jsonl") + " --output " +
           (*this / output) + " --reward length=3 --turns " + std::to_string(turns) + " --prompts-per-step 2 --max-new-tokens 4 --temperature 1 " +
           "--lr 1e-2 --schedule constant --seed 5 --quiet" + extra;
  }
};

std::vector<json::Value> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

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

TEST_CASE("lamina train refuel --help names its flags, and an unknown flag is refused") {
  Run run = run_lamina("train refuel --help");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  for (const char* flag : {"--model", "--prompts", "--reward", "--turns", "--user-simulator", "--prompts-per-step",
                           "--prompts-per-forward", "--temperature", "--max-new-tokens", "--loss-params", "--steps",
                           "--resume", "--validation"})
    CHECK_MESSAGE(run.output.find(flag) != std::string::npos, flag);
  CHECK(run.output.find("command=CMD") != std::string::npos);
  CHECK(run.output.find("user_turns") != std::string::npos);
  run = run_lamina("train --help");
  CHECK(run.output.find("refuel") != std::string::npos);
  run = run_lamina("train refuel --model m --prompts p --output o --num-generations 4");
  CHECK(run.status == 2);
  CHECK(run.output.find("--num-generations") != std::string::npos);
  run = run_lamina("train refule");
  CHECK(run.status == 2);
  CHECK(run.output.find("did you mean 'refuel'") != std::string::npos);
}

TEST_CASE("lamina train refuel trains on forked dialogues, logs REBEL's metrics and both dialogues of each start") {
  const RefuelWorkspace dir;
  const Run run = run_lamina(dir.command("run", " --steps 3 --validation " + (dir / "starts.jsonl")));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("trained 3 steps; reward ") != std::string::npos);
  CHECK(run.output.find("loss refuel (eta 1), reward length=3, user simulator script") != std::string::npos);
  const std::vector<json::Value> metrics = lines_of(dir / "run/metrics.jsonl");
  REQUIRE(metrics.size() == 3);
  for (const char* key : {"loss", "sign_align", "logratios/first", "logratios/second", "reward_gap", "reward",
                          "reward_std", "frac_reward_zero_std", "completions/mean_length", "turn_h/mean", "grad_norm",
                          "val_reward"})
    CHECK_MESSAGE(metrics.back().find(key) != nullptr, key);
  const std::vector<json::Value> samples = lines_of(dir / "run/samples.jsonl");
  REQUIRE(samples.size() == 3 * 2);
  for (const json::Value& sample : samples) {
    const int64_t h = sample.at("turn").as_int64();
    CHECK((h >= 1 && h <= 3));
    const int64_t index = sample.at("prompt_index").as_int64();
    CHECK(sample.at("line").as_int64() == index + 1);
    for (const char* branch : {"first", "second"}) {
      const json::Value& dialogue = sample.at(branch);
      const json::Array& messages = dialogue.at("messages").as_array();
      REQUIRE(messages.size() == 6);
      CHECK(messages[0].at("content").as_string() == str_cat("count to ", index + 2));
      CHECK(messages[2].at("content").as_string() == "and again");
      CHECK(messages[4].at("content").as_string() == "once more");
      CHECK(messages[5].at("role").as_string() == "assistant");
      CHECK(dialogue.at("reward").is_number());
      CHECK(dialogue.at("turn_tokens").as_int64() >= 1);
    }
    // The two dialogues share everything before turn h.
    const json::Array& first = sample.at("first").at("messages").as_array();
    const json::Array& second = sample.at("second").at("messages").as_array();
    for (size_t m = 0; m < size_t(2 * h - 1); ++m) CHECK(first[m].dump() == second[m].dump());
  }
  CHECK(fs::exists(dir.path / "run/model/model.safetensors"));
}

TEST_CASE("lamina train refuel killed after step 3 resumes to the same samples and metrics") {
  const RefuelWorkspace dir;
  const std::string flags = " --steps 4 --save-every 2";
  Run run = run_lamina(dir.command("whole", flags));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  run = run_lamina(dir.command("cut", flags), {"LAMINA_FAILPOINT=train.after-step@3:kill"});
  CHECK(run.status == 128 + 9);
  CHECK(lines_of(dir / "cut/samples.jsonl").size() == 3 * 2);
  run = run_lamina(dir.command("cut", flags + " --resume"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(file_bytes(dir.path / "cut/samples.jsonl") == file_bytes(dir.path / "whole/samples.jsonl"));
  CHECK(comparable(lines_of(dir / "cut/metrics.jsonl")) == comparable(lines_of(dir / "whole/metrics.jsonl")));
  // Another simulator is another run.
  run = run_lamina(dir.command("cut", " --steps 6 --save-every 2 --resume --user-simulator 'command=sh " +
                                          (dir / "user.sh") + "'"));
  CHECK(run.status == 1);
  CHECK(run.output.find("user_simulator") != std::string::npos);
}

TEST_CASE("lamina train refuel: a command user simulator is called; bad simulators and start lines are clear errors") {
  const RefuelWorkspace dir;
  Run run = run_lamina(dir.command("command", " --steps 1 --user-simulator 'command=sh " + (dir / "user.sh") + "'"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  for (const json::Value& sample : lines_of(dir / "command/samples.jsonl"))
    CHECK(sample.at("first").at("messages").as_array()[2].at("content").as_string() == "go on");
  const std::vector<json::Value> seen = lines_of(dir / "seen.jsonl");
  REQUIRE(!seen.empty());
  CHECK(seen[0].at("messages").as_array().back().at("role").as_string() == "assistant");
  CHECK(seen[0].find("id") != nullptr);
  // Another model (here the policy's own start) as the user: its greedy words, not the script's.
  run = run_lamina(dir.command("model-user", " --steps 1 --user-simulator model=" + (dir / "model")));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("user simulator model=") != std::string::npos);
  for (const json::Value& sample : lines_of(dir / "model-user/samples.jsonl")) {
    const json::Array& messages = sample.at("first").at("messages").as_array();
    CHECK(messages[1].at("role").as_string() == "assistant");
    CHECK(messages[2].at("role").as_string() == "user");
    CHECK(messages[2].at("content").as_string() != "and again");
  }
  run = run_lamina(dir.command("bad", " --steps 1 --user-simulator 'command=exit 5'"));
  CHECK(run.status == 1);
  CHECK(run.output.find("user simulator command 'exit 5' exited with status 5") != std::string::npos);
  run = run_lamina(dir.command("bad2", " --steps 1 --user-simulator robot"));
  CHECK(run.status == 2);
  CHECK(run.output.find("'robot' is not one of: script, command=CMD, model=DIR") != std::string::npos);
  run = run_lamina(dir.command("bad3", " --steps 1", 4));
  CHECK(run.status == 1);
  CHECK(run.output.find("starts.jsonl:1: has 2 \"user_turns\", and --turns 4 needs 3") != std::string::npos);
  std::ofstream(dir.path / "broken.jsonl") << R"({"prompt": "a", "user_turns": ["b"]})" << "\n"
                                           << R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]})"
                                           << "\n";
  run = run_lamina("train refuel --model " + (dir / "model") + " --prompts " + (dir / "broken.jsonl") + " --output " +
                   (dir / "bad4") + " --quiet");
  CHECK(run.status == 1);
  CHECK(run.output.find("broken.jsonl:2: the dialogue's start must end with the user's message") != std::string::npos);
}
