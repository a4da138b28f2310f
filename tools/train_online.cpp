// `lamina train grpo|rloo|online-dpo|inpo|rebel|spin`: samples completions of a prompt file with
// the policy, scores them with a rule, an external command or a weighted sum (train/rewards.h),
// and trains on them (train/online_trainer.h). `spin` reads SFT data instead ({"prompt",
// "completion"} or chat lines ending with the assistant's answer) and pairs each answer with a
// response of the policy, without a reward. The pair kinds and spin train in iterations of
// --iteration-steps steps on a pool sampled at each iteration's start. online-dpo and inpo may
// take a pairwise judge (--judge, train/judges.h) instead of a reward. The training flags are
// every trainer's (tools/train_support.h), with TRL's GRPOConfig defaults for the optimizer (lr
// 1e-6 decaying linearly to 0, no weight decay, AdamW beta2 0.999); prompts per step replace
// --batch-size.
#include "tools/train_online.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/tokenizer_export.h"
#include "tensor/io/regular_file.h"
#include "tools/args.h"
#include "tools/model_files.h"
#include "tools/train_support.h"
#include "train/judges.h"
#include "train/json_lines.h"
#include "train/online_trainer.h"
#include "train/preference_data.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

struct OnlineKind {
  const char* name;           // the subcommand
  const char* default_loss;   // the loss without --loss
  int64_t num_generations;    // G by default (TRL's defaults)
  bool loss_choice;           // whether --loss picks among the GRPO-style losses
  bool iterations;            // whether it trains in iterations (--iteration-steps)
  bool spin;                  // SFT data (--data) and no reward: SPIN
  bool judge;                 // whether a pairwise judge (--judge) may make the pairs
};
constexpr OnlineKind kOnlineKinds[] = {
    {"grpo", "grpo", 8, true, false, false, false},
    {"rloo", "rloo", 2, false, false, false, false},
    {"online-dpo", "online_dpo", 2, false, true, false, true},
    {"inpo", "inpo", 2, false, true, false, true},
    {"rebel", "rebel", 2, false, true, false, false},
    {"spin", "spin", 1, false, true, true, false},
};

const OnlineKind& online_kind(const std::string& name) {
  for (const OnlineKind& kind : kOnlineKinds)
    if (name == kind.name) return kind;
  throw Error(str_cat("lamina train: '", name, "' is not an online kind"));
}

// TRL's GRPOConfig defaults for the optimizer.
train::TrainOptions online_defaults() {
  train::TrainOptions d;
  d.lr = 1e-6;
  d.min_lr_ratio = 0;
  d.schedule = "linear";
  d.weight_decay = 0;
  d.beta2 = 0.999;
  return d;
}

