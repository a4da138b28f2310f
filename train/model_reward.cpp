// A reward model folder as a scorer of prompts and completions (train/model_reward.h).
#include "train/model_reward.h"

#include <algorithm>
#include <filesystem>

#include "autograd/autograd.h"
#include "models/io/peft.h"
#include "models/tokenizer/chat.h"
#include "tensor/error.h"

namespace lamina::train {
namespace {

namespace fs = std::filesystem;

// The folder, checked before anything is loaded: a reward model, or (with an adapter) a model
// folder the adapter's score head goes over.
std::string checked_directory(const std::string& directory, const std::optional<std::string>& adapter) {
  LAMINA_CHECK(fs::is_directory(directory), "reward model ", directory, ": not a folder (a reward model folder holds "
               "config.json, model.safetensors and tokenizer.json, as `lamina train reward` saves it)");
  LAMINA_CHECK(fs::is_regular_file(fs::path(directory) / "config.json"), "reward model ", directory,
               ": no config.json: not a model folder");
  LAMINA_CHECK(adapter || is_reward_model_directory(directory), "reward model ", directory,
               ": not a reward model (config.json's architectures do not name LlamaForSequenceClassification); "
               "train one with `lamina train reward`, or give the LoRA adapter that holds its score head");
  return directory;
}

tokenizer::Tokenizer load_tokenizer(const std::string& directory, const std::optional<std::string>& tokenizer_path) {
  if (tokenizer_path) return tokenizer::Tokenizer::load(*tokenizer_path);
  LAMINA_CHECK(fs::exists(fs::path(directory) / "tokenizer.json"), "reward model ", directory,
               ": no tokenizer.json to render prompts and completions with (`lamina train reward` saves one with "
               "the model; copy the policy's there if it is the same)");
  return tokenizer::Tokenizer::load(directory);
}

std::shared_ptr<llama::LlamaForSequenceClassification> load_model(const std::string& directory,
                                                                  const std::optional<std::string>& adapter) {
  std::shared_ptr<llama::LlamaForSequenceClassification> model;
  const bool reward_model = is_reward_model_directory(directory);
  if (adapter && !reward_model) {
    // A reward model trained with LoRA from a causal LM: the causal LM's trunk, and the adapter
    // file's score head (saved whole, PEFT's modules_to_save) over a placeholder one.
    Generator generator(0);
    model = llama::LlamaForSequenceClassification::from_causal_lm(directory, {}, generator);
  } else {
    model = llama::LlamaForSequenceClassification::load(directory);
  }
  if (adapter) {
    const nn::LoraConfig config = peft::load_adapter(*adapter, *model);
    const bool has_head = std::find(config.modules_to_save.begin(), config.modules_to_save.end(), "score") !=
                          config.modules_to_save.end();
    LAMINA_CHECK(has_head || reward_model, "reward model: ", *adapter,
                 " is an adapter without a score head (modules_to_save); over the causal LM ", directory,
                 " it would score with an untrained head");
  }
  model->eval();
  return model;
}

}  // namespace

bool is_reward_model_directory(const std::string& path) {
  const fs::path config = fs::path(path) / "config.json";
  if (!fs::is_regular_file(config)) return false;
  const json::Value value = json::parse_file(config.string());
  const json::Value* architectures = value.find("architectures");
  if (architectures == nullptr || !architectures->is_array()) return false;
  for (const json::Value& name : architectures->as_array())
    if (name.is_string() && name.as_string() == "LlamaForSequenceClassification") return true;
  return false;
}

RewardModelScorer::RewardModelScorer(const std::string& directory, const std::optional<std::string>& adapter,
                                     const std::optional<std::string>& tokenizer_path)
    : directory_(checked_directory(directory, adapter)),
      model_(load_model(directory, adapter)),
      tokenizer_(load_tokenizer(directory, tokenizer_path)) {
  data_options_.chat = tokenizer::detect_chat_options(tokenizer_path.value_or(directory), tokenizer_);
  data_options_.truncation.max_length = 0;  // scored whole; a row beyond the context is an error
}

std::vector<int32_t> RewardModelScorer::render(const json::Value& prompt, const std::string& completion) const {
  // As a {"prompt", "completion"} line: the completion is the assistant's reply to a conversation.
  json::Value line = json::Object{};
  line.set("prompt", prompt);
  if (prompt.is_array()) {
    json::Value reply = json::Object{};
    reply.set("role", std::string("assistant"));
    reply.set("content", completion);
    line.set("completion", json::Array{std::move(reply)});
  } else {
    line.set("completion", completion);
  }
  line.set("label", true);
  const PreferenceRecord record = parse_preference_record(line, data_options_.chat.format);
  PromptCompletionIds ids = tokenize_prompt_completion(tokenizer_, record.prompt, record.completion, data_options_);
  ids.prompt.insert(ids.prompt.end(), ids.completion.begin(), ids.completion.end());
  return std::move(ids.prompt);
}

std::vector<std::vector<double>> RewardModelScorer::score_rows(const std::vector<std::vector<int32_t>>& rows,
                                                               const std::string& where) const {
  const llama::LlamaConfig& config = model_->config();
  for (size_t r = 0; r < rows.size(); ++r) {
    const std::string which = rows.size() == 1 ? where : str_cat(where, " (row ", r + 1, " of ", rows.size(), ")");
    LAMINA_CHECK(!rows[r].empty(), which, ": nothing to score (no tokens)");
    for (int32_t id : rows[r])
      LAMINA_CHECK(id >= 0 && id < config.vocab_size, which, ": token id ", id,
                   " is outside the reward model's vocabulary of ", config.vocab_size);
    LAMINA_CHECK(int64_t(rows[r].size()) <= config.max_position_embeddings, which, ": ", rows[r].size(),
                 " tokens are more than the reward model's context of ", config.max_position_embeddings);
  }
  autograd::NoGradGuard no_grad;
  std::vector<std::vector<double>> out;
  const int64_t pad = config.pad_token_id.value_or(0);
  const size_t batch = size_t(std::max<int64_t>(1, batch_rows));
  for (size_t begin = 0; begin < rows.size(); begin += batch) {
    const size_t end = std::min(rows.size(), begin + batch);
    size_t width = 0;
    for (size_t r = begin; r < end; ++r) width = std::max(width, rows[r].size());
    std::vector<int64_t> ids((end - begin) * width, pad), lengths;
    for (size_t r = begin; r < end; ++r) {
      std::copy(rows[r].begin(), rows[r].end(), ids.begin() + long((r - begin) * width));
      lengths.push_back(int64_t(rows[r].size()));
    }
    const int64_t count = int64_t(end - begin);
    const std::vector<double> rewards =
        model_->forward(Tensor::from_vector(ids, {count, int64_t(width)}), Tensor::from_vector(lengths, {count}))
            .to_vector<double>();
    const size_t labels = size_t(model_->num_labels());
    for (size_t r = 0; r < size_t(count); ++r)
      out.emplace_back(rewards.begin() + long(r * labels), rewards.begin() + long((r + 1) * labels));
  }
  return out;
}

std::vector<double> RewardModelScorer::score_texts(const std::vector<std::pair<json::Value, std::string>>& texts) const {
  std::vector<std::vector<int32_t>> rows;
  for (const auto& [prompt, completion] : texts) rows.push_back(render(prompt, completion));
  std::vector<double> out;
  for (const std::vector<double>& rewards : score_rows(rows, str_cat("reward model ", directory_)))
    out.push_back(rewards[0]);
  return out;
}

RewardModelScorer RewardModelScorer::from_value(const std::string& value) {
  const RewardModelSpec spec = parse_reward_model_value(value);
  return RewardModelScorer(spec.directory, spec.adapter);
}

RewardModelSpec parse_reward_model_value(const std::string& value) {
  RewardModelSpec spec;
  const size_t bar = value.find('|');
  spec.directory = value.substr(0, bar);
  LAMINA_CHECK(!spec.directory.empty(), "reward_model='", value, "': no folder (reward_model=DIR or "
               "reward_model=\"DIR|adapter=ADAPTER_DIR\")");
  if (bar == std::string::npos) return spec;
  const std::string option = value.substr(bar + 1);
  static constexpr std::string_view kAdapter = "adapter=";
  LAMINA_CHECK(option.rfind(kAdapter, 0) == 0 && option.size() > kAdapter.size() &&
                   option.find('|') == std::string::npos,
               "reward_model='", value, "': after '|' comes adapter=ADAPTER_DIR, not '", option, "'");
  spec.adapter = option.substr(kAdapter.size());
  return spec;
}

namespace {

class ModelReward : public Reward {
 public:
  explicit ModelReward(const std::string& value) : value_(value), scorer_(RewardModelScorer::from_value(value)) {
    LAMINA_CHECK(scorer_.model().num_labels() == 1, "reward model ", scorer_.directory(), " has ",
                 scorer_.model().num_labels(), " labels: a reward is one score (num_labels 1)");
  }
  RewardScores score(const std::vector<RewardInput>& batch) override {
    std::vector<std::pair<json::Value, std::string>> texts;
    // As an external judge reads it and TRL decodes it (errors="replace"): a completion cut
    // inside a character ends in U+FFFD, not in a broken byte sequence.
    for (const RewardInput& input : batch) texts.emplace_back(input.prompt, valid_utf8_text(input.completion));
    RewardScores scores;
    scores.total = scorer_.score_texts(texts);
    return scores;
  }
  std::string spec() const override { return str_cat("reward_model=", json::quote(value_)); }

 private:
  std::string value_;
  RewardModelScorer scorer_;
};

}  // namespace

std::unique_ptr<Reward> make_model_reward(const std::string& value) { return std::make_unique<ModelReward>(value); }

}  // namespace lamina::train
