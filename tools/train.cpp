// `lamina train pretrain|sft|preference` (and the preference aliases dpo, kto, ...) and `lamina plot`.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <limits>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/tokenizer_export.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/regular_file.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "tools/train_support.h"
#include "train/loss_curve.h"
#include "models/llama/reward_model.h"
#include "tools/train_online.h"
#include "tools/train_refuel.h"
#include "train/preference_trainer.h"
#include "train/reward_trainer.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

// Keeps the first validation examples that hold at most `max_tokens` tokens (always at least
// one) and returns the others.
std::vector<train::Example> cap_validation(std::vector<train::Example>& validation, int64_t max_tokens) {
  size_t kept = 0;
  int64_t tokens = 0;
  while (kept < validation.size() && (kept == 0 || tokens + int64_t(validation[kept].ids.size()) <= max_tokens))
    tokens += int64_t(validation[kept++].ids.size());
  std::vector<train::Example> rest(std::make_move_iterator(validation.begin() + long(kept)),
                                   std::make_move_iterator(validation.end()));
  validation.resize(kept);
  return rest;
}

// A token shard is known by its header, whatever its name; a .bin file without one is a shard
// whose header is broken (read_token_shard says so).
bool is_token_shard(const std::string& path) {
  return fs::path(path).extension() == ".bin" || train::starts_with_shard_header(path);
}

// Warnings about settings that run but probably do not do what was meant.
void warn_about_settings(const train::TrainOptions& options, const std::vector<train::Example>& examples) {
  if (options.warmup_steps > options.steps && options.steps > 0)
    std::fprintf(stderr,
                 "warning: --warmup-steps %lld is more than --steps %lld: the learning rate never reaches its peak "
                 "--lr %g (at most %g, at the last step)\n",
                 (long long)options.warmup_steps, (long long)options.steps, options.lr,
                 options.lr * double(options.steps) / double(options.warmup_steps));
  // What one step holds (rows of seq_len slots, or one example per row unpacked) against the data.
  double slots = 0;
  for (const train::Example& example : examples) slots += double(std::max<size_t>(example.ids.size(), 1) - 1);
  const double per_step = options.pack ? double(options.batch_size) * double(options.seq_len) : double(options.batch_size);
  const double data = options.pack ? slots : double(examples.size());
  if (data > 0 && per_step > data)
    std::fprintf(stderr,
                 "warning: a step of --batch-size %lld holds more than the training data (%s): every step repeats "
                 "examples, about %.1f passes over the data per step\n",
                 (long long)options.batch_size,
                 options.pack ? str_cat(per_step, " token slots for ", slots, " tokens to predict").c_str()
                              : str_cat(per_step, " rows for ", examples.size(), " examples, one per row").c_str(),
                 per_step / data);
}