// An online run's own flags, and every trainer's.
void add_flags(FlagParser& parser, const OnlineKind& kind) {
  parser.add_option("model", "PATH", "the policy to train (usually an SFT model): an HF folder or a Llama GGUF file (required)");
  if (kind.spin) {
    parser.add_option("data", "FILE.jsonl",
                      "SFT lines with the answer to learn: {\"prompt\", \"completion\"} (text or messages) or "
                      "{\"messages\": [..., {\"role\": \"assistant\", ...}]} (required)");
  } else {
    parser.add_option("prompts", "FILE.jsonl",
                      "prompt-only lines {\"prompt\": text or messages, ...}; other fields (\"answer\") go to the reward "
                      "(required)");
  }
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model's own)");
  if (!kind.spin)
    parser.add_option("reward", "SPEC",
                      "exact_match (the final \\boxed{}, #### or 'the answer is' against the line's \"answer\"), "
                      "format[=REGEX], length=N, max_length=N, command=\"CMD\" (JSONL in, one {\"reward\": x} a line "
                      "out), server=\"CMD\" (the same, one process for the run), reward_model=DIR (a lamina reward "
                      "model's score; reward_model=\"DIR|adapter=ADAPTER_DIR\" with a LoRA adapter), or weighted sums "
                      "such as exact_match:1,format:0.2",
                      kind.judge ? "exact_match; none with --judge" : "exact_match");
  if (kind.judge)
    parser.add_option("judge", "SPEC",
                      "a pairwise judge that picks the better of each prompt's two completions (then "
                      "--num-generations is 2 and --reward optional): command=\"CMD\" (JSONL in, {\"prompt\", "
                      "\"completions\": [a, b], ...} a line; one line out, 0 or 1 or {\"choice\": 0|1}), "
                      "server=\"CMD\", or reward_model=DIR (the higher of the two scores)");
  if (kind.loss_choice)
    parser.add_option("loss", "NAME", "grpo, dr_grpo, dapo, simplerl_zoo, reinforce_pp or reinforce_pp_baseline", "grpo");
  if (!kind.spin) {
    parser.add_option("num-generations", "G", "completions sampled per prompt (a group)", str_cat(kind.num_generations));
    parser.add_option("prompts-per-step", "P", "prompts per optimizer step (P x G completions)", "4");
    parser.add_option("prompts-per-forward", "N", "prompts (whole groups) per forward/backward", "prompts-per-step");
    parser.add_option("temperature", "T", "sampling temperature (0 = greedy: a group's completions are then equal)", "1");
  } else {
    parser.add_option("prompts-per-step", "P", "pairs (data answer, generated response) per optimizer step", "4");
    parser.add_option("prompts-per-forward", "N", "pairs per forward/backward", "prompts-per-step");
    parser.add_option("temperature", "T", "temperature of the generated responses (0 = greedy)", "0");
  }
  if (kind.iterations) {
    parser.add_option("iteration-steps", "K",
                      "steps per iteration: each iteration samples its pool with the policy as it stands (pi_t), "
                      "computes pi_t's log-probs once, and trains K steps on it (1: every step samples anew)",
                      "1");
    parser.add_option("iteration-prompts", "M", "prompts in an iteration's pool", "prompts-per-step x K");
  }
  parser.add_option("top-p", "P", "nucleus sampling (1 = off)", "1");
  parser.add_option("top-k", "K", "top-k sampling (0 = off)", "0");
  parser.add_option("max-new-tokens", "N", "tokens per completion at most", "64");
  parser.add_option("max-prompt-length", "N", "cut prompts to their last N tokens (0 = off)", "0");
  parser.add_option("beta", "B",
                    "the loss's KL weight (beta; REINFORCE++: kl_coef; SPIN: beta; INPO and REBEL: use --loss-params "
                    "eta=...)");
  parser.add_option("loss-params", "K=V,...", "other hyperparameters of the loss (lamina preference-loss --list)");
  parser.add_option("reference", "KIND",
                    "copy (a frozen copy of --model), adapters-off (with --lora), none; auto: none when the loss's KL "
                    "weight is 0, adapters-off with --lora, copy otherwise",
                    "auto");
  add_training_flags(parser, TrainerKind::online, online_defaults());
}

// The prompt-only lines of `path` as prompts to sample from; `longest` grows to the longest.
std::vector<train::OnlinePrompt> load_prompts(const std::string& path, const tokenizer::Tokenizer& tok,
                                              const train::PreferenceDataOptions& data_options,
                                              const llama::LlamaConfig& config, const std::string& command,
                                              int64_t& longest) {
  train::PreferenceData data = train::read_preference_jsonl(path, tok, data_options);
  if (const std::string summary = data.stats.summary(); !summary.empty())
    std::fprintf(stderr, "%s: %s\n", path.c_str(), summary.c_str());
  LAMINA_CHECK(data.layout == train::PreferenceLayout::prompt_only, path, ": ", command,
               " samples its own completions: it needs prompt-only lines {\"prompt\", ...}, not ",
               train::preference_layout_name(data.layout), " lines");
  std::vector<int64_t> chat_stops;
  for (int32_t id : tokenizer::stop_token_ids(tok, data_options.chat.format)) chat_stops.push_back(id);
  std::vector<train::OnlinePrompt> prompts;
  for (const train::PromptOnly& line : data.prompts) {
    train::OnlinePrompt prompt;
    prompt.ids = line.prompt;
    prompt.line = line.line;
    prompt.prompt = line.prompt_value;
    prompt.fields = line.fields;
    if (!line.messages.empty()) prompt.stop_tokens = chat_stops;
    LAMINA_CHECK(int64_t(prompt.ids.size()) < config.max_position_embeddings, path, ":", line.line, ": the prompt's ",
                 prompt.ids.size(), " tokens fill the model's context (", config.max_position_embeddings,
                 "): nothing can be sampled; use --max-prompt-length");
    longest = std::max<int64_t>(longest, int64_t(prompt.ids.size()));
    prompts.push_back(std::move(prompt));
  }
  return prompts;
}

