// `lamina train refuel`: rolls dialogues of --turns assistant turns with the model and a
// simulated user (--user-simulator), forks each at a random turn h into two answers, finishes
// both, scores the final answers with --reward, and regresses the turn-h answers' log-ratio gap
// on the reward gap (train/refuel_trainer.h). The training flags are every trainer's
// (tools/train_support.h), with the online kinds' optimizer defaults (lr 1e-6 decaying linearly
// to 0, no weight decay, AdamW beta2 0.999); dialogue starts per step replace --batch-size.
#include "tools/train_refuel.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/tokenizer/chat.h"
#include "tools/args.h"
#include "tools/model_files.h"
#include "tools/train_support.h"
#include "train/json_lines.h"
#include "train/refuel_trainer.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

constexpr const char* kCommand = "lamina train refuel";

// The online kinds' optimizer defaults (TRL's GRPOConfig's), which REFUEL's short runs share.
train::TrainOptions refuel_defaults() {
  train::TrainOptions d;
  d.lr = 1e-6;
  d.min_lr_ratio = 0;
  d.schedule = "linear";
  d.weight_decay = 0;
  d.beta2 = 0.999;
  return d;
}

void add_flags(FlagParser& parser) {
  parser.add_option("model", "PATH", "the policy to train (usually an SFT chat model): an HF folder or a Llama GGUF file (required)");
  parser.add_option("prompts", "FILE.jsonl",
                    "dialogue starts, one a line: {\"prompt\": text or messages} or {\"messages\": [...]}, ending with "
                    "the user's message; \"user_turns\": the scripted user's later messages; other fields (\"answer\") "
                    "go to the reward (required)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model's own)");
  parser.add_option("reward", "SPEC",
                    "scores each finished dialogue's last assistant turn (the dialogue before it is the prompt): "
                    "exact_match, format[=REGEX], length=N, max_length=N, command=\"CMD\", server=\"CMD\", or weighted "
                    "sums such as exact_match:1,format:0.2",
                    "exact_match");
  parser.add_option("turns", "H", "assistant turns per dialogue (h, the turn trained on, is drawn from 1..H)", "2");
  parser.add_option("user-simulator", "SPEC",
                    "who says the user's later messages: script (each line's \"user_turns\", at least H-1 of them) or "
                    "command=CMD (one JSON line {\"messages\": [...], \"turn\": k, <the line's other fields>} per "
                    "dialogue on its stdin; it answers one line each: a JSON string or {\"content\": \"...\"}) or "
                    "model=DIR (a model folder or GGUF file answers as the user: the dialogue with the roles swapped, in "
                    "its own chat format, greedily, --max-new-tokens at most)",
                    "script");
  parser.add_option("prompts-per-step", "P", "dialogue starts per optimizer step (2P dialogues)", "4");
  parser.add_option("prompts-per-forward", "N", "starts (both dialogues) per forward/backward", "prompts-per-step");
  parser.add_option("temperature", "T", "sampling temperature, above 0 (the authors' code: 0.8)", "0.8");
  parser.add_option("top-p", "P", "nucleus sampling (1 = off)", "1");
  parser.add_option("top-k", "K", "top-k sampling (0 = off)", "0");
  parser.add_option("max-new-tokens", "N", "tokens per assistant turn (and per user turn of model=DIR) at most", "64");
  parser.add_option("loss-params", "K=V,...",
                    "the refuel loss's hyperparameters: eta (1), form (code or paper) (lamina preference-loss --list)");
  add_training_flags(parser, TrainerKind::online, refuel_defaults());
}

// The starts of `path`; an error names the file and line (or, with --skip-malformed, the line is
// skipped and counted).
std::vector<train::DialogueStart> read_starts(const std::string& path, tokenizer::ChatFormat format, bool skip_malformed) {
  std::vector<train::DialogueStart> starts;
  train::read_json_lines(path, skip_malformed, [&](const json::Value& record, int64_t line, const std::string& where) {
    train::DialogueStart start = train::parse_dialogue_start(record, format, where);
    start.line = line;
    starts.push_back(std::move(start));
  });
  LAMINA_CHECK(!starts.empty(), path, ": no dialogue start to train on");
  return starts;
}

}  // namespace

