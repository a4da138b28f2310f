// Pairwise judges of the online pair losses (online_dpo, inpo; TRL's OnlineDPOTrainer judge=):
// given a prompt and two completions of it, which one is better. `lamina train online-dpo|inpo
// --judge SPEC` takes one; train/online_trainer.h makes each group's pair (G = 2) from its choice.
//
// A judge spec is one term, written as a reward term is (train/rewards.h; a VALUE holding ',' or
// ':' in double quotes):
//   command=CMD     an external command started for each batch of pairs
//   server=CMD      the same, started once and kept for the run
//   reward_model=DIR or reward_model="DIR|adapter=ADAPTER_DIR"
//                   a lamina reward model (train/model_reward.h) scores both completions; the
//                   higher score wins, the first on a tie
// The external judge's line protocol is in train/rewards.h, next to the reward command's: one
// {"prompt", "completions": [first, second], <the line's other fields>} line in per pair, one
// line out, 0 or 1 (the better completion's index) or {"choice": 0|1}.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tensor/io/json.h"

namespace lamina::train {

// One pair to judge: two completions of a prompt.
struct JudgeInput {
  json::Value prompt;                   // the prompt as the data line has it (text, or a message list)
  std::string first, second;            // the completions' text
  json::Value fields = json::Object{};  // the line's other fields ("answer", ...)
};

class PairwiseJudge {
 public:
  virtual ~PairwiseJudge() = default;
  // The index (0: first, 1: second) of the better completion of each pair, in order.
  virtual std::vector<int> judge(const std::vector<JudgeInput>& pairs) = 0;
  // The spec that makes this judge (saved with the run, compared on resume).
  virtual std::string spec() const = 0;
};

// The judge of a spec (above); an error names what is wrong with it.
std::unique_ptr<PairwiseJudge> make_judge(const std::string& spec);

// An external judge's answer line as a choice (0 or 1); an Error says why a line is none.
int judge_choice_of_line(const std::string& line);

}  // namespace lamina::train
