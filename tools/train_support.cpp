#include "tools/train_support.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/tokenizer/tokenizer_export.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/regular_file.h"
#include "tools/model_files.h"
#include "train/distributed/communicator.h"
#include "train/distributed/rendezvous.h"

namespace lamina::cli {

namespace fs = std::filesystem;

void add_training_flags(FlagParser& parser, TrainerKind kind, const train::TrainOptions& d) {
  const bool language_model = kind == TrainerKind::language_model;
  auto text = [](auto value) { return str_cat(value); };
  parser.add_option("output", "DIR", "where metrics.jsonl, checkpoints/ and the final model/ go (required)");
  std::string keys;
  for (const std::string& key : train::TrainOptions::json_keys()) keys += (keys.empty() ? "" : ", ") + key;
  parser.add_option("options", "FILE.json",
                    "training options as a JSON object, keyed like their flags (switches true or false): " + keys +
                        "; flags override it. The other flags (data, model, tokenizer, format, run mode) are flags only");
  parser.add_option("steps", "N", "optimizer steps", text(d.steps));
  if (kind != TrainerKind::online) {
    const char* unit = language_model ? "sequences" : "pairs";
    parser.add_option("batch-size", "N", str_cat(unit, " per optimizer step (per rank when several train: lamina launch)"), text(d.batch_size));
    parser.add_option("micro-batch-size", "N", str_cat(unit, " per forward/backward (gradient accumulation)"),
                      "batch-size");
  }
  if (language_model) {
    parser.add_option("seq-len", "N", "tokens per sequence (at most the model's max_position_embeddings)", text(d.seq_len));
    parser.add_switch("no-pack", "one example per sequence instead of packing several");
    parser.add_option("attention-plan", "FILE",
                      "sparse attention: a MoA plan (lamina sparse plan|uniform) resolved at --seq-len; each head "
                      "trains under its sink and window (sinks need --no-pack)",
                      "dense attention");
  }
  parser.add_option("lr", "LR", "peak learning rate, in [1e-12, 10]", text(d.lr));
  parser.add_option("min-lr-ratio", "R", "final learning rate as a fraction of the peak", text(d.min_lr_ratio));
  parser.add_option("warmup-steps", "N", "linear warmup steps", text(d.warmup_steps));
  parser.add_option("schedule", "NAME", "constant, linear or cosine", d.schedule);
  parser.add_option("weight-decay", "W", "AdamW decoupled weight decay (not on norms), in [0, 10]", text(d.weight_decay));
  parser.add_option("beta1", "B", "AdamW beta1, in [0, 0.999999]", text(d.beta1));
  parser.add_option("beta2", "B", "AdamW beta2, in [0, 0.999999]", text(d.beta2));
  parser.add_option("eps", "E", "AdamW epsilon, in [1e-30, 1]", text(d.eps));
  parser.add_option("clip", "C", "global gradient-norm limit (0 = off)", text(d.clip));
  parser.add_switch("gradient-checkpointing", "recompute each layer's activations in backward (less memory)");
  parser.add_option("lora", "SPEC",
                    "train LoRA adapters instead of every weight, e.g. r=16,alpha=32,dropout=0.05,targets=all-linear "
                    "(settings: r (8), alpha (r), dropout (0), targets (PEFT module names joined by '+', or "
                    "all-linear; q_proj+v_proj), init (true or gaussian), rslora, dora); checkpoints and model/ then "
                    "hold the adapter alone, as a PEFT folder");
  parser.add_option("trainable", "PATTERNS",
                    "train only the parameters these name patterns match, the rest frozen: comma-separated "
                    "substrings or globs ('*' any characters), e.g. 'model.layers.4.*,model.layers.9.*' (the "
                    "blocks `lamina expand` added) or 'embed_tokens,lm_head'; not with --lora (default: every parameter)");
  parser.add_switch("qlora", "with --lora: quantize the base's projection weights to NF4 (blocks of 64, double-quantized "
                             "scales, as bitsandbytes) and train the adapters on that frozen 4-bit base");
  parser.add_option("zero-stage", "N",
                    "with several ranks (lamina launch, torchrun or SLURM): 0 = every rank holds the whole optimizer "
                    "state; 1 = ZeRO-1, AdamW's state sharded across the ranks; 2 = ZeRO-2, the summed gradients "
                    "sharded too",
                    text(d.zero_stage));
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N", d.device);
  parser.add_option("precision", "P", "f32, or bf16 (f32 master weights); auto = bf16 on CUDA and on CPUs with a bf16 fast path (AMX, or AVX-512 BF16 on AMD cores, which run it at the f32 FMA rate), f32 elsewhere",
                    d.precision);
  parser.add_option("eval-every", "N", "evaluate on the validation data every N steps (0 = at the end)", text(d.eval_every));
  parser.add_option("save-every", "N", "checkpoint every N steps (0 = at the end)", text(d.save_every));
  parser.add_option("keep-checkpoints", "N",
                    "how many checkpoints to keep (on --resume, a count below the run's applies from the next "
                    "checkpoint on)",
                    text(d.keep_checkpoints));
  parser.add_option("seed", "S", "seed for shuffling (and for fresh weights), 0 to 2^64-1", text(d.seed));
  if (kind == TrainerKind::pairs) {
    parser.add_option("validation", "FILE", "validation data (none by default)");
  } else if (kind == TrainerKind::online) {
    parser.add_option("validation", "FILE.jsonl",
                      "held-out prompt-only lines: each evaluation scores one greedy completion of each (val_reward)");
  } else {
    parser.add_option("validation", "FILE", "validation data (default: a split of --data)");
    parser.add_option("validation-fraction", "F", "fraction of --data held out when no --validation", "0.05");
    parser.add_option("validation-tokens", "N",
                      "evaluate at most the first N tokens of validation examples (0 = all); split-off examples "
                      "beyond it train instead",
                      text(kDefaultValidationTokens));
    parser.add_option("format", "NAME",
                      "JSONL format: auto (each line's layout by its keys; a line with the keys of two is an error, "
                      "and a file that mixes layouts says so), text, prompt-completion, chat or sharegpt",
                      "auto");
  }
  parser.add_switch("skip-malformed", "skip bad JSONL lines (counted) instead of stopping at the first");
  parser.add_switch("resume",
                    "continue the run in --output from its newest complete checkpoint (exactly: options that "
                    "would change its numbers are refused)");
  parser.add_switch("allow-option-changes",
                    "with --resume: continue even when such options, the model's config (rope_theta, rms_norm_eps, "
                    "...) or the training data changed (listed on stderr)");
  parser.add_switch("overwrite",
                    "replace the run in --output (removes only lamina's own files there; refused when an input, "
                    "--model say, is among them)");
  parser.add_switch("quiet", "no progress output (training steps, long evaluations)");
}

train::TrainOptions training_options(const FlagParser& parser, const train::TrainOptions& defaults) {
  train::TrainOptions options = defaults;
  // Ranks other than 0 of a distributed run keep the console to rank 0's progress line.
  const dist::DistributedEnv ranks = dist::distributed_env_from_environment();
  if (ranks.rank != 0) options.progress = false;
  if (const std::optional<std::string> file = parser.value("options")) {
    const json::Value object = json::parse_file(*file);
    try {
      options = train::TrainOptions::from_json(object, options);
    } catch (const Error& error) {
      throw Error(str_cat(*file, ": ", error.what()));
    }
  }
  const auto integer = [&](const char* name, int64_t fallback) {
    return parser.int_value(name, fallback, INT64_MIN, INT64_MAX);
  };
  // Any number, NaN included: validate() names the range and the key.
  const auto real = [&](const char* name, double fallback) { return parser.number_value(name, fallback); };
  options.steps = integer("steps", options.steps);
  options.batch_size = integer("batch-size", options.batch_size);
  options.micro_batch_size = integer("micro-batch-size", options.micro_batch_size);
  options.seq_len = integer("seq-len", options.seq_len);
  if (parser.is_set("no-pack")) options.pack = false;
  options.lr = real("lr", options.lr);
  options.min_lr_ratio = real("min-lr-ratio", options.min_lr_ratio);
  options.warmup_steps = integer("warmup-steps", options.warmup_steps);
  options.schedule = parser.value("schedule").value_or(options.schedule);
  options.weight_decay = real("weight-decay", options.weight_decay);
  options.beta1 = real("beta1", options.beta1);
  options.beta2 = real("beta2", options.beta2);
  options.eps = real("eps", options.eps);
  options.clip = real("clip", options.clip);
  if (parser.is_set("gradient-checkpointing")) options.gradient_checkpointing = true;
  options.lora = parser.value("lora").value_or(options.lora);
  options.trainable = parser.value("trainable").value_or(options.trainable);
  if (parser.is_set("qlora")) options.qlora = true;
  if (parser.is_set("attention-plan")) options.attention_plan = *parser.value("attention-plan");
  options.zero_stage = integer("zero-stage", options.zero_stage);
  options.device = parser.value("device").value_or(options.device);
  options.precision = parser.value("precision").value_or(options.precision);
  options.eval_every = integer("eval-every", options.eval_every);
  options.save_every = integer("save-every", options.save_every);
  options.keep_checkpoints = integer("keep-checkpoints", options.keep_checkpoints);
  options.seed = parser.unsigned_value("seed", options.seed);
  options.output_dir = parser.value("output").value_or(options.output_dir);
  if (options.output_dir.empty()) throw UsageError("lamina train: --output is required", "run 'lamina train <kind> --help'");
  if (parser.is_set("quiet")) options.progress = false;
  // Several ranks on CUDA: each takes the GPU of its local rank (what NCCL's communicator uses).
  if (ranks.world_size > 1 && options.device == "cuda") options.device = "cuda:" + std::to_string(ranks.local_rank);
  options.validate();
  return options;
}

train::RunStart run_start(const FlagParser& parser, const train::TrainOptions& options,
                          const std::vector<std::string>& input_flags) {
  train::RunStart start;
  if (parser.is_set("resume") && parser.is_set("overwrite"))
    throw UsageError("lamina train: --resume and --overwrite contradict each other", "pass one of them");
  if (parser.is_set("allow-option-changes") && !parser.is_set("resume"))
    throw UsageError("lamina train: --allow-option-changes only applies with --resume", "add --resume, or drop it");
  if (parser.is_set("resume")) start.existing = train::ExistingRun::resume;
  if (parser.is_set("overwrite")) start.existing = train::ExistingRun::overwrite;
  start.allow_option_changes = parser.is_set("allow-option-changes");
  for (const std::string& flag : input_flags)
    if (const std::optional<std::string> path = parser.value(flag)) start.inputs.push_back({"--" + flag, *path});
  train::check_output_folder(options.output_dir, start.existing);
  train::check_inputs_outside_run(options.output_dir, start.inputs, start.existing);
  return start;
}

TokenizerFiles read_tokenizer_files(const std::string& source) {
  const fs::path file = fs::is_directory(source) ? fs::path(source) / "tokenizer.json" : fs::path(source);
  TokenizerFiles files;
  files.tokenizer = io::read_regular_file(file.string(), "tokenizer");
  const fs::path settings = file.parent_path() / "tokenizer_config.json";
  if (fs::exists(settings)) files.settings = io::read_regular_file(settings.string(), "tokenizer");
  return files;
}

TokenizerFiles model_tokenizer_files(const std::string& model_path, const std::optional<std::string>& tokenizer_flag) {
  if (tokenizer_flag || !is_gguf_file(model_path)) return read_tokenizer_files(tokenizer_flag.value_or(model_path));
  // A GGUF model's tokenizer, as the HF files a trained model folder carries.
  const gguf::File file = gguf::File::open(model_path);
  return {tokenizer::tokenizer_json_from_gguf(file).dump(), tokenizer::tokenizer_config_from_gguf(file).dump(2)};
}

void write_tokenizer_files(const TokenizerFiles& files, const std::string& model_folder) {
  io::write_file_atomically((fs::path(model_folder) / "tokenizer.json").string(), files.tokenizer);
  if (files.settings) io::write_file_atomically((fs::path(model_folder) / "tokenizer_config.json").string(), *files.settings);
}

void check_vocabulary(const tokenizer::Tokenizer& tok, const std::string& tokenizer_path, const llama::LlamaConfig& config,
                      const std::string& config_path) {
  if (tok.vocab_size() > config.vocab_size)
    throw Error(str_cat("the tokenizer ", tokenizer_path, " has ", tok.vocab_size(), " ids but the model's vocab_size is ",
                        config.vocab_size, " (", config_path, ")"));
}

std::shared_ptr<llama::LlamaForCausalLM> load_start_model(const std::string& path, const train::TrainOptions& options) {
  if (is_gguf_file(path)) return gguf::load_llama_gguf(path);
  if (!options.qlora) return llama::LlamaForCausalLM::load(path);
  llama::LoadOptions load;
  load.dtype = options.compute_dtype();
  load.quantize_projections = true;
  if (options.progress)
    load.on_quantized = [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\rqlora: quantizing the projections to NF4 as they are read: %lld/%lld", (long long)done,
                   (long long)total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  return llama::LlamaForCausalLM::load(path, load);
}

std::vector<std::pair<std::string, std::string>> key_value_list(const std::string& text, const std::string& command,
                                                                const std::string& flag) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t start = 0;
  while (start < text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    const size_t equals = item.find('=');
    if (equals == std::string::npos || equals == 0)
      throw UsageError(str_cat(command, ": --", flag, ": '", item, "' is not NAME=VALUE"),
                       str_cat("e.g. --", flag, " name=value,other=value"));
    out.emplace_back(item.substr(0, equals), item.substr(equals + 1));
    start = comma + 1;
  }
  return out;
}

void join_ranks(train::Trainer& trainer, const train::TrainOptions& options) {
  const dist::DistributedEnv env = dist::distributed_env_from_environment();
  if (env.world_size == 1) return;
  const std::string support = trainer.data_parallel_support();
  if (!support.empty()) throw Error(str_cat("cannot train on ", env.world_size, " ranks: ", support));
  const std::string backend = options.resolved_device().is_cpu() ? "cpu" : "nccl";
  if (env.rank == 0)
    std::fprintf(stderr, "data parallel: %d ranks (%s, from %s), rendezvous at %s:%d\n", env.world_size,
                 backend.c_str(), env.source.c_str(), env.master_addr.c_str(), env.master_port);
  trainer.set_communicator(dist::make_communicator(env, backend));
}

void run_sampling_trainer(train::Trainer& trainer, const train::RunStart& start, const std::string& model_path,
                          const TokenizerFiles& files, const train::TrainOptions& options) {
  join_ranks(trainer, options);
  trainer.base_model_path = std::filesystem::absolute(model_path).lexically_normal().string();
  trainer.add_model_files = [&files](const std::string& folder) { write_tokenizer_files(files, folder); };
  std::vector<double> rewards;
  trainer.on_metrics = [&rewards](const json::Value& line) {
    if (const json::Value* value = line.find("reward")) rewards.push_back(value->as_double());
  };
  trainer.run(start);
  std::string summary;
  if (!rewards.empty()) summary = str_cat("; reward ", rewards.front(), " at the first step, ", rewards.back(), " at the last");
  std::printf("trained %lld steps%s; model in %s/model, metrics in %s/metrics.jsonl, samples in %s/samples.jsonl\n",
              (long long)trainer.step(), summary.c_str(), options.output_dir.c_str(), options.output_dir.c_str(),
              options.output_dir.c_str());
}

}  // namespace lamina::cli