// Training and validation examples from --data (and --validation): JSONL through the
// tokenizer, or a token shard (.bin) as is.
std::pair<std::vector<train::Example>, std::vector<train::Example>> load_data(
    const FlagParser& parser, const std::optional<tokenizer::Tokenizer>& tok, const train::TrainOptions& options,
    const std::string& chat_source, int64_t vocab_size) {
  const std::optional<std::string> data = parser.value("data");
  if (!data) throw UsageError("lamina train: --data is required", "run 'lamina train <kind> --help'");
  train::JsonlOptions jsonl;
  jsonl.format = train::data_format_from_name(parser.value("format").value_or("auto"));
  jsonl.skip_malformed = parser.is_set("skip-malformed");
  if (tok) jsonl.chat = tokenizer::detect_chat_options(chat_source, *tok);
  auto read = [&](const std::string& path) {
    if (is_token_shard(path)) return train::read_token_shard(path, options.seq_len + 1, vocab_size);
    if (!tok)
      throw Error(str_cat(path, ": JSONL data (it does not start with a token shard's LMTOKENS header) needs a "
                          "tokenizer: pass --tokenizer PATH"));
    train::JsonlOptions file_options = jsonl;
    bool progress_shown = false;
    if (options.progress)
      file_options.on_progress = [&](int64_t done, int64_t total) {
        if (total <= 0 || (done == total && !progress_shown)) return;  // a quick read prints nothing
        progress_shown = true;
        std::fprintf(stderr, "\rreading %s: %3d%% of %.1f MB%s", path.c_str(), int(100 * done / total),
                     double(total) / 1e6, done == total ? "\n" : "");
      };
    train::JsonlStats stats;
    std::vector<train::Example> examples = train::read_jsonl(path, *tok, file_options, &stats);
    if (stats.layouts.size() > 1) {
      std::string mix;
      for (const auto& [layout, count] : stats.layouts) mix += str_cat(mix.empty() ? "" : ", ", count, " ", layout);
      std::fprintf(stderr, "%s: lines of several layouts, each read by its keys: %s examples\n", path.c_str(), mix.c_str());
    }
    if (stats.skipped > 0)
      std::fprintf(stderr, "%s: skipped %lld malformed lines of %lld (first: %s)\n", path.c_str(), (long long)stats.skipped,
                   (long long)stats.lines, stats.first_skipped.c_str());
    // Plain text is cut into pieces; a prompt/completion or chat example longer than a row is
    // truncated keeping its prompt, or dropped when no target would remain (counted here).
    train::FitStats fit;
    examples = train::fit_examples(std::move(examples), options.seq_len + 1, &fit);
    if (fit.too_long > 0) std::fprintf(stderr, "%s: %s\n", path.c_str(), fit.summary().c_str());
    return examples;
  };
  const int64_t validation_tokens =
      parser.int_value("validation-tokens", kDefaultValidationTokens, 0, std::numeric_limits<int64_t>::max());
  std::vector<train::Example> train_examples = read(*data);
  std::vector<train::Example> validation;
  const std::optional<std::string> validation_path = parser.value("validation");
  if (validation_path) {
    validation = read(*validation_path);
    // An empty file would silently mean "no validation": most likely the wrong file.
    if (validation.empty()) throw Error("lamina train: --validation " + *validation_path + " holds no examples");
  } else {
    validation = train::split_validation(train_examples, parser.double_value("validation-fraction", 0.05, 0.0, 0.9),
                                         options.seed);
  }
  if (validation_tokens > 0) {
    const size_t held_out = validation.size();
    std::vector<train::Example> rest = cap_validation(validation, validation_tokens);
    if (!rest.empty()) {
      std::fprintf(stderr, "validation: %zu of %zu examples (--validation-tokens %lld)%s\n", validation.size(), held_out,
                   (long long)validation_tokens, validation_path ? "" : "; the others train");
      if (!validation_path)
        train_examples.insert(train_examples.end(), std::make_move_iterator(rest.begin()),
                              std::make_move_iterator(rest.end()));
    }
  }
  if (train_examples.empty()) throw Error("lamina train: " + *data + " holds no training examples");
  std::fprintf(stderr, "data: %zu training examples, %zu validation examples\n", train_examples.size(), validation.size());
  warn_about_settings(options, train_examples);
  return {std::move(train_examples), std::move(validation)};
}

int run_pretrain(const Arguments& args) {
  FlagParser parser("lamina train pretrain", "Trains a Llama model from scratch (architecture from an HF config.json).");
  parser.add_option("config", "CONFIG.json", "the model architecture (HF config.json) (required)");
  parser.add_option("data", "FILE",
                    "training data: JSONL ({\"text\": ...} per line) or a token shard (known by its LMTOKENS header; "
                    "usually .bin)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (or a folder with one), for JSONL data");
  add_training_flags(parser, TrainerKind::language_model);
  if (!parser.parse(args)) return 0;
  const std::optional<std::string> config_path = parser.value("config");
  if (!config_path) throw UsageError("lamina train pretrain: --config is required", "run 'lamina train pretrain --help'");
  const train::TrainOptions options = training_options(parser);
  const train::RunStart start = run_start(parser, options, {"config", "data", "validation", "tokenizer", "options"});
  const llama::LlamaConfig config = llama::LlamaConfig::load(*config_path);
  train::check_model_fits(config, options);  // the whole training state, before the model is built
  std::optional<tokenizer::Tokenizer> tok;
  std::optional<TokenizerFiles> tokenizer_files;
  const std::string tokenizer_path = parser.value("tokenizer").value_or("");
  if (!tokenizer_path.empty()) {
    tok.emplace(tokenizer::Tokenizer::load(tokenizer_path));
    tokenizer_files = read_tokenizer_files(tokenizer_path);
  }
  if (tok) check_vocabulary(*tok, tokenizer_path, config, *config_path);
  auto [examples, validation] = load_data(parser, tok, options, tokenizer_path, config.vocab_size);
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f32);
  Generator generator(options.seed);
  model->init_parameters(generator);
  std::fprintf(stderr, "model: %.1fM parameters\n", double(model->parameter_count()) / 1e6);
  train::Trainer trainer(model, options, std::move(examples), std::move(validation));
  join_ranks(trainer, options);
  if (tokenizer_files)
    trainer.add_model_files = [&](const std::string& folder) { write_tokenizer_files(*tokenizer_files, folder); };
  trainer.run(start);
  std::printf("trained %lld steps; model in %s/model, metrics in %s/metrics.jsonl\n", (long long)trainer.step(),
              options.output_dir.c_str(), options.output_dir.c_str());
  return 0;
}