// SPIN's data: each line's prompt, rendered as generation starts from it, with the line's own
// answer (the completion ids TRL's tokenisation gives, train/preference_data.h). A line holds
// {"prompt", "completion"} (text or messages) or {"messages": [...]} whose last message is the
// assistant's answer; anything else (a prompt without an answer) is an error naming the line.
std::vector<train::OnlinePrompt> load_answers(const std::string& path, const tokenizer::Tokenizer& tok,
                                              const train::PreferenceDataOptions& data_options,
                                              const llama::LlamaConfig& config, const std::string& command,
                                              int64_t& longest) {
  std::vector<int64_t> chat_stops;
  for (int32_t id : tokenizer::stop_token_ids(tok, data_options.chat.format)) chat_stops.push_back(id);
  std::vector<train::OnlinePrompt> prompts;
  // The preference reader's messages name the line's keys, not the file: read_json_lines adds where.
  train::read_json_lines(path, data_options.skip_malformed,
                         [&](const json::Value& record, int64_t number, const std::string& where) {
    LAMINA_CHECK(record.is_object(), where, ": expected a JSON object");
    // As an unpaired line {"prompt", "completion", "label": true}, which the preference reader checks.
    json::Value unpaired = json::Object{};
    if (const json::Value* messages = record.find("messages"); messages != nullptr && !record.find("prompt")) {
      LAMINA_CHECK(messages->is_array() && messages->as_array().size() >= 2, where,
                   ": \"messages\" needs the conversation and the assistant's answer as its last message");
      const json::Array& list = messages->as_array();
      const json::Value* role = list.back().is_object() ? list.back().find("role") : nullptr;
      LAMINA_CHECK(role != nullptr && role->is_string() && role->as_string() == "assistant", where,
                   ": the last message is not the assistant's: ", command, " learns the data's own answers");
      unpaired.set("prompt", json::Array(list.begin(), list.end() - 1));
      unpaired.set("completion", json::Array{list.back()});
    } else {
      const json::Value* prompt = record.find("prompt");
      const json::Value* completion = record.find("completion");
      LAMINA_CHECK(prompt != nullptr && completion != nullptr, where, ": ", command,
                   " trains on the data's own answers: a line needs {\"prompt\", \"completion\"} or {\"messages\": "
                   "[..., {\"role\": \"assistant\", ...}]}, not only ",
                   prompt != nullptr ? "a prompt" : "other keys");
      unpaired.set("prompt", *prompt);
      unpaired.set("completion", *completion);
    }
    unpaired.set("label", true);
    const train::PreferenceRecord parsed = train::parse_preference_record(unpaired, data_options.chat.format);
    const train::PromptCompletionIds ids =
        train::tokenize_prompt_completion(tok, parsed.prompt, parsed.completion, data_options);
    LAMINA_CHECK(!ids.completion.empty(), where, ": the answer is empty");
    train::OnlinePrompt prompt;
    prompt.ids = ids.prompt;
    prompt.answer = ids.completion;
    prompt.line = number;
    prompt.prompt = unpaired.at("prompt");
    if (parsed.conversational) prompt.stop_tokens = chat_stops;
    LAMINA_CHECK(int64_t(prompt.ids.size()) < config.max_position_embeddings, where, ": the prompt's ",
                 prompt.ids.size(), " tokens fill the model's context (", config.max_position_embeddings,
                 "): nothing can be generated; use --max-prompt-length");
    // A row is the prompt and the answer, or the prompt and a generated response.
    longest = std::max<int64_t>(longest, int64_t(prompt.ids.size() + prompt.answer.size()));
    prompts.push_back(std::move(prompt));
  });
  LAMINA_CHECK(!prompts.empty(), path, ": no line to train on");
  return prompts;
}

}  // namespace

bool is_online_train_kind(const std::string& kind) {
  for (const OnlineKind& known : kOnlineKinds)
    if (kind == known.name) return true;
  return false;
}

