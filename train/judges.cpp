// The pairwise judges (train/judges.h): an external command or server, or a reward model.
#include "train/judges.h"

#include "tensor/error.h"
#include "train/line_command.h"
#include "train/model_reward.h"
#include "train/rewards.h"

namespace lamina::train {
namespace {

std::string judge_input(const std::vector<JudgeInput>& pairs) {
  std::string input;
  for (const JudgeInput& pair : pairs) {
    json::Value line = json::Object{};
    line.set("prompt", pair.prompt);
    line.set("completions", json::Array{json::Value(valid_utf8_text(pair.first)), json::Value(valid_utf8_text(pair.second))});
    for (const auto& [key, value] : pair.fields.as_object())
      if (key != "prompt" && key != "completions") line.set(key, value);
    input += line.dump() + "\n";
  }
  return input;
}

class CommandJudge : public PairwiseJudge {
 public:
  CommandJudge(std::string command, bool server)
      : process_(std::move(command), server, {"judge command", "pair", "pairs", "judging"}) {}
  std::vector<int> judge(const std::vector<JudgeInput>& pairs) override {
    std::vector<int> choices;
    process_.exchange(judge_input(pairs), pairs.size(),
                      [&](const std::string& line, int64_t) { choices.push_back(judge_choice_of_line(line)); });
    return choices;
  }
  std::string spec() const override {
    return str_cat(process_.persistent() ? "server=" : "command=", json::quote(process_.command()));
  }

 private:
  LineCommand process_;
};

class RewardModelJudge : public PairwiseJudge {
 public:
  explicit RewardModelJudge(const std::string& value) : value_(value), scorer_(RewardModelScorer::from_value(value)) {
    LAMINA_CHECK(scorer_.model().num_labels() == 1, "judge: reward model ", scorer_.directory(), " has ",
                 scorer_.model().num_labels(), " labels: a judge compares one score (num_labels 1)");
  }
  std::vector<int> judge(const std::vector<JudgeInput>& pairs) override {
    std::vector<std::pair<json::Value, std::string>> texts;
    for (const JudgeInput& pair : pairs) {
      texts.emplace_back(pair.prompt, valid_utf8_text(pair.first));  // as the reward_model= reward reads them
      texts.emplace_back(pair.prompt, valid_utf8_text(pair.second));
    }
    const std::vector<double> scores = scorer_.score_texts(texts);
    std::vector<int> choices;
    for (size_t k = 0; k < pairs.size(); ++k) choices.push_back(scores[2 * k + 1] > scores[2 * k] ? 1 : 0);
    return choices;
  }
  std::string spec() const override { return str_cat("reward_model=", json::quote(value_)); }

 private:
  std::string value_;
  RewardModelScorer scorer_;
};

}  // namespace

int judge_choice_of_line(const std::string& line) {
  json::Value value;
  try {
    value = json::parse(line, "judge command output");
  } catch (const Error& error) {
    throw Error(str_cat("is not JSON (", error.what(), ")"));
  }
  const json::Value* choice = &value;
  if (value.is_object()) {
    choice = value.find("choice");
    if (choice == nullptr) throw Error("has no \"choice\" key");
  }
  if (!choice->is_number() || (choice->as_double() != 0.0 && choice->as_double() != 1.0))
    throw Error("is not 0, 1 or {\"choice\": 0 or 1} (the index of the better completion)");
  return choice->as_double() == 1.0 ? 1 : 0;
}

std::unique_ptr<PairwiseJudge> make_judge(const std::string& spec) {
  const std::vector<RewardTerm> terms = parse_reward_spec(spec);
  const auto usage = "(command=CMD, server=CMD, reward_model=DIR or reward_model=\"DIR|adapter=ADAPTER_DIR\")";
  LAMINA_CHECK(terms.size() == 1 && terms[0].weight == 1.0, "judge spec '", spec,
               "': a judge is one term, without a weight ", usage);
  const RewardTerm& term = terms[0];
  if (term.name == "command" || term.name == "server") {
    LAMINA_CHECK(term.value && !term.value->empty(), "judge '", term.name, "' needs the command: ", term.name,
                 "=\"CMD ARGS\"");
    return std::make_unique<CommandJudge>(*term.value, term.name == "server");
  }
  if (term.name == "reward_model") {
    LAMINA_CHECK(term.value && !term.value->empty(), "judge 'reward_model' needs the reward model's folder ", usage);
    return std::make_unique<RewardModelJudge>(*term.value);
  }
  throw Error(str_cat("unknown judge '", term.name, "' ", usage));
}

}  // namespace lamina::train