int run_sft(const Arguments& args) {
  FlagParser parser("lamina train sft",
                    "Fine-tunes a Llama model on JSONL: {\"prompt\", \"completion\"} (loss on the completion) or "
                    "{\"messages\": [...]} or ShareGPT {\"conversations\": [{\"from\", \"value\"}]} in the chat format (loss on the "
                    "assistant turns), or plain {\"text\"}.");
  parser.add_option("model", "PATH", "the model to fine-tune: an HF folder or a Llama GGUF file (dequantized to f32) (required)");
  parser.add_option("data", "FILE.jsonl", "training data");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model's own)");
  add_training_flags(parser, TrainerKind::language_model);
  if (!parser.parse(args)) return 0;
  const std::optional<std::string> model_path = parser.value("model");
  if (!model_path) throw UsageError("lamina train sft: --model is required", "run 'lamina train sft --help'");
  const train::TrainOptions options = training_options(parser);
  const train::RunStart start = run_start(parser, options, {"model", "data", "validation", "tokenizer", "options"});
  // The model's config and the tokenizer are checked against each other and the options
  // before the data is read and the weights loaded (either may take minutes).
  const bool from_gguf = is_gguf_file(*model_path);
  const std::string config_path = from_gguf ? *model_path : (fs::path(*model_path) / "config.json").string();
  const llama::LlamaConfig config =
      from_gguf ? gguf::llama_config_from_gguf(gguf::File::open(*model_path)) : llama::LlamaConfig::load(config_path);
  train::check_model_fits(config, options);
  const std::string tokenizer_path = parser.value("tokenizer").value_or(*model_path);
  std::optional<tokenizer::Tokenizer> tok(load_model_tokenizer(*model_path, parser.value("tokenizer")));
  const TokenizerFiles tokenizer_files = model_tokenizer_files(*model_path, parser.value("tokenizer"));
  check_vocabulary(*tok, tokenizer_path, config, config_path);
  auto [examples, validation] = load_data(parser, tok, options, tokenizer_path, config.vocab_size);
  auto model = load_start_model(*model_path, options);
  train::Trainer trainer(model, options, std::move(examples), std::move(validation));
  join_ranks(trainer, options);
  trainer.base_model_path = fs::absolute(*model_path).lexically_normal().string();
  trainer.add_model_files = [&](const std::string& folder) { write_tokenizer_files(tokenizer_files, folder); };
  trainer.run(start);
  std::printf("fine-tuned %lld steps; model in %s/model, metrics in %s/metrics.jsonl\n", (long long)trainer.step(),
              options.output_dir.c_str(), options.output_dir.c_str());
  return 0;
}

// What the pair trainers (preference, reward) read before their model: its config, with
// --max-length resolved into `truncation` (0: the model's context) and the memory checked for a
// step of pairs (two rows each); the tokenizer's files for the trained model's folder; the pair
// data (--data, --validation) tokenised in the model's chat format.
struct PairInputs {
  llama::LlamaConfig config;
  TokenizerFiles tokenizer_files;
  std::optional<int32_t> pad_token_id;  // the tokenizer's Llama-3.1 pad token, where it has one
  train::PreferenceData data, validation;
};

