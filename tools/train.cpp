// `lamina train pretrain|sft` and `lamina plot`.
#include <cstdio>
#include <filesystem>

#include "models/tokenizer/chat.h"
#include "tensor/io/atomic_file.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

// The training knobs shared by both subcommands; defaults come from TrainOptions.
void add_training_flags(FlagParser& parser) {
  const train::TrainOptions d;
  auto text = [](auto value) { return str_cat(value); };
  parser.add_option("output", "DIR", "where metrics.jsonl, checkpoints/ and the final model/ go (required)");
  parser.add_option("options", "FILE.json", "training options as JSON, keyed like these flags; flags override it");
  parser.add_option("steps", "N", "optimizer steps", text(d.steps));
  parser.add_option("batch-size", "N", "sequences per optimizer step", text(d.batch_size));
  parser.add_option("micro-batch-size", "N", "sequences per forward/backward (gradient accumulation)", "batch-size");
  parser.add_option("seq-len", "N", "tokens per sequence", text(d.seq_len));
  parser.add_switch("no-pack", "one example per sequence instead of packing several");
  parser.add_option("lr", "LR", "peak learning rate", text(d.lr));
  parser.add_option("min-lr-ratio", "R", "final learning rate as a fraction of the peak", text(d.min_lr_ratio));
  parser.add_option("warmup-steps", "N", "linear warmup steps", text(d.warmup_steps));
  parser.add_option("schedule", "NAME", "constant, linear or cosine", d.schedule);
  parser.add_option("weight-decay", "W", "AdamW decoupled weight decay (not on norms)", text(d.weight_decay));
  parser.add_option("beta1", "B", "AdamW beta1", text(d.beta1));
  parser.add_option("beta2", "B", "AdamW beta2", text(d.beta2));
  parser.add_option("clip", "C", "global gradient-norm limit (0 = off)", text(d.clip));
  parser.add_switch("gradient-checkpointing", "recompute each layer's activations in backward (less memory)");
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N", d.device);
  parser.add_option("precision", "P", "f32, or bf16 (f32 master weights); auto = bf16 on CUDA, f32 on the CPU",
                    d.precision);
  parser.add_option("eval-every", "N", "validation loss every N steps (0 = at the end)", text(d.eval_every));
  parser.add_option("save-every", "N", "checkpoint every N steps (0 = at the end)", text(d.save_every));
  parser.add_option("keep-checkpoints", "N", "how many checkpoints to keep", text(d.keep_checkpoints));
  parser.add_option("seed", "S", "seed for shuffling (and for fresh weights)", text(d.seed));
  parser.add_option("validation", "FILE", "validation data (default: a split of --data)");
  parser.add_option("validation-fraction", "F", "fraction of --data held out when no --validation", "0.05");
  parser.add_option("format", "NAME", "JSONL format: auto, text, prompt-completion or chat", "auto");
  parser.add_switch("skip-malformed", "skip bad JSONL lines (counted) instead of stopping at the first");
  parser.add_switch("resume", "continue from the newest checkpoint in --output");
  parser.add_switch("quiet", "no progress line");
}

