// Rewards of the online loops (train/online_trainer.h): a score per sampled completion, from
// rules (a final answer matched against the line's "answer", a format regex, the length), from
// an external command, from a lamina reward model, or a weighted sum of those. The pairwise
// judges of the pair losses (train/judges.h) speak the protocol below too.
//
// A reward spec, as `lamina train grpo --reward SPEC` takes it, is a comma-separated list of
// terms NAME[=VALUE][:WEIGHT] (weight 1 when absent), summed:
//   exact_match          1 when the completion's final answer equals the line's "answer", else 0
//   format[=REGEX]       1 when REGEX is found in the completion, else 0 (default <think>.*</think>);
//                        ECMAScript syntax, except that `.` also matches a newline (Python's
//                        re.DOTALL): anchor with ^...$ to require the whole completion
//   length=N             -|tokens - N| / N: 0 at N completion tokens, -1 at none or at 2N
//   max_length=N         0 up to N completion tokens, then -(tokens - N) / N
//   command=CMD          the score an external command gives, started for each batch (below)
//   server=CMD           the same from a command started once and kept for the run (below)
//   reward_model=DIR     the score of a lamina reward model (a LlamaForSequenceClassification
//                        folder with its tokenizer.json, as `lamina train reward` saves it) of
//                        the prompt + completion, rendered with its chat template as `lamina score
//                        --reward-model` renders a pair (train/model_reward.h); loaded once per
//                        run, scored in batches without gradient. With a LoRA reward adapter:
//                        reward_model=DIR|adapter=ADAPTER_DIR (quoted when a path holds , or :)
// e.g. "exact_match:1,format:0.2". A VALUE holding ',' or ':' (a regex, a command line) is
// written in double quotes, with \" and \\ inside: command="python3 judge.py --strict".
//
// Final answers (exact_match): the last \boxed{...} (its braces may nest); else the text after
// the last GSM8K "####" marker, to the end of its line; else what follows the last "the answer
// is" (any case), to the end of its sentence, or only the number it starts with when words
// follow that number ("the answer is 8, since ..." gives "8"; "the answer is 2 + 3" stays
// whole). The expected "answer" (text or a number) goes through the same extraction when it
// holds such a marker (a GSM8K solution ends in "#### 72"), else is taken whole. Two answers
// that both read as numbers compare as numbers ("1,000", "1000", "1000.0" and "$1000" are
// equal); others compare as text, trimmed.
//
// The external command protocol. CMD runs under /bin/sh -c, once per batch of completions, in
// the directory lamina runs in, with lamina's stderr as its own. Its stdin receives one JSON
// object a line, one per completion, in order:
//   {"prompt": <the line's prompt: text or message list>, "completion": "<text>", <every other
//    field of the prompt line, e.g. "answer">}
// and is closed after the last. It must write exactly one line per input line, in the same
// order, each a JSON number or an object {"reward": <number>, ...}, and exit with status 0.
// A command that cannot start, exits with another status, is killed, writes a line that is
// neither (a number beyond a double's range included), or writes more or fewer lines than it
// was given is an error naming the command and the line. Example (a shell judge rewarding
// length):
//   while IFS= read -r line; do echo "${#line}"; done
// server=CMD is the same protocol with one process for the whole run (a judge that loads a model
// once): it is started at the first batch, gets each batch's lines on its stdin, which stays
// open, and must answer each line as it reads it, flushing its output (Python: print(...,
// flush=True)). It must not exit before the run ends; its stdin is closed at the end of the
// run, and it is killed if it is still running a few seconds later. Lines beyond its answers
// are noticed at the next batch.
//
// The pairwise judge protocol (`--judge command=CMD` or `server=CMD` of online-dpo and inpo,
// train/judges.h): the same processes and rules, but each input line is a pair,
//   {"prompt": <the line's prompt>, "completions": ["<first>", "<second>"], <every other field of
//    the prompt line>}
// and each answer line the index of the better completion: 0 or 1, or an object {"choice": 0 or
// 1, ...}. Any other answer (2, 0.5, "1", text, a missing "choice"), a failure, or more or fewer
// lines than pairs is an error naming the judge command and the line. Example (prefers the
// longer completion):
//   jq -c 'if (.completions[1] | length) > (.completions[0] | length) then 1 else 0 end'
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tensor/io/json.h"

namespace lamina::train {

// One completion to score.
struct RewardInput {
  json::Value prompt;             // the prompt as the data line has it (text, or a message list)
  std::string completion;         // the completion's text
  int64_t completion_tokens = 0;  // its tokens (the stop token included)
  json::Value fields = json::Object{};  // the line's other fields ("answer", ...)
};

struct RewardScores {
  std::vector<double> total;  // one per input
  // A weighted sum's terms, unweighted, by name ("exact_match", "format", ...): TRL logs each
  // as rewards/<name>/mean. Empty for a single term.
  std::vector<std::pair<std::string, std::vector<double>>> parts;
};

class Reward {
 public:
  virtual ~Reward() = default;
  // Scores a batch; every score is finite (a rule that cannot judge gives 0).
  virtual RewardScores score(const std::vector<RewardInput>& batch) = 0;
  // The spec that makes this reward (saved with the run, compared on resume).
  virtual std::string spec() const = 0;
};

// The metrics of a validation pass under TRL's names: val_reward (the mean of `scores.total`),
// val_reward_std (sample std), val_rewards/<term>/mean per term of a weighted reward, and
// val_completions/mean_length (the mean of `lengths`, the scored completions' tokens).
json::Value validation_reward_metrics(const RewardScores& scores, const std::vector<double>& lengths);

// The reward of a spec (above); an error names the bad term.
std::unique_ptr<Reward> make_reward(const std::string& spec);

// ---- the rules, for tests and other callers

// The completion's final answer (the rules above), or nothing.
std::optional<std::string> extract_final_answer(std::string_view text);
// A number as people write it: "1,000", "-3.5", "$12", "50%", "7." (nothing for other text).
std::optional<double> parse_answer_number(std::string_view text);
// Whether a completion's final answer matches an expected answer (a string or number JSON value).
bool answer_matches(std::string_view completion, const json::Value& expected);
// `text` with every byte that is not part of valid UTF-8 replaced by U+FFFD (a sampled
// completion may end inside a character; JSON needs valid UTF-8).
std::string valid_utf8_text(std::string_view text);
// `pattern` with every `.` outside a bracket expression made to match newlines as well.
std::string dot_matches_newline(std::string_view pattern);

// The terms of a spec: name, value (unquoted) and weight, in order.
struct RewardTerm {
  std::string name;
  std::optional<std::string> value;
  double weight = 1.0;
};
std::vector<RewardTerm> parse_reward_spec(const std::string& spec);

}  // namespace lamina::train