PairInputs read_pair_inputs(const FlagParser& parser, const std::string& name, const std::string& model_path,
                            const std::string& data_path, train::PreferenceTruncation& truncation,
                            train::TrainOptions& options) {
  PairInputs inputs;
  const bool from_gguf = is_gguf_file(model_path);
  const std::string config_path = from_gguf ? model_path : (fs::path(model_path) / "config.json").string();
  inputs.config =
      from_gguf ? gguf::llama_config_from_gguf(gguf::File::open(model_path)) : llama::LlamaConfig::load(config_path);
  const llama::LlamaConfig& config = inputs.config;
  const int64_t max_length = parser.int_value("max-length", 1024, 0, 1 << 30);
  truncation.max_length = max_length == 0 ? config.max_position_embeddings : max_length;
  LAMINA_CHECK(truncation.max_length <= config.max_position_embeddings, name, ": --max-length ",
               truncation.max_length, " is longer than the model's context (max_position_embeddings ",
               config.max_position_embeddings, "): give --max-length ", config.max_position_embeddings, " or less");
  options.seq_len = truncation.max_length;  // the longest row, for the memory estimate
  options.pack = false;
  // Rows per forward: a pair's chosen and rejected (a reference adds its own forwards).
  train::TrainOptions memory_options = options;
  memory_options.batch_size *= 2;
  memory_options.micro_batch_size *= 2;
  train::check_model_fits(config, memory_options);
  const std::string tokenizer_path = parser.value("tokenizer").value_or(model_path);
  const tokenizer::Tokenizer tok = load_model_tokenizer(model_path, parser.value("tokenizer"));
  inputs.tokenizer_files = model_tokenizer_files(model_path, parser.value("tokenizer"));
  check_vocabulary(tok, tokenizer_path, config, config_path);
  inputs.pad_token_id = tok.added_token_id("<|finetune_right_pad_id|>");
  train::PreferenceDataOptions data_options;
  data_options.chat = tokenizer::detect_chat_options(tokenizer_path, tok);
  data_options.truncation = truncation;
  data_options.skip_malformed = parser.is_set("skip-malformed");
  const auto read = [&](const std::string& path) {
    train::PreferenceData data = train::read_preference_jsonl(path, tok, data_options);
    if (const std::string summary = data.stats.summary(); !summary.empty())
      std::fprintf(stderr, "%s: %s\n", path.c_str(), summary.c_str());
    return data;
  };
  inputs.data = read(data_path);
  if (const std::optional<std::string> path = parser.value("validation")) inputs.validation = read(*path);
  const auto count = [](const train::PreferenceData& data) {
    return data.pairs.empty() ? str_cat(data.unpaired.size(), " labelled completions") : str_cat(data.pairs.size(), " pairs");
  };
  std::fprintf(stderr, "data: %s lines, %s%s\n", train::preference_layout_name(inputs.data.layout).c_str(),
               count(inputs.data).c_str(),
               parser.is_set("validation") ? str_cat("; validation ", count(inputs.validation)).c_str() : "");
  return inputs;
}

// `lamina train preference --loss NAME` and its aliases (`train dpo`, `train kto`, ...): an
// offline preference loss over a JSONL file of pairs (or labelled completions), from a model.
struct PreferenceCommand {
  const char* name;  // the subcommand
  const char* loss;  // the loss it trains with; empty: --loss decides
};
constexpr PreferenceCommand kPreferenceCommands[] = {
    {"preference", ""}, {"dpo", "sigmoid"}, {"ipo", "ipo"}, {"kto", "kto"},
    {"orpo", "orpo"},   {"simpo", "simpo"}, {"cpo", "cpo"},
};

