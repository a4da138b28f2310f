// `lamina score --reward-model DIR`: rewards from a LlamaForSequenceClassification folder, for a
// text or for every pair of a preference file (how well a reward model ranks held-out pairs).
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "autograd/autograd.h"
#include "models/io/peft.h"
#include "models/llama/reward_model.h"
#include "models/tokenizer/chat.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "train/preference_data.h"

namespace lamina::cli {
namespace {

// The rewards of rows given as id lists (each scored alone: no padding reaches the model).
std::vector<std::vector<double>> rewards_of(const llama::LlamaForSequenceClassification& model,
                                            const std::vector<std::vector<int32_t>>& rows) {
  autograd::NoGradGuard no_grad;
  std::vector<std::vector<double>> out;
  for (const std::vector<int32_t>& row : rows) {
    const Tensor ids = Tensor::from_vector(std::vector<int64_t>(row.begin(), row.end()), {1, int64_t(row.size())});
    const Tensor lengths = Tensor::from_vector(std::vector<int64_t>{int64_t(row.size())}, {1});
    out.push_back(model.forward(ids, lengths).to_vector<double>());
  }
  return out;
}

json::Value reward_value(const std::vector<double>& scores) {
  if (scores.size() == 1) return json::Value(scores[0]);
  json::Array array;
  for (double score : scores) array.emplace_back(score);
  return json::Value(std::move(array));
}

void check_row(const std::vector<int32_t>& ids, const llama::LlamaConfig& config, const std::string& where) {
  for (int32_t id : ids)
    if (id < 0 || id >= config.vocab_size)
      throw Error(str_cat(where, ": token id ", id, " is outside the reward model's vocabulary of ", config.vocab_size));
  if (int64_t(ids.size()) > config.max_position_embeddings)
    throw Error(str_cat(where, ": ", ids.size(), " tokens are more than the reward model's context of ",
                        config.max_position_embeddings));
}

}  // namespace

bool is_reward_model_folder(const std::string& path) {
  const std::filesystem::path config = std::filesystem::path(path) / "config.json";
  if (!std::filesystem::is_regular_file(config)) return false;
  const json::Value value = json::parse_file(config.string());
  const json::Value* architectures = value.find("architectures");
  if (architectures == nullptr || !architectures->is_array()) return false;
  for (const json::Value& name : architectures->as_array())
    if (name.is_string() && name.as_string() == "LlamaForSequenceClassification") return true;
  return false;
}

int run_reward_score(const FlagParser& parser) {
  const std::string command = "lamina score --reward-model";
  const std::string path = parser.required("reward-model");
  const tokenizer::Tokenizer tok = load_model_tokenizer(path, parser.value("tokenizer"));
  std::shared_ptr<llama::LlamaForSequenceClassification> model;
  const std::optional<std::string> adapter = parser.value("adapter");
  if (adapter && !is_reward_model_folder(path)) {
    // A reward model trained with LoRA from a causal LM: the causal LM's trunk, and the adapter
    // file's score head (saved whole, PEFT's modules_to_save) over a placeholder one.
    Generator generator(0);
    model = llama::LlamaForSequenceClassification::from_causal_lm(path, {}, generator);
  } else {
    model = llama::LlamaForSequenceClassification::load(path);
  }
  if (adapter) {
    const nn::LoraConfig config = peft::load_adapter(*adapter, *model);
    LAMINA_CHECK(std::find(config.modules_to_save.begin(), config.modules_to_save.end(), "score") !=
                         config.modules_to_save.end() || is_reward_model_folder(path),
                 command, ": ", *adapter, " is an adapter without a score head (modules_to_save); over the causal LM ",
                 path, " it would score with an untrained head");
  }
  model->eval();
  if (const std::optional<std::string> data = parser.value("data")) {
    if (parser.is_set("text")) throw UsageError(command + ": give --text or --data, not both", "run 'lamina score --help'");
    train::PreferenceDataOptions options;
    options.chat = tokenizer::detect_chat_options(parser.value("tokenizer").value_or(path), tok);
    options.truncation.max_length = 0;  // scored whole; a row longer than the context is an error
    const train::PreferenceData pairs = train::read_preference_jsonl(*data, tok, options);
    if (pairs.pairs.empty())
      throw Error(str_cat(command, ": ", *data, " holds ", train::preference_layout_name(pairs.layout),
                          " lines; scoring a file needs pairs ({\"prompt\", \"chosen\", \"rejected\"})"));
    int64_t right = 0;
    double margin_sum = 0;
    for (const train::PreferencePair& pair : pairs.pairs) {
      std::vector<int32_t> chosen = pair.prompt, rejected = pair.prompt;
      chosen.insert(chosen.end(), pair.chosen.begin(), pair.chosen.end());
      rejected.insert(rejected.end(), pair.rejected.begin(), pair.rejected.end());
      const std::string where = str_cat(*data, ":", pair.line);
      check_row(chosen, model->config(), where);
      check_row(rejected, model->config(), where);
      const std::vector<std::vector<double>> rewards = rewards_of(*model, {chosen, rejected});
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
  check_row(ids, model->config(), "the encoded text");
  json::Value line = json::Object{};
  line.set("tokens", int64_t(ids.size()));
  line.set("reward", reward_value(rewards_of(*model, {ids})[0]));
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

}  // namespace lamina::cli