train::TrainOptions training_options(const FlagParser& parser) {
  train::TrainOptions options;
  if (const std::optional<std::string> file = parser.value("options")) options = train::TrainOptions::from_json(json::parse_file(*file), options);
  constexpr int64_t kMax = int64_t(1) << 40;
  options.steps = parser.int_value("steps", options.steps, 0, kMax);
  options.batch_size = parser.int_value("batch-size", options.batch_size, 1, kMax);
  options.micro_batch_size = parser.int_value("micro-batch-size", options.micro_batch_size, 0, kMax);
  options.seq_len = parser.int_value("seq-len", options.seq_len, 2, kMax);
  if (parser.is_set("no-pack")) options.pack = false;
  options.lr = parser.double_value("lr", options.lr, 1e-12, 10.0);
  options.min_lr_ratio = parser.double_value("min-lr-ratio", options.min_lr_ratio, 0.0, 1.0);
  options.warmup_steps = parser.int_value("warmup-steps", options.warmup_steps, 0, kMax);
  options.schedule = parser.value("schedule").value_or(options.schedule);
  options.weight_decay = parser.double_value("weight-decay", options.weight_decay, 0.0, 10.0);
  options.beta1 = parser.double_value("beta1", options.beta1, 0.0, 0.999999);
  options.beta2 = parser.double_value("beta2", options.beta2, 0.0, 0.999999);
  options.clip = parser.double_value("clip", options.clip, 0.0, 1e12);
  if (parser.is_set("gradient-checkpointing")) options.gradient_checkpointing = true;
  options.device = parser.value("device").value_or(options.device);
  options.precision = parser.value("precision").value_or(options.precision);
  options.eval_every = parser.int_value("eval-every", options.eval_every, 0, kMax);
  options.save_every = parser.int_value("save-every", options.save_every, 0, kMax);
  options.keep_checkpoints = parser.int_value("keep-checkpoints", options.keep_checkpoints, 1, kMax);
  options.seed = uint64_t(parser.int_value("seed", int64_t(options.seed), 0, INT64_MAX));
  options.output_dir = parser.value("output").value_or(options.output_dir);
  if (options.output_dir.empty()) throw UsageError("lamina train: --output is required", "run 'lamina train <kind> --help'");
  options.progress = !parser.is_set("quiet");
  options.validate();
  return options;
}

bool is_token_shard(const std::string& path) { return fs::path(path).extension() == ".bin"; }

// Training and validation examples from --data (and --validation): JSONL through the
// tokenizer, or a token shard (.bin) as is.
std::pair<std::vector<train::Example>, std::vector<train::Example>> load_data(
    const FlagParser& parser, const std::optional<tokenizer::Tokenizer>& tok, const train::TrainOptions& options,
    const std::string& chat_source) {
  const std::optional<std::string> data = parser.value("data");
  if (!data) throw UsageError("lamina train: --data is required", "run 'lamina train <kind> --help'");
  train::JsonlOptions jsonl;
  jsonl.format = train::data_format_from_name(parser.value("format").value_or("auto"));
  jsonl.skip_malformed = parser.is_set("skip-malformed");
  if (tok) jsonl.chat.format = tokenizer::detect_chat_format(chat_source, *tok);
  auto read = [&](const std::string& path) {
    if (is_token_shard(path)) return train::read_token_shard(path, options.seq_len + 1);
    if (!tok) throw Error("JSONL data needs a tokenizer: pass --tokenizer PATH");
    train::JsonlStats stats;
    std::vector<train::Example> examples = train::read_jsonl(path, *tok, jsonl, &stats);
    if (stats.skipped > 0)
      std::fprintf(stderr, "%s: skipped %lld malformed lines of %lld (first: %s)\n", path.c_str(), (long long)stats.skipped,
                   (long long)stats.lines, stats.first_skipped.c_str());
    return train::chunk_examples(std::move(examples), options.seq_len + 1);
  };
  std::vector<train::Example> train_examples = read(*data);
  std::vector<train::Example> validation;
  if (const std::optional<std::string> path = parser.value("validation")) {
    validation = read(*path);
  } else {
    validation = train::split_validation(train_examples, parser.double_value("validation-fraction", 0.05, 0.0, 0.9),
                                         options.seed);
  }
  if (train_examples.empty()) throw Error("lamina train: " + *data + " holds no training examples");
  std::fprintf(stderr, "data: %zu training examples, %zu validation examples\n", train_examples.size(), validation.size());
  return {std::move(train_examples), std::move(validation)};
}

// Copies the tokenizer files beside the trained model, so that its folder is self-contained
// (`lamina generate --prompt` and `lamina chat` find the tokenizer there).
void copy_tokenizer_files(const std::string& source, const std::string& output_directory) {
  const fs::path file = fs::is_directory(source) ? fs::path(source) / "tokenizer.json" : fs::path(source);
  if (!fs::exists(file)) return;
  const fs::path model = fs::path(output_directory) / "model";
  fs::copy_file(file, model / "tokenizer.json", fs::copy_options::overwrite_existing);
  const fs::path config = file.parent_path() / "tokenizer_config.json";
  if (fs::exists(config)) fs::copy_file(config, model / "tokenizer_config.json", fs::copy_options::overwrite_existing);
}