int run_preference(const Arguments& args, const PreferenceCommand& command) {
  const std::string name = str_cat("lamina train ", command.name);
  FlagParser parser(name,
                    str_cat("Aligns a Llama model with ", *command.loss ? str_cat("the ", command.loss, " loss") :
                            std::string("an offline preference loss (--loss)"),
                            " on preference data in TRL's formats, one JSON object a line: {\"prompt\", \"chosen\", "
                            "\"rejected\"} (text, or message lists rendered in the model's chat format), {\"chosen\", "
                            "\"rejected\"} with the prompt their shared beginning, or {\"prompt\", \"completion\", "
                            "\"label\"} for KTO/BCO. Each step puts a batch of pairs through the policy (chosen and "
                            "rejected in one forward pass) and the reference, and logs TRL's metrics (rewards/chosen, "
                            "rewards/accuracies, logps/chosen, ...). `lamina preference-loss --list` shows every loss "
                            "and its hyperparameters."));
  parser.add_option("model", "PATH", "the model to align (usually an SFT model): an HF folder or a Llama GGUF file (required)");
  parser.add_option("data", "FILE.jsonl", "the preference data (required)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model's own)");
  if (!*command.loss) parser.add_option("loss", "NAME", "the loss: sigmoid (dpo), ipo, kto, orpo, simpo, cpo, ... (see lamina preference-loss --list)", "sigmoid");
  parser.add_option("beta", "B", "the loss's beta (its default otherwise, usually 0.1)");
  parser.add_option("loss-params", "K=V,...", "other hyperparameters of the loss, e.g. label_smoothing=0.1,rpo_alpha=1");
  parser.add_option("reference", "KIND",
                    "the reference model: copy (a frozen copy of --model), adapters-off (with --lora: the base "
                    "without the adapters, no second copy), precomputed (its log-probs computed once before the "
                    "first step and kept with the checkpoints), none (reference-free losses); auto picks none for "
                    "a loss without a reference, adapters-off with --lora, copy otherwise",
                    "auto");
  parser.add_option("max-length", "N", "tokens of prompt + completion per row at most (0 = the model's context)", "1024");
  parser.add_option("truncation-mode", "MODE", "keep_start or keep_end of a row longer than --max-length", "keep_start");
  parser.add_option("max-prompt-length", "N", "cut prompts to their last N tokens first (0 = off; TRL <= 0.28)", "0");
  parser.add_option("max-completion-length", "N", "cut completions to their first N tokens first (0 = off)", "0");
  add_training_flags(parser, TrainerKind::pairs);
  if (!parser.parse(args)) return 0;
  const std::string model_path = parser.required("model");
  const std::string data_path = parser.required("data");
  train::PreferenceOptions preference;
  preference.loss = *command.loss ? command.loss : parser.value("loss").value_or("sigmoid");
  if (const std::optional<std::string> beta = parser.value("beta")) preference.params.emplace_back("beta", *beta);
  if (const std::optional<std::string> list = parser.value("loss-params"))
    for (auto& param : key_value_list(*list, name, "loss-params")) preference.params.push_back(std::move(param));
  try {
    preference.reference = train::reference_kind_from_name(parser.value("reference").value_or("auto"));
    preference.truncation.mode = train::truncation_mode_from_name(parser.value("truncation-mode").value_or("keep_start"));
  } catch (const Error& error) {
    throw UsageError(str_cat(name, ": ", error.what()), str_cat("run '", name, " --help'"));
  }
  preference.truncation.prompt_mode = train::TruncationMode::keep_end;
  preference.truncation.max_prompt_length = parser.int_value("max-prompt-length", 0, 0, 1 << 30);
  preference.truncation.max_completion_length = parser.int_value("max-completion-length", 0, 0, 1 << 30);

  train::TrainOptions options = training_options(parser);
  const train::RunStart start = run_start(parser, options, {"model", "data", "validation", "tokenizer", "options"});
  PairInputs inputs = read_pair_inputs(parser, name, model_path, data_path, preference.truncation, options);
  auto objective = std::make_unique<train::PreferenceObjective>(preference, options, std::move(inputs.data),
                                                                std::move(inputs.validation));
  const train::PreferenceObjective& objective_view = *objective;
  auto model = load_start_model(model_path, options);
  train::Trainer trainer(model, options, std::move(objective));
  join_ranks(trainer, options);
  std::fprintf(stderr, "loss %s, reference %s\n", objective_view.loss().name.c_str(),
               train::reference_kind_name(objective_view.reference()));
  trainer.base_model_path = fs::absolute(model_path).lexically_normal().string();
  trainer.add_model_files = [&](const std::string& folder) { write_tokenizer_files(inputs.tokenizer_files, folder); };
  json::Value last;
  trainer.on_metrics = [&](const json::Value& line) { last = line; };
  trainer.run(start);
  std::string summary;
  if (last.is_object())
    for (const char* key : {"rewards/accuracies", "rewards/margins", "val_rewards/accuracies"})
      if (const json::Value* value = last.find(key)) summary += str_cat(", ", key, " ", value->as_double());
  std::printf("aligned %lld steps%s; model in %s/model, metrics in %s/metrics.jsonl\n", (long long)trainer.step(),
              summary.c_str(), options.output_dir.c_str(), options.output_dir.c_str());
  return 0;
}