int run_train_online(const Arguments& args, const std::string& kind_name) {
  const OnlineKind& kind = online_kind(kind_name);
  const std::string command = str_cat("lamina train ", kind.name);
  FlagParser parser(command,
                    kind.spin
                        ? std::string("Trains a Llama model with SPIN (self-play fine-tuning): each iteration generates a "
                                      "response to each of its prompts with the model as it stands, and trains "
                                      "--iteration-steps steps to prefer the data's own answers over those responses. "
                                      "Writes metrics.jsonl (rewards/real, rewards/generated, rewards/margins, ...) and "
                                      "samples.jsonl (every generated response) to --output.")
                        : str_cat("Trains a Llama model online with ",
                                  kind.loss_choice ? "GRPO (or --loss)" : kind.default_loss,
                                  ": each step samples --num-generations completions of --prompts-per-step prompts with "
                                  "the model itself, scores them with --reward",
                                  kind.judge ? " (or has --judge pick the better of each prompt's two)" : "",
                                  ", and updates on them",
                                  kind.iterations ? " (with --iteration-steps K: each iteration samples a pool once and "
                                                    "trains K steps on it)"
                                                  : "",
                                  ". Writes metrics.jsonl (TRL's names: reward, reward_std, kl, ...) and samples.jsonl "
                                  "(every completion, its reward and advantage) to --output."));
  add_flags(parser, kind);
  if (!parser.parse(args)) return 0;
  const std::string model_path = parser.required("model");
  const std::string prompts_path = parser.required(kind.spin ? "data" : "prompts");

  train::OnlineOptions online;
  online.loss = kind.loss_choice ? parser.value("loss").value_or(kind.default_loss) : kind.default_loss;
  if (!train::is_online_loss(online.loss))
    throw UsageError(str_cat(command, ": --loss ", online.loss, " is not an online loss"),
                     "grpo, dr_grpo, dapo, simplerl_zoo, reinforce_pp or reinforce_pp_baseline");
  const std::string resolved_loss = train::find_loss(online.loss).name;
  if (kind.loss_choice && (resolved_loss == "rloo" || resolved_loss == "online_dpo" || resolved_loss == "inpo" ||
                           resolved_loss == "rebel" || resolved_loss == "spin")) {
    std::string own = resolved_loss;
    std::replace(own.begin(), own.end(), '_', '-');
    throw UsageError(str_cat(command, ": --loss ", online.loss, " has its own command"), "lamina train " + own);
  }
  if (const std::optional<std::string> beta = parser.value("beta"))
    online.params.emplace_back(resolved_loss.rfind("reinforce_pp", 0) == 0 ? "kl_coef" : "beta", *beta);
  if (const std::optional<std::string> list = parser.value("loss-params"))
    for (auto& param : key_value_list(*list, command, "loss-params")) online.params.push_back(std::move(param));
  online.num_generations =
      kind.spin ? 1 : parser.int_value("num-generations", kind.num_generations, 2, 1 << 16);
  online.temperature = parser.double_value("temperature", kind.spin ? 0.0 : 1.0, 0.0, 1e6);
  if (kind.iterations) {
    online.iteration_steps = parser.int_value("iteration-steps", 1, 1, 1 << 20);
    online.iteration_prompts = parser.int_value("iteration-prompts", 0, 1, 1 << 30);
  }
  online.top_p = parser.double_value("top-p", 1.0, 0.0, 1.0);
  online.top_k = parser.int_value("top-k", 0, 0, 1 << 30);
  online.max_new_tokens = parser.int_value("max-new-tokens", 64, 1, 1 << 20);
  try {
    online.reference = train::reference_kind_from_name(parser.value("reference").value_or("auto"));
  } catch (const Error& error) {
    throw UsageError(str_cat(command, ": ", error.what()), str_cat("run '", command, " --help'"));
  }
  // The reward and the judge are made (a reward model loaded) once, before the policy is loaded.
  // SPIN has no reward; with a judge the reward is optional.
  const std::optional<std::string> judge_spec = kind.judge ? parser.value("judge") : std::nullopt;
  const std::optional<std::string> reward_spec =
      kind.spin ? std::nullopt : judge_spec ? parser.value("reward") : parser.value("reward").value_or("exact_match");
  if (judge_spec && parser.is_set("num-generations") && parser.int_value("num-generations", 2, 2, 1 << 16) != 2)
    throw UsageError(str_cat(command, ": a --judge compares two completions of each prompt: --num-generations must "
                             "be 2 with it"),
                     str_cat("drop --num-generations, or --judge to rank ", parser.value("num-generations").value_or(""),
                             " completions by --reward"));
  if (!reward_spec && parser.value("validation"))
    throw UsageError(str_cat(command, ": --validation scores held-out completions with a reward, which ",
                             kind.spin ? "SPIN has not" : "this run has not (--judge without --reward)"),
                     kind.spin ? str_cat("run '", command, "' without --validation")
                               : std::string("give --reward too, or drop --validation"));
  std::unique_ptr<train::Reward> reward = reward_spec ? train::make_reward(*reward_spec) : nullptr;
  std::unique_ptr<train::PairwiseJudge> judge = judge_spec ? train::make_judge(*judge_spec) : nullptr;
  const std::string reward_name = reward ? reward->spec() : "none";
  const std::string judge_name = judge ? str_cat(", judge ", judge->spec()) : "";

  train::TrainOptions options = training_options(parser, online_defaults());
  options.batch_size = parser.int_value("prompts-per-step", 4, 1, 1 << 20);
  options.micro_batch_size = parser.int_value("prompts-per-forward", 0, 1, 1 << 20);
  if (options.micro_batch_size >= options.batch_size) options.micro_batch_size = 0;
  options.pack = false;
  options.validate();
  // The output folder, before anything is read.
  const train::RunStart start =
      run_start(parser, options, {"model", kind.spin ? "data" : "prompts", "tokenizer", "validation", "options"});

  const bool from_gguf = is_gguf_file(model_path);
  const std::string config_path = from_gguf ? model_path : (fs::path(model_path) / "config.json").string();
  const llama::LlamaConfig config =
      from_gguf ? gguf::llama_config_from_gguf(gguf::File::open(model_path)) : llama::LlamaConfig::load(config_path);
  const tokenizer::Tokenizer tok = load_model_tokenizer(model_path, parser.value("tokenizer"));
  check_vocabulary(tok, parser.value("tokenizer").value_or(model_path), config, config_path);
  const TokenizerFiles files = model_tokenizer_files(model_path, parser.value("tokenizer"));

  // The prompts, rendered as generation starts from them, and each line's other fields.
  train::PreferenceDataOptions data_options;
  data_options.chat = tokenizer::detect_chat_options(parser.value("tokenizer").value_or(model_path), tok);
  data_options.skip_malformed = parser.is_set("skip-malformed");
  data_options.truncation.max_length = 0;
  data_options.truncation.max_prompt_length = parser.int_value("max-prompt-length", 0, 0, 1 << 30);
  int64_t longest = 0;
  std::vector<train::OnlinePrompt> prompts =
      kind.spin ? load_answers(prompts_path, tok, data_options, config, command, longest)
                : load_prompts(prompts_path, tok, data_options, config, command, longest);
  std::vector<train::OnlinePrompt> validation;
  if (const std::optional<std::string> path = parser.value("validation"))
    validation = load_prompts(*path, tok, data_options, config, command, longest);
  std::fprintf(stderr, "prompts: %zu from %s%s\n", prompts.size(), prompts_path.c_str(),
               validation.empty() ? "" : str_cat("; ", validation.size(), " validation prompts").c_str());

  // Memory: every completion of a step is a row of at most the longest prompt + max-new-tokens.
  train::TrainOptions memory_options = options;
  memory_options.seq_len = std::min(config.max_position_embeddings, longest + online.max_new_tokens);
  // (SPIN and the iteration pools forward two rows a pair.)
  const int64_t rows_per_prompt = online.iterates() ? std::max<int64_t>(2, online.num_generations) : online.num_generations;
  memory_options.batch_size = options.batch_size * rows_per_prompt;
  memory_options.micro_batch_size = options.micro_batch_size * rows_per_prompt;
  train::check_model_fits(config, memory_options);

  const tokenizer::Tokenizer* decoder_tokenizer = &tok;
  train::CompletionDecoder decode = [decoder_tokenizer](const std::vector<int32_t>& ids) {
    tokenizer::DecodeOptions decode_options;
    decode_options.skip_special = true;
    return decoder_tokenizer->decode(ids, decode_options);
  };
  auto objective = std::make_unique<train::OnlineObjective>(
      online, options, std::move(prompts), std::move(reward), decode, std::move(validation), std::move(judge));
  const train::OnlineObjective& view = *objective;
  auto model = load_start_model(model_path, options);
  train::Trainer trainer(model, options, std::move(objective));
  std::fprintf(stderr, "loss %s, reference %s, reward %s%s, %lld prompts x %lld completions a step%s\n",
               view.loss().name.c_str(), train::reference_kind_name(view.reference()), reward_name.c_str(),
               judge_name.c_str(),
               (long long)options.batch_size, (long long)online.num_generations,
               online.iterates() ? str_cat(", iterations of ", online.iteration_steps, " steps").c_str() : "");
  run_sampling_trainer(trainer, start, model_path, files, options);
  return 0;
}

}  // namespace lamina::cli
