// `lamina score --reward-model DIR`: rewards from a LlamaForSequenceClassification folder, for a
// text or for every pair of a preference file (how well a reward model ranks held-out pairs).
// Loading, rendering and scoring are train/model_reward.h's, which the online reward_model=
// reward and judge use too.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "train/model_reward.h"
#include "train/preference_data.h"

namespace lamina::cli {
namespace {

json::Value reward_value(const std::vector<double>& scores) {
  if (scores.size() == 1) return json::Value(scores[0]);
  json::Array array;
  for (double score : scores) array.emplace_back(score);
  return json::Value(std::move(array));
}

}  // namespace

bool is_reward_model_folder(const std::string& path) { return train::is_reward_model_directory(path); }

int run_reward_score(const FlagParser& parser) {
  const std::string command = "lamina score --reward-model";
  const std::string path = parser.required("reward-model");
  // Loaded, rendered and scored as the reward_model= reward and judge of the online loops do.
  const train::RewardModelScorer scorer(path, parser.value("adapter"), parser.value("tokenizer"));
  const tokenizer::Tokenizer& tok = scorer.tokenizer();
  if (const std::optional<std::string> data = parser.value("data")) {
    if (parser.is_set("text")) throw UsageError(command + ": give --text or --data, not both", "run 'lamina score --help'");
    // The scorer's options: its chat format, no truncation (a row beyond the context is an error).
    const train::PreferenceData pairs = train::read_preference_jsonl(*data, tok, scorer.data_options());
    if (pairs.pairs.empty())
      throw Error(str_cat(command, ": ", *data, " holds ", train::preference_layout_name(pairs.layout),
                          " lines; scoring a file needs pairs ({\"prompt\", \"chosen\", \"rejected\"})"));
    int64_t right = 0;
    double margin_sum = 0;
    for (const train::PreferencePair& pair : pairs.pairs) {
      std::vector<int32_t> chosen = pair.prompt, rejected = pair.prompt;
      chosen.insert(chosen.end(), pair.chosen.begin(), pair.chosen.end());
      rejected.insert(rejected.end(), pair.rejected.begin(), pair.rejected.end());
      const std::vector<std::vector<double>> rewards = scorer.score_rows({chosen, rejected}, str_cat(*data, ":", pair.line));
      json::Value line = json::Object{};
      line.set("line", pair.line);
      line.set("chosen_reward", reward_value(rewards[0]));
      line.set("rejected_reward", reward_value(rewards[1]));
      std::printf("%s\n", line.dump().c_str());
      // TRL's accuracy: a tie counts as wrong.
      right += rewards[0][0] > rewards[1][0] ? 1 : 0;
      margin_sum += rewards[0][0] - rewards[1][0];
    }
    const double count = double(pairs.pairs.size());
    std::fprintf(stderr, "%zu pairs: accuracy %.4f (chosen scored above rejected), mean margin %.6g\n",
                 pairs.pairs.size(), double(right) / count, margin_sum / count);
    return 0;
  }
  const std::string text = parser.is_set("text") ? *parser.value("text") : read_standard_input();
  const std::vector<int32_t> ids = tok.encode(text, {.add_bos = tok.adds_bos()});
  if (ids.empty()) throw Error(command + ": the text encodes to no tokens");
  json::Value line = json::Object{};
  line.set("tokens", int64_t(ids.size()));
  line.set("reward", reward_value(scorer.score_rows({ids}, "the encoded text")[0]));
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

}  // namespace lamina::cli