// `lamina train reward`: a reward model (a Llama with a score head) on preference pairs with the
// Bradley-Terry loss, from a causal LM (a fresh head) or a reward model (continued).
int run_train_reward(const Arguments& args) {
  const std::string name = "lamina train reward";
  FlagParser parser(name,
                    "Trains a reward model - a Llama with a scalar score head, saved as Hugging Face's "
                    "LlamaForSequenceClassification - on preference pairs in TRL's format ({\"prompt\", \"chosen\", "
                    "\"rejected\"}, text or chats) with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), "
                    "as TRL's RewardTrainer. From a causal LM (its trunk and a fresh head drawn from --seed) or a "
                    "reward-model folder. Logs accuracy, margin and min/mean/max reward; score with "
                    "`lamina score --reward-model`.");
  parser.add_option("model", "PATH", "a causal LM (HF folder or GGUF) or a reward-model folder (required)");
  parser.add_option("data", "FILE.jsonl", "the preference pairs (required)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model's own)");
  parser.add_option("center-rewards", "C", "TRL's center_rewards_coefficient: + C * mean((r_c + r_r)^2)", "0");
  parser.add_option("max-length", "N", "tokens of prompt + completion per row at most (0 = the model's context)", "1024");
  parser.add_option("truncation-mode", "MODE", "keep_start or keep_end of a row longer than --max-length", "keep_start");
  add_training_flags(parser, TrainerKind::pairs);
  if (!parser.parse(args)) return 0;
  const std::string model_path = parser.required("model");
  const std::string data_path = parser.required("data");
  train::TrainOptions options = training_options(parser);

  const train::RunStart start = run_start(parser, options, {"model", "data", "validation", "tokenizer", "options"});
  train::RewardOptions reward;
  reward.center_coefficient = parser.double_value("center-rewards", 0.0, 0.0, 1e6);
  try {
    reward.truncation.mode = train::truncation_mode_from_name(parser.value("truncation-mode").value_or("keep_start"));
  } catch (const Error& error) {
    throw UsageError(str_cat(name, ": ", error.what()), str_cat("run '", name, " --help'"));
  }
  PairInputs inputs = read_pair_inputs(parser, name, model_path, data_path, reward.truncation, options);
  auto objective = std::make_unique<train::RewardObjective>(reward, options, std::move(inputs.data),
                                                            std::move(inputs.validation));
  std::shared_ptr<llama::LlamaForSequenceClassification> model;
  if (!is_gguf_file(model_path) && is_reward_model_folder(model_path)) {
    model = llama::LlamaForSequenceClassification::load(model_path);
    LAMINA_CHECK(!options.qlora, name, ": --qlora quantizes a causal LM as it loads; a reward-model folder loads whole "
                 "(quantize it after loading is not supported yet): drop --qlora");
    std::fprintf(stderr, "model: the reward model %s\n", model_path.c_str());
  } else {
    // A fresh head on the causal LM's trunk; the padding id is the tokenizer's pad token where it
    // has one (as TRL sets it), so that the saved model pools as transformers will.
    llama::ScoreHeadOptions head;
    if (inputs.pad_token_id) head.pad_token_id = *inputs.pad_token_id;
    Generator generator(options.seed);
    const auto causal = load_start_model(model_path, options);
    model = llama::LlamaForSequenceClassification::from_causal_lm(*causal, head, generator);
    std::fprintf(stderr, "model: %s's trunk with a new score head\n", model_path.c_str());
  }
  train::Trainer trainer(model, options, std::move(objective));
  join_ranks(trainer, options);
  trainer.add_model_files = [&](const std::string& folder) { write_tokenizer_files(inputs.tokenizer_files, folder); };
  json::Value last;
  trainer.on_metrics = [&](const json::Value& line) { last = line; };
  trainer.run(start);
  std::string summary;
  if (last.is_object())
    for (const char* key : {"accuracy", "val_accuracy"})
      if (const json::Value* value = last.find(key)) summary += str_cat(", ", key, " ", value->as_double());
  std::printf("trained %lld steps%s; reward model in %s/model, metrics in %s/metrics.jsonl\n", (long long)trainer.step(),
              summary.c_str(), options.output_dir.c_str(), options.output_dir.c_str());
  return 0;
}

}  // namespace

