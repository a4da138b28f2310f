// Rewards and judges beyond the rules (train/model_reward.h, train/judges.h): a reward model's
// scores as a reward term, equal to the scorer `lamina score --reward-model` uses and to each row
// scored alone; the pairwise judges' protocol (what an external judge is sent, what it must
// answer), their errors, and a reward model as a judge.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "autograd/autograd.h"
#include "model_presets.h"
#include "models/llama/reward_model.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/error.h"
#include "train/judges.h"
#include "train/model_reward.h"
#include "train/rewards.h"

using namespace lamina;
using namespace lamina::train;

namespace {

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

JudgeInput pair(std::string first, std::string second, json::Value prompt = "What is 6 x 7?") {
  JudgeInput in;
  in.prompt = std::move(prompt);
  in.first = std::move(first);
  in.second = std::move(second);
  in.fields.set("answer", "42");
  return in;
}

// A random reward model over the byte-level tokenizer, saved with its tokenizer.
struct RewardModelFolder : testing::ScratchDir {
  std::shared_ptr<llama::LlamaForSequenceClassification> model;
  llama::LlamaConfig config;
  RewardModelFolder() : testing::ScratchDir("model-reward") {
    config = testing::byte_level_llama_config();
    config.initializer_range = 0.5;
    Generator generator(6);
    model = llama::LlamaForSequenceClassification::from_causal_lm(*testing::random_llama(config, 4), {}, generator);
    model->save(*this / "rm");
    std::ofstream(path / "rm" / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  }
  // A row scored alone, by the model itself.
  double alone(const std::vector<int32_t>& ids) const {
    autograd::NoGradGuard no_grad;
    const Tensor input = Tensor::from_vector(std::vector<int64_t>(ids.begin(), ids.end()), {1, int64_t(ids.size())});
    return model->forward(input, Tensor::from_vector(std::vector<int64_t>{int64_t(ids.size())}, {1}))
        .to_vector<double>()[0];
  }
};

RewardInput completion(json::Value prompt, std::string text) {
  RewardInput in;
  in.prompt = std::move(prompt);
  in.completion = std::move(text);
  return in;
}

}  // namespace

TEST_CASE("model reward: reward_model=DIR scores prompt + completion as `lamina score` renders and scores them") {
  const RewardModelFolder dir;
  const std::string folder = dir / "rm";
  const tokenizer::Tokenizer tok = tokenizer::byte_level_tokenizer();
  const json::Value chat = json::Array{json::Value(json::Object{{"role", "user"}, {"content", "hi"}})};
  const std::vector<RewardInput> batch = {completion("2+2=", "4"), completion("2+2=", "five"),
                                          completion("1+1=", "2, since one and one make two"), completion(chat, "hello")};
  const std::unique_ptr<Reward> reward = make_reward("reward_model=" + folder);
  CHECK(reward->spec() == "reward_model=\"" + folder + "\"");
  const std::vector<double> scores = reward->score(batch).total;
  REQUIRE(scores.size() == batch.size());

  // The scorer `lamina score --reward-model` uses, in batches of 3 (one padded batch, one alone).
  RewardModelScorer scorer(folder);
  scorer.batch_rows = 3;
  std::vector<std::vector<int32_t>> rows;
  for (const RewardInput& input : batch) rows.push_back(scorer.render(input.prompt, input.completion));
  const std::vector<std::vector<double>> library = scorer.score_rows(rows, "test rows");
  for (size_t i = 0; i < batch.size(); ++i) {
    CAPTURE(i);
    CHECK(scores[i] == doctest::Approx(library[i][0]).epsilon(1e-6));
    // Each row alone gives the same reward: padding in a batch moves nothing.
    CHECK(scores[i] == doctest::Approx(dir.alone(rows[i])).epsilon(1e-5));
  }
  // A text prompt renders as BOS + prompt + completion + EOS (TRL's rule, `lamina score --data`'s).
  std::vector<int32_t> expected = tok.encode("2+2=4", {.add_bos = tok.adds_bos()});
  expected.push_back(int32_t(dir.config.eos_token_ids[0]));
  CHECK(rows[0] == expected);
  // A conversation renders with the chat template, the completion as the assistant's reply.
  const std::string chat_text = tok.decode(rows[3]);
  CHECK(chat_text.find("hi") < chat_text.find("hello"));
  CHECK(chat_text.find("assistant") != std::string::npos);
  CHECK(scores[0] != doctest::Approx(scores[1]));  // the completion matters
  // A broken character is read as U+FFFD, as samples.jsonl and the external judges have it.
  CHECK(reward->score({completion("2+2=", "4 \xff")}).total ==
        reward->score({completion("2+2=", "4 \xEF\xBF\xBD")}).total);
  CHECK(reward->score({completion("2+2=", "4 \xff")}).total != reward->score({completion("2+2=", "4 ")}).total);

  // As a judge: the higher score wins, in either order; the first on a tie.
  const std::unique_ptr<PairwiseJudge> judge = make_judge("reward_model=" + folder);
  const int better = scores[1] > scores[0] ? 1 : 0;
  CHECK(judge->judge({pair("4", "five", "2+2="), pair("five", "4", "2+2="), pair("4", "4", "2+2=")}) ==
        std::vector<int>{better, 1 - better, 0});
}

TEST_CASE("model reward: a folder that is not a reward model, a missing tokenizer and bad values are errors") {
  const RewardModelFolder dir;
  testing::random_llama(dir.config, 2)->save(dir / "causal");
  std::ofstream(dir.path / "causal" / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  std::string error = error_of([&] { make_reward("reward_model=" + (dir / "causal")); });
  CHECK(error.find("not a reward model") != std::string::npos);
  CHECK(error.find(dir / "causal") != std::string::npos);
  error = error_of([&] { make_reward("reward_model=" + (dir / "nothing")); });
  CHECK(error.find("not a folder") != std::string::npos);
  std::filesystem::copy(dir.path / "rm", dir.path / "bare");
  std::filesystem::remove(dir.path / "bare" / "tokenizer.json");
  error = error_of([&] { make_reward("reward_model=" + (dir / "bare")); });
  CHECK(error.find("no tokenizer.json") != std::string::npos);
  error = error_of([&] { make_reward("reward_model=\"" + (dir / "rm") + "|lora=x\""); });
  CHECK(error.find("after '|' comes adapter=ADAPTER_DIR") != std::string::npos);
  error = error_of([&] { make_reward("reward_model"); });
  CHECK(error.find("needs the reward model's folder") != std::string::npos);
  // A weighted sum with a reward model in it.
  const std::vector<double> scores =
      make_reward("reward_model=" + (dir / "rm") + ":2,length=4")->score({completion("2+2=", "4")}).total;
  REQUIRE(scores.size() == 1);
  CHECK(scores[0] == doctest::Approx(2 * make_reward("reward_model=" + (dir / "rm"))->score({completion("2+2=", "4")}).total[0] - 1.0));
}

TEST_CASE("judges: an external judge gets one JSON line per pair and answers 0, 1 or {\"choice\"}") {
  testing::ScratchDir dir("judges-command");
  const std::string seen = dir / "seen.jsonl";
  // Answers 1, 0, {"choice": 1} by position, and keeps a copy of its input.
  const std::string script = dir / "judge.sh";
  std::ofstream(script) << "i=0\nwhile IFS= read -r line; do\n  i=$((i+1))\n  printf '%s\\n' \"$line\" >> '" << seen
                        << "'\n  case $i in 1) echo 1;; 2) echo 0;; *) echo '{\"choice\": 1, \"why\": \"longer\"}';; esac\ndone\n";
  const std::unique_ptr<PairwiseJudge> judge = make_judge("command=\"sh " + script + "\"");
  CHECK(judge->spec() == "command=\"sh " + script + "\"");
  std::vector<JudgeInput> pairs = {pair("\\boxed{42}", "41"), pair("a", "b"), pair("bad \xff", "ok")};
  pairs[1].prompt = json::Array{json::Value(json::Object{{"role", "user"}, {"content", "hi"}})};
  pairs[1].fields.set("id", int64_t(7));
  CHECK(judge->judge(pairs) == std::vector<int>{1, 0, 1});
  std::ifstream in(seen);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0] == R"({"prompt":"What is 6 x 7?","completions":["\\boxed{42}","41"],"answer":"42"})");
  CHECK(lines[1] == R"({"prompt":[{"role":"user","content":"hi"}],"completions":["a","b"],"answer":"42","id":7})");
  CHECK(json::parse(lines[2]).at("completions").as_array()[0].as_string() == "bad \xEF\xBF\xBD");