int run_train_refuel(const Arguments& args) {
  FlagParser parser(kCommand,
                    "Trains a chat model with REFUEL (multi-turn REBEL): each step rolls a dialogue of --turns assistant "
                    "turns from each of --prompts-per-step starts with the model and a simulated user, forks it at a "
                    "random turn h into two answers, finishes both dialogues, scores their last answers with --reward, "
                    "and regresses the two turn-h answers' log-ratio gap on their reward gap. Writes metrics.jsonl "
                    "(reward, sign_align, reward_gap, ...) and samples.jsonl (both dialogues of each start, h, the "
                    "rewards) to --output. With --validation, each evaluation rolls every held-out start greedily to --turns "
                    "turns with the same simulated user and scores its last answer (val_reward).");
  add_flags(parser);
  if (!parser.parse(args)) return 0;
  const std::string model_path = parser.required("model");
  const std::string prompts_path = parser.required("prompts");

  train::RefuelOptions refuel;
  refuel.turns = parser.int_value("turns", 2, 1, 1 << 10);
  refuel.temperature = parser.double_value("temperature", 0.8, 1e-6, 1e6);
  refuel.top_p = parser.double_value("top-p", 1.0, 0.0, 1.0);
  refuel.top_k = parser.int_value("top-k", 0, 0, 1 << 30);
  refuel.max_new_tokens = parser.int_value("max-new-tokens", 64, 1, 1 << 20);
  if (const std::optional<std::string> list = parser.value("loss-params"))
    refuel.params = key_value_list(*list, kCommand, "loss-params");
  // The reward, the simulator and the loss's parameters are checked before anything is loaded.
  const std::string reward_spec = parser.value("reward").value_or("exact_match");
  const std::string user_spec = parser.value("user-simulator").value_or("script");
  // model=DIR is loaded once the device is known; the other simulators are made now.
  const bool model_user = user_spec.rfind("model=", 0) == 0;
  const std::string user_model_path = model_user ? user_spec.substr(6) : "";
  if (model_user && user_model_path.empty())
    throw UsageError(str_cat(kCommand, ": --user-simulator model=DIR: the folder is missing"),
                     str_cat("run '", kCommand, " --help'"));
  std::unique_ptr<train::UserSimulator> user;
  if (!model_user) {
    try {
      user = train::make_user_simulator(user_spec);
    } catch (const Error& error) {
      throw UsageError(str_cat(kCommand, ": --user-simulator: ", error.what()), str_cat("run '", kCommand, " --help'"));
    }
  }
  std::unique_ptr<train::Reward> reward = train::make_reward(reward_spec);
  {
    train::Hyperparameters check = train::default_hyperparameters(train::find_loss("refuel"));
    for (const auto& [name, value] : refuel.params) check.set(name, std::string_view(value));
  }

  train::TrainOptions options = training_options(parser, refuel_defaults());
  options.batch_size = parser.int_value("prompts-per-step", 4, 1, 1 << 20);
  options.micro_batch_size = parser.int_value("prompts-per-forward", 0, 1, 1 << 20);
  if (options.micro_batch_size >= options.batch_size) options.micro_batch_size = 0;
  options.pack = false;
  options.validate();
  const train::RunStart start = run_start(parser, options, {"model", "prompts", "tokenizer", "validation", "options"});

  const bool from_gguf = is_gguf_file(model_path);
  const std::string config_path = from_gguf ? model_path : (fs::path(model_path) / "config.json").string();
  const llama::LlamaConfig config =
      from_gguf ? gguf::llama_config_from_gguf(gguf::File::open(model_path)) : llama::LlamaConfig::load(config_path);
  auto tok = std::make_shared<const tokenizer::Tokenizer>(load_model_tokenizer(model_path, parser.value("tokenizer")));
  check_vocabulary(*tok, parser.value("tokenizer").value_or(model_path), config, config_path);
  const TokenizerFiles files = model_tokenizer_files(model_path, parser.value("tokenizer"));
  const tokenizer::ChatOptions chat = tokenizer::detect_chat_options(parser.value("tokenizer").value_or(model_path), *tok);
  const train::DialogueRenderer renderer(tok, chat);

  if (model_user) {
    // The user's model speaks its own chat format with its own tokenizer: only text crosses over.
    auto user_tokenizer =
        std::make_shared<const tokenizer::Tokenizer>(load_model_tokenizer(user_model_path, std::nullopt));
    tokenizer::ChatOptions user_chat = tokenizer::detect_chat_options(user_model_path, *user_tokenizer);
    std::shared_ptr<const llama::LlamaForCausalLM> user_model = load_model_on(user_model_path, Device::parse(options.device));
    user = train::make_model_user_simulator(user_model, user_tokenizer, user_chat, refuel.max_new_tokens, user_spec);
  }
  const bool skip_malformed = parser.is_set("skip-malformed");
  std::vector<train::DialogueStart> starts = read_starts(prompts_path, chat.format, skip_malformed);
  std::vector<train::DialogueStart> validation;
  if (const std::optional<std::string> path = parser.value("validation"))
    validation = read_starts(*path, chat.format, skip_malformed);
  // A start must leave room for its first answer; later turns are checked as the dialogue grows.
  int64_t longest = 0;
  for (const auto& [list, path] : {std::pair{&starts, prompts_path}, std::pair{&validation, parser.value("validation").value_or("")}})
    for (const train::DialogueStart& item : *list) {
      const int64_t length = int64_t(renderer.start(item.messages).size());
      LAMINA_CHECK(length + refuel.max_new_tokens <= config.max_position_embeddings, path, ":", item.line,
                   ": the dialogue's start holds ", length, " tokens, which with --max-new-tokens ",
                   refuel.max_new_tokens, " exceed the model's context (", config.max_position_embeddings, ")");
      longest = std::max(longest, length);
    }
  // The simulator can play every start (the scripted user has enough turns), named by file and line.
  for (const train::DialogueStart& item : starts) user->check(item, refuel.turns, prompts_path);
  for (const train::DialogueStart& item : validation) user->check(item, refuel.turns, parser.value("validation").value_or(""));
  std::fprintf(stderr, "dialogue starts: %zu from %s%s\n", starts.size(), prompts_path.c_str(),
               validation.empty() ? "" : str_cat("; ", validation.size(), " validation starts").c_str());

  // Memory: two dialogues per start, each forwarded to the end of its turn h, at most the
  // longest start and H answers (the users' messages are not known in advance: they are left out).
  train::TrainOptions memory_options = options;
  memory_options.seq_len = std::min(config.max_position_embeddings, longest + refuel.turns * refuel.max_new_tokens);
  memory_options.batch_size = options.batch_size * 2;
  memory_options.micro_batch_size = options.micro_batch_size * 2;
  train::check_model_fits(config, memory_options);

  auto objective = std::make_unique<train::RefuelObjective>(refuel, options, std::move(starts), renderer, std::move(reward),
                                                            std::move(user), config.max_position_embeddings,
                                                            std::move(validation));
  const train::RefuelObjective& view = *objective;
  const std::string reward_name = view.settings().at("reward").as_string();
  auto model = load_start_model(model_path, options);
  train::Trainer trainer(model, options, std::move(objective));
  std::fprintf(stderr, "loss refuel (eta %g), reward %s, user simulator %s, %lld starts x 2 dialogues of %lld turns a step\n",
               view.params().real("eta"), reward_name.c_str(), user_spec.c_str(), (long long)options.batch_size,
               (long long)refuel.turns);
  run_sampling_trainer(trainer, start, model_path, files, options);
  return 0;
}

}  // namespace lamina::cli