int run_train(const Arguments& args) {
  const std::string usage =
      "usage: lamina train <pretrain|sft|preference|dpo|ipo|kto|orpo|simpo|cpo|reward|grpo|rloo|online-dpo|inpo|rebel|refuel|spin> [flags]   ('lamina train <kind> --help' "
      "for the flags)";
  if (args.empty()) throw UsageError("lamina train: say what to train: pretrain, sft or preference", usage);
  if (args[0] == "--help" || args[0] == "help") {
    std::printf("%s\n\n  pretrain     a model from scratch, from an HF config.json\n  sft          fine-tune a model "
                "folder on prompt/completion or chat data\n  preference   align a model with an offline preference loss "
                "(--loss) on chosen/rejected pairs\n  dpo, ipo, kto, orpo, simpo, cpo   the same with that loss\n  reward       a reward "
                "model (score head) on chosen/rejected pairs, Bradley-Terry\n  grpo, rloo, online-dpo, inpo, rebel   online: sample "
                "completions of prompts, score them (--reward), train on them\n  refuel       online, multi-turn: dialogues with a simulated user, forked at a turn h, REBEL's "
                "regression on the final rewards\n  spin         self-play on SFT data: "
                "the data's answers against the model's own\n",
                usage.c_str());
    return 0;
  }
  const Arguments rest(args.begin() + 1, args.end());
  if (args[0] == "pretrain") return run_pretrain(rest);
  if (args[0] == "sft") return run_sft(rest);
  if (args[0] == "reward") return run_train_reward(rest);
  if (is_online_train_kind(args[0])) return run_train_online(rest, args[0]);
  if (args[0] == "refuel") return run_train_refuel(rest);
  for (const PreferenceCommand& command : kPreferenceCommands)
    if (args[0] == command.name) return run_preference(rest, command);
  const std::string suggestion =
      closest_match(args[0], {"pretrain", "sft", "preference", "dpo", "ipo", "kto", "orpo", "simpo", "cpo", "reward",
                              "grpo", "rloo", "online-dpo", "inpo", "rebel", "refuel", "spin"});
  throw UsageError("lamina train: unknown kind '" + args[0] + "'" + (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   usage);
}

int run_plot(const Arguments& args) {
  // `lamina plot metrics.jsonl`: the first argument may be the file itself.
  Arguments flags = args;
  std::optional<std::string> metrics;
  if (!flags.empty() && flags[0].rfind("-", 0) != 0) {
    metrics = flags[0];
    flags.erase(flags.begin());
  }
  FlagParser parser("lamina plot METRICS.jsonl", "Draws the train and validation loss of a metrics.jsonl as an SVG.");
  parser.add_option("output", "FILE.svg", "where to write the plot", "METRICS.svg beside the input");
  parser.add_option("title", "TEXT", "the plot's title", "the input's path");
  if (!parser.parse(flags)) return 0;
  if (!metrics) throw UsageError("lamina plot: give the metrics.jsonl to draw", "lamina plot run/metrics.jsonl");
  const std::string output = parser.value("output").value_or(fs::path(*metrics).replace_extension(".svg").string());
  io::write_file_atomically(output, train::loss_curve_svg(train::read_metrics(*metrics), parser.value("title").value_or(*metrics)));
  std::printf("wrote %s\n", output.c_str());
  return 0;
}

}  // namespace lamina::cli