  // A server: started once, answering each batch as it reads it.
  const std::unique_ptr<PairwiseJudge> server = make_judge("server=\"while read -r l; do echo 1; done\"");
  CHECK(server->judge({pair("a", "b")}) == std::vector<int>{1});
  CHECK(server->judge({pair("a", "b"), pair("c", "d")}) == std::vector<int>{1, 1});
}

TEST_CASE("judges: a failing judge, a bad answer or the wrong count is an error naming the command and the line") {
  const std::vector<JudgeInput> pairs = {pair("a", "b"), pair("c", "d")};
  const auto failure = [&](const std::string& command) {
    return error_of([&] { make_judge("command=\"" + command + "\"")->judge(pairs); });
  };
  std::string error = failure("cat > /dev/null; exit 3");
  CHECK(error.find("judge command 'cat > /dev/null; exit 3' exited with status 3 while judging 2 pairs") !=
        std::string::npos);
  error = failure("read -r first; echo 1");
  CHECK(error.find("judge command 'read -r first; echo 1' wrote 1 lines for the 2 pairs") != std::string::npos);
  error = failure("while read -r l; do echo 0; echo 1; done");
  CHECK(error.find("line 3 is beyond the 2 pairs") != std::string::npos);
  for (const char* answer : {"2", "0.5", "-1", "'\\\"1\\\"'", "true", "'{\\\"pick\\\": 1}'", "nope"}) {
    CAPTURE(answer);
    error = failure(str_cat("while read -r l; do echo ", answer, "; done"));
    CHECK(error.find("judge command 'while read -r l; do echo ") != std::string::npos);
    CHECK(error.find("output line 1 ") != std::string::npos);
  }
  CHECK(failure("while read -r l; do echo 2; done").find("output line 1 is not 0, 1 or {\"choice\": 0 or 1}") !=
        std::string::npos);
  CHECK(failure("while read -r l; do echo '{\\\"pick\\\": 1}'; done").find("has no \"choice\" key") != std::string::npos);
  error = error_of([&] { make_judge("server=\"read -r l; echo 1\"")->judge(pairs); });
  CHECK(error.find("judge command 'read -r l; echo 1' exited after answering 1 lines (1 of the 2 pairs") !=
        std::string::npos);

  CHECK(error_of([] { make_judge("exact_match"); }).find("unknown judge 'exact_match'") != std::string::npos);
  CHECK(error_of([] { make_judge("command=a,command=b"); }).find("a judge is one term") != std::string::npos);
  CHECK(error_of([] { make_judge("command=\"x\":2"); }).find("a judge is one term") != std::string::npos);
  CHECK(error_of([] { make_judge("command"); }).find("judge 'command' needs the command") != std::string::npos);
}