int run_pretrain(const Arguments& args) {
  FlagParser parser("lamina train pretrain", "Trains a Llama model from scratch (architecture from an HF config.json).");
  parser.add_option("config", "CONFIG.json", "the model architecture (HF config.json) (required)");
  parser.add_option("data", "FILE", "training data: JSONL ({\"text\": ...} per line) or a token shard (.bin)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (or a folder with one), for JSONL data");
  add_training_flags(parser);
  if (!parser.parse(args)) return 0;
  const std::optional<std::string> config_path = parser.value("config");
  if (!config_path) throw UsageError("lamina train pretrain: --config is required", "run 'lamina train pretrain --help'");
  const train::TrainOptions options = training_options(parser);
  const llama::LlamaConfig config = llama::LlamaConfig::load(*config_path);
  std::optional<tokenizer::Tokenizer> tok;
  const std::string tokenizer_path = parser.value("tokenizer").value_or("");
  if (!tokenizer_path.empty()) tok.emplace(tokenizer::Tokenizer::load(tokenizer_path));
  if (tok && tok->vocab_size() > config.vocab_size)
    throw Error(str_cat("the tokenizer has ", tok->vocab_size(), " ids but the config's vocab_size is ", config.vocab_size));
  auto [examples, validation] = load_data(parser, tok, options, tokenizer_path);
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f32);
  Generator generator(options.seed);
  model->init_parameters(generator);
  std::fprintf(stderr, "model: %.1fM parameters\n", double(model->parameter_count()) / 1e6);
  train::Trainer trainer(model, options, std::move(examples), std::move(validation));
  trainer.run(parser.is_set("resume"));
  if (tok) copy_tokenizer_files(tokenizer_path, options.output_dir);
  std::printf("trained %lld steps; model in %s/model, metrics in %s/metrics.jsonl\n", (long long)trainer.step(),
              options.output_dir.c_str(), options.output_dir.c_str());
  return 0;
}

int run_sft(const Arguments& args) {
  FlagParser parser("lamina train sft",
                    "Fine-tunes a Llama model on JSONL: {\"prompt\", \"completion\"} (loss on the completion) or "
                    "{\"messages\": [...]} in the chat format (loss on the assistant turns), or plain {\"text\"}.");
  parser.add_option("model", "DIR", "the model to fine-tune (HF folder) (required)");
  parser.add_option("data", "FILE.jsonl", "training data");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model folder's)");
  add_training_flags(parser);
  if (!parser.parse(args)) return 0;
  const std::optional<std::string> directory = parser.value("model");
  if (!directory) throw UsageError("lamina train sft: --model is required", "run 'lamina train sft --help'");
  const train::TrainOptions options = training_options(parser);
  const std::string tokenizer_path = parser.value("tokenizer").value_or(*directory);
  std::optional<tokenizer::Tokenizer> tok(tokenizer::Tokenizer::load(tokenizer_path));
  auto [examples, validation] = load_data(parser, tok, options, tokenizer_path);
  auto model = llama::LlamaForCausalLM::load(*directory);
  train::Trainer trainer(model, options, std::move(examples), std::move(validation));
  trainer.run(parser.is_set("resume"));
  copy_tokenizer_files(tokenizer_path, options.output_dir);
  std::printf("fine-tuned %lld steps; model in %s/model, metrics in %s/metrics.jsonl\n", (long long)trainer.step(),
              options.output_dir.c_str(), options.output_dir.c_str());
  return 0;
}

}  // namespace

int run_train(const Arguments& args) {
  const std::string usage = "usage: lamina train <pretrain|sft> [flags]   ('lamina train <kind> --help' for the flags)";
  if (args.empty()) throw UsageError("lamina train: say what to train: pretrain or sft", usage);
  if (args[0] == "--help" || args[0] == "help") {
    std::printf("%s\n\n  pretrain   a model from scratch, from an HF config.json\n  sft        fine-tune a model folder on "
                "prompt/completion or chat data\n",
                usage.c_str());
    return 0;
  }
  const Arguments rest(args.begin() + 1, args.end());
  if (args[0] == "pretrain") return run_pretrain(rest);
  if (args[0] == "sft") return run_sft(rest);
  const std::string suggestion = closest_match(args[0], {"pretrain", "sft"});
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
