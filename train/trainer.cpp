#include "train/trainer.h"

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "models/llama/reward_model.h"
#include "models/sparse/moa_plan.h"
#include "nn/lora.h"
#include "ops/cpu/gemm_bf16.h"
#include "tensor/cuda_runtime.h"
#include "tensor/host_memory.h"
#include "tensor/parallel.h"
#include "train/checkpoint.h"
#include "train/distributed/data_parallel.h"
#include "train/distributed/zero_optimizer.h"
#include "train/failpoint.h"
#include "train/lora_spec.h"

namespace lamina::train {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxCount = int64_t(1) << 40;

void check_count(const char* key, int64_t value, int64_t min, int64_t max = kMaxCount) {
  LAMINA_CHECK(value >= min && value <= max, "train: ", key, " (--", key, ") must be in [", min, ", ", max, "], got ",
               value);
}

void check_real(const char* key, double value, double min, double max) {
  LAMINA_CHECK(value >= min && value <= max, "train: ", key, " (--", key, ") must be a finite number in [", min, ", ",
               max, "], got ", value);
}

}  // namespace

void TrainOptions::validate() const {
  check_count("steps", steps, 0);
  check_count("batch-size", batch_size, 1);
  check_count("micro-batch-size", micro_batch_size, 0, batch_size);
  const int64_t micro = micro_batch_size == 0 ? batch_size : micro_batch_size;
  LAMINA_CHECK(batch_size % micro == 0, "train: batch size ", batch_size, " is not a multiple of the micro-batch size ",
               micro);
  check_count("seq-len", seq_len, 2);
  check_real("lr", lr, 1e-12, 10.0);
  check_real("min-lr-ratio", min_lr_ratio, 0.0, 1.0);
  check_count("warmup-steps", warmup_steps, 0);
  check_real("weight-decay", weight_decay, 0.0, 10.0);
  check_real("beta1", beta1, 0.0, 0.999999);
  check_real("beta2", beta2, 0.0, 0.999999);
  check_real("eps", eps, 1e-30, 1.0);
  check_real("clip", clip, 0.0, 1e12);
  check_count("eval-every", eval_every, 0);
  check_count("save-every", save_every, 0);
  check_count("keep-checkpoints", keep_checkpoints, 1);
  check_count("zero-stage", zero_stage, 0, 2);
  schedule_from_name(schedule);
  resolved_device();
  compute_dtype();
  if (!lora.empty()) parse_lora_spec(lora);
  LAMINA_CHECK(trainable.empty() || lora.empty(), "train: --trainable chooses which weights train in full fine-tuning; "
               "with --lora the adapters train and the base is frozen: drop one of the two");
  LAMINA_CHECK(!qlora || !lora.empty(), "train: qlora (--qlora) trains LoRA adapters on a 4-bit base: give the adapters "
               "too, e.g. --lora r=16,alpha=32,dropout=0.05,targets=all-linear");
}

DType TrainOptions::compute_dtype() const {
  // auto: bf16 on f32 master weights where the products have a bf16 fast path (a GPU, or a CPU
  // with AMX, or AMD's AVX-512 BF16, which runs at the f32 FMA rate), f32 elsewhere.
  if (precision == "auto")
    return resolved_device().is_cuda() || ops::cpu::gemm_bf16_has_fast_path() ? DType::bf16 : DType::f32;
  if (precision == "f32") return DType::f32;
  if (precision == "bf16") return DType::bf16;
  throw Error(str_cat("train: precision must be auto, f32 or bf16, got '", precision, "'"));
}

json::Value TrainOptions::to_json() const {
  json::Value out = json::Object{};
  out.set("steps", steps);
  out.set("batch-size", batch_size);
  out.set("micro-batch-size", micro_batch_size);
  out.set("seq-len", seq_len);
  out.set("pack", pack);
  out.set("lr", lr);
  out.set("min-lr-ratio", min_lr_ratio);
  out.set("warmup-steps", warmup_steps);
  out.set("schedule", schedule);
  out.set("weight-decay", weight_decay);
  out.set("beta1", beta1);
  out.set("beta2", beta2);
  out.set("eps", eps);
  out.set("clip", clip);
  out.set("gradient-checkpointing", gradient_checkpointing);
  out.set("lora", lora);
  out.set("qlora", qlora);
  out.set("trainable", trainable);
  out.set("attention-plan", attention_plan);
  out.set("zero-stage", zero_stage);
  out.set("device", device);
  out.set("precision", precision);
  out.set("eval-every", eval_every);
  out.set("save-every", save_every);
  out.set("keep-checkpoints", keep_checkpoints);
  // A JSON number holds an integer exactly only up to 2^63 - 1; above, the digits as a string.
  if (seed <= uint64_t(INT64_MAX)) out.set("seed", int64_t(seed));
  else out.set("seed", std::to_string(seed));
  return out;
}

namespace {

// The CLI's flags that say what to read and how to treat the output folder: they belong to
// one invocation, not to a reusable options file.
bool is_flag_only(const std::string& key) {
  for (const char* flag : {"data", "validation", "validation-fraction", "validation-tokens", "format", "skip-malformed",
                           "config", "model", "tokenizer", "options", "resume", "overwrite", "allow-option-changes"})
    if (key == flag) return true;
  return false;
}

std::string listed_keys() {
  std::string out;
  for (const std::string& key : TrainOptions::json_keys()) out += (out.empty() ? "" : ", ") + key;
  return out;
}

uint64_t seed_from_json(const json::Value& value) {
  const char* what = "training options: seed";
  if (value.is_string()) {
    const std::string& text = value.as_string(what);
    uint64_t seed = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), seed);
    LAMINA_CHECK(!text.empty() && error == std::errc() && end == text.data() + text.size(), what,
                 " must be an integer in [0, 18446744073709551615], got \"", text, "\"");
    return seed;
  }
  const json::Number& number = value.as_number(what);
  LAMINA_CHECK(number.is_integer || !(number.value == std::floor(number.value) && number.value >= 0x1p63), what,
               " ", number.value, " is above 2^63 - 1, where a JSON number is not exact: write it as a string of digits "
               "(\"seed\": \"18446744073709551615\")");
  const int64_t seed = value.as_int64(what);
  LAMINA_CHECK(seed >= 0, what, " must be in [0, 18446744073709551615], got ", seed);
  return uint64_t(seed);
}

}  // namespace

TrainOptions TrainOptions::from_json(const json::Value& object, TrainOptions o) {
  for (const auto& [key, value] : object.as_object("training options")) {
    const std::string what = "training options: " + key;
    if (key == "steps") o.steps = value.as_int64(what);
    else if (key == "batch-size") o.batch_size = value.as_int64(what);
    else if (key == "micro-batch-size") o.micro_batch_size = value.as_int64(what);
    else if (key == "seq-len") o.seq_len = value.as_int64(what);
    else if (key == "pack") o.pack = value.as_bool(what);
    else if (key == "lr") o.lr = value.as_double(what);
    else if (key == "min-lr-ratio") o.min_lr_ratio = value.as_double(what);
    else if (key == "warmup-steps") o.warmup_steps = value.as_int64(what);
    else if (key == "schedule") o.schedule = value.as_string(what);
    else if (key == "weight-decay") o.weight_decay = value.as_double(what);
    else if (key == "beta1") o.beta1 = value.as_double(what);
    else if (key == "beta2") o.beta2 = value.as_double(what);
    else if (key == "eps") o.eps = value.as_double(what);
    else if (key == "clip") o.clip = value.as_double(what);
    else if (key == "gradient-checkpointing") o.gradient_checkpointing = value.as_bool(what);
    else if (key == "lora") o.lora = value.as_string(what);
    else if (key == "qlora") o.qlora = value.as_bool(what);
    else if (key == "trainable") o.trainable = value.as_string(what);
    else if (key == "attention-plan") o.attention_plan = value.as_string(what);
    else if (key == "zero-stage") o.zero_stage = value.as_int64(what);
    else if (key == "device") o.device = value.as_string(what);
    else if (key == "precision") o.precision = value.as_string(what);
    else if (key == "eval-every") o.eval_every = value.as_int64(what);
    else if (key == "save-every") o.save_every = value.as_int64(what);
    else if (key == "keep-checkpoints") o.keep_checkpoints = value.as_int64(what);
    else if (key == "seed") o.seed = seed_from_json(value);
    else if (key == "output-dir" || key == "output") o.output_dir = value.as_string(what);
    else if (key == "no-pack") o.pack = !value.as_bool(what);
    else if (key == "quiet") o.progress = !value.as_bool(what);
    else if (is_flag_only(key))
      throw Error(str_cat("training options: \"", key, "\" is given as a flag only (--", key,
                          "), not in an options file: the file holds the training knobs (", listed_keys(), ")"));
    else throw Error(str_cat("training options: unknown key \"", key, "\" (the keys are ", listed_keys(), ")"));
  }
  return o;
}

const std::vector<std::string>& TrainOptions::json_keys() {
  static const std::vector<std::string> keys = {
      "steps", "batch-size", "micro-batch-size", "seq-len", "no-pack", "lr", "min-lr-ratio", "warmup-steps",
      "schedule", "weight-decay", "beta1", "beta2", "eps", "clip", "gradient-checkpointing", "lora", "qlora", "trainable", "attention-plan", "zero-stage", "device",
      "precision", "eval-every", "save-every", "keep-checkpoints", "seed", "output", "quiet"};
  return keys;
}

namespace {

AdamWOptions adamw_options(const TrainOptions& options) {
  AdamWOptions out;
  out.lr = options.lr;
  out.beta1 = options.beta1;
  out.beta2 = options.beta2;
  out.eps = options.eps;
  out.weight_decay = options.weight_decay;
  return out;
}

std::vector<nn::NamedTensor> trainable(const nn::Module& model) {
  std::vector<nn::NamedTensor> out;
  for (const auto& named : model.named_parameters())
    if (named.second.requires_grad()) out.push_back(named);
  LAMINA_CHECK(!out.empty(), "train: the model has no trainable parameters (everything is frozen)");
  return out;
}

LoaderOptions loader_options(const TrainOptions& options, int64_t rows, bool shuffle) {
  LoaderOptions out;
  out.batch_size = rows;
  out.seq_len = options.seq_len;
  out.pack = options.pack;
  out.shuffle = shuffle;
  out.seed = options.seed;
  return out;
}

// Whether the LM head is a plain weight (lm_head without adapters, 4-bit base or bias, or the
// tied embedding) on the CPU: then the fused head + loss applies, which never holds the
// [tokens, vocabulary] logits or their gradient. Anything else takes the unfused path.
bool fused_head_applies(const llama::LlamaForCausalLM& model) {
  if (!model.device().is_cpu()) return false;  // the fused op has no CUDA kernels yet
  if (model.lm_head == nullptr) return model.model->embed_tokens->quantized_table() == nullptr;
  const nn::Linear& head = *model.lm_head;
  return head.adapter_names().empty() && !head.quantized_base() && head.weight().defined() &&
         !head.bias().defined();
}

// Sum of token losses and the number of targets of one batch (built on the host), computed
// where the model is.
CrossEntropySum batch_loss(const llama::LlamaForCausalLM& model, const Batch& batch) {
  const Device device = model.device();
  const auto moved = [&](const Tensor& t) { return t.defined() ? ops::to_device(t, device) : t; };
  llama::ForwardOptions forward;
  forward.positions = moved(batch.positions);
  forward.document_ids = moved(batch.document_ids);
  return causal_lm_loss(model, moved(batch.ids), moved(batch.targets), forward);
}

// Pretraining and SFT: the mean token cross-entropy of a step's rows, packed or padded
// (train/data.h). Every micro-batch is divided by the step's total target count, so k
// micro-batches of b rows compute exactly one batch of k*b rows.
class LanguageModelObjective : public Objective {
 public:
  LanguageModelObjective(const TrainOptions& options, std::vector<Example> train, std::vector<Example> validation)
      : micro_batches_(options.micro_batch_size == 0 ? 1 : options.batch_size / options.micro_batch_size),
        seq_len_(options.seq_len),
        progress_(options.progress),
        fingerprint_(train::fingerprint(train)) {
    const int64_t micro = options.micro_batch_size == 0 ? options.batch_size : options.micro_batch_size;
    loader_ = std::make_unique<DataLoader>(std::move(train), loader_options(options, micro, true));
    if (!validation.empty())
      validation_ = std::make_unique<DataLoader>(std::move(validation), loader_options(options, micro, false));
  }

  // With data parallelism every rank draws the whole step (world_size x micro_batches_
  // micro-batches, the sequence one rank with the whole batch draws) and runs its own run of
  // them: rank r the micro-batches [r * micro_batches_, (r + 1) * micro_batches_).
  StepResult step(llama::LlamaWithHead& trained, int64_t step) override {
    llama::LlamaForCausalLM& model = causal_lm(trained, "train");
    const int ranks = data_parallel_ != nullptr ? data_parallel_->world_size() : 1;
    const int rank = data_parallel_ != nullptr ? data_parallel_->rank() : 0;
    std::vector<Batch> batches;
    int64_t target_tokens = 0;
    for (int64_t i = 0; i < micro_batches_ * ranks; ++i) {
      Batch batch = loader_->next();
      target_tokens += batch.target_tokens;
      if (i / micro_batches_ == rank) batches.push_back(std::move(batch));
    }
    LAMINA_CHECK(target_tokens > 0, "train: step ", step, " has no target token: none of its ",
                 micro_batches_ * ranks * loader_->options().batch_size,
                 " rows holds a token to learn. The data's examples have no completion or assistant tokens "
                 "(for chats: no message whose role is \"assistant\"), so there is nothing to train on");
    double loss_sum = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      const CrossEntropySum loss = batch_loss(model, batches[i]);
      loss_sum += loss.loss_sum.item<double>();
      if (data_parallel_ != nullptr && i + 1 == batches.size()) data_parallel_->expect_final_backward();
      div(loss.loss_sum, double(target_tokens)).backward();
    }
    if (data_parallel_ != nullptr) {
      data_parallel_->finish();
      loss_sum = data_parallel_->communicator().all_reduce_sum(loss_sum);
    }
    StepResult result;
    result.loss = loss_sum / double(target_tokens);
    result.tokens = micro_batches_ * ranks * seq_len_ * loader_->options().batch_size;
    result.metrics.set("target_tokens", target_tokens);
    return result;
  }

  bool has_validation() const override { return validation_ != nullptr; }
  std::string data_parallel_support() const override { return ""; }

  // Mean token loss over the validation examples; an error when they hold no target token. With
  // data parallelism rank r takes batches r, r + world_size, ... and the sums are added up.
  json::Value validate(llama::LlamaWithHead& trained) override {
    const llama::LlamaForCausalLM& model = causal_lm(trained, "train");
    const int ranks = data_parallel_ != nullptr ? data_parallel_->world_size() : 1;
    const int rank = data_parallel_ != nullptr ? data_parallel_->rank() : 0;
    const std::vector<Batch> batches = validation_->all_batches();
    TaskProgress progress(progress_, "validation batch", int64_t(batches.size()));
    double total = 0;
    int64_t count = 0;
    for (size_t i = size_t(rank); i < batches.size(); i += size_t(ranks)) {
      const CrossEntropySum loss = batch_loss(model, batches[i]);
      total += loss.loss_sum.item<double>();
      count += loss.target_count;
      progress.update(int64_t(i + 1));
    }
    progress.finish();
    if (data_parallel_ != nullptr) {
      total = data_parallel_->communicator().all_reduce_sum(total);
      count = data_parallel_->communicator().all_reduce_sum(count);
    }
    LAMINA_CHECK(count > 0, "train: the validation data holds no target token (no completion or assistant tokens): "
                            "there is no loss to measure");
    json::Value metrics = json::Object{};
    metrics.set("val_loss", total / double(count));
    return metrics;
  }

  json::Value cursor() const override { return loader_->cursor(); }
  void restore(const json::Value& cursor) override { loader_->restore(cursor); }
  DataFingerprint fingerprint() const override { return fingerprint_; }

 private:
  int64_t micro_batches_;
  int64_t seq_len_;
  bool progress_;
  DataFingerprint fingerprint_;
  std::unique_ptr<DataLoader> loader_;
  std::unique_ptr<DataLoader> validation_;
};

// A loss or gradient norm that is NaN or infinite ends the run at the step it appears in: the
// update would spread it into every weight, and every later step (and checkpoint) would be
// garbage. The weights of the last checkpoint are from before it.
void check_finite(const char* what, double value, int64_t step) {
  if (std::isfinite(value)) return;
  throw Error(str_cat("train: the ", what, " is ", std::isnan(value) ? "NaN" : "infinite", " at step ", step,
                      ": the training diverged, or the model's weights are not finite. Check the model's weights for "
                      "NaN or Inf, lower --lr or keep --clip on; the checkpoints written so far are from before this "
                      "step"));
}

// A LoRA run's adapter settings: --lora, its initial values and dropout masks drawn from the
// run's seed; nothing for a run that trains every weight.
// A reward model's adapter is PEFT's SEQ_CLS kind: its score head is new, so it trains whole
// beside the adapters and is saved with them (modules_to_save), as PEFT does for that task.
std::optional<nn::LoraConfig> lora_config(const TrainOptions& options, const llama::LlamaWithHead& model) {
  if (options.lora.empty()) return std::nullopt;
  nn::LoraConfig config = parse_lora_spec(options.lora);
  config.seed = options.seed;
  if (dynamic_cast<const llama::LlamaForSequenceClassification*>(&model) != nullptr) {
    config.task_type = "SEQ_CLS";
    config.modules_to_save = {"score"};
  }
  return config;
}

// The model, validated options applied: on the training device in the training dtype (before
// the optimizer takes its parameters, so that its state is made there too).
std::shared_ptr<llama::LlamaWithHead> placed(std::shared_ptr<llama::LlamaWithHead> model,
                                                const TrainOptions& options) {
  LAMINA_CHECK(model != nullptr, "train: no model");
  options.validate();
  // The model's weights are in memory already, on the host unless it was moved before.
  const double allocated =
      model->device().is_cuda() ? 0 : double(model->parameter_count()) * double(dtype_size(model->dtype()));
  check_model_fits(model->config(), options, allocated);
  model->to(options.resolved_device(), options.compute_dtype());
  bool four_bit_base = false;
  for (const auto& [path, linear] : nn::named_linears(*model)) four_bit_base |= linear->quantized_base();
  LAMINA_CHECK(!four_bit_base || !options.lora.empty(), "train: the model's projections are 4-bit (a quantized "
               "checkpoint), which do not train: give --lora to train adapters on them (QLoRA)");
  if (options.qlora) {
    // A model loaded with its projections quantized as they were read (llama::LoadOptions) has
    // nothing left to quantize here.
    const int64_t quantized = nn::quantize_base_weights(*model);
    if (options.progress && quantized > 0)
      std::fprintf(stderr, "qlora: %lld projection weights quantized to NF4 (double-quantized scales)\n", (long long)quantized);
  }
  if (!options.attention_plan.empty()) {
    const sparse::MoaPlan plan = sparse::MoaPlan::read(options.attention_plan);
    plan.check_fits(model->config(), "attention-plan " + options.attention_plan);
    llama::SparseAttention resolved = plan.resolve(options.seq_len);
    // A sink is a row's first positions: packed rows would give every later document the first
    // document's opening tokens as its sink.
    for (const std::vector<int64_t>& sinks : resolved.sinks)
      for (const int64_t sink : sinks)
        LAMINA_CHECK(!options.pack || sink == 0, "train: the attention plan ", options.attention_plan,
                     " keeps sink tokens, which are a row's first positions, not each packed document's: train it "
                     "with one example per row (--no-pack)");
    model->trunk().sparse_attention = std::move(resolved);
    if (options.progress)
      std::fprintf(stderr, "attention plan: %s, density %.3f at %lld tokens\n", options.attention_plan.c_str(),
                   plan.density(options.seq_len), (long long)options.seq_len);
  }
  if (const std::optional<nn::LoraConfig> lora = lora_config(options, *model)) {
    const std::vector<std::string> targeted = nn::apply_lora(*model, *lora);
    if (options.progress)
      std::fprintf(stderr, "lora: rank %lld on %zu projections, %.2fM trainable parameters of %.1fM\n",
                   (long long)lora->options.rank, targeted.size(), double(model->parameter_count(true)) / 1e6,
                   double(model->parameter_count()) / 1e6);
  }
  if (!options.trainable.empty()) {
    const std::vector<std::string> training = apply_trainable_patterns(*model, options.trainable);
    if (options.progress) {
      int64_t count = 0;
      for (const auto& [name, parameter] : model->named_parameters())
        if (parameter.requires_grad()) count += parameter.numel();
      std::fprintf(stderr, "trainable: %zu parameter tensors (%.2fM parameters of %.1fM), the rest frozen\n",
                   training.size(), double(count) / 1e6, double(model->parameter_count()) / 1e6);
    }
  }
  return model;
}

}  // namespace

namespace {

// TrainOptions::trainable's comma-separated patterns; an empty one is an error.
std::vector<std::string> split_trainable_patterns(const std::string& patterns) {
  std::vector<std::string> list;
  for (size_t start = 0;;) {
    const size_t end = patterns.find(',', start);
    list.push_back(patterns.substr(start, end == std::string::npos ? std::string::npos : end - start));
    LAMINA_CHECK(!list.back().empty(), "train: --trainable has an empty pattern in '", patterns, "'");
    if (end == std::string::npos) return list;
    start = end + 1;
  }
}

// A pattern with '*' is a glob over the whole name; one without is a substring of it.
bool trainable_name_matches(const std::vector<std::string>& patterns, const std::string& name) {
  for (const std::string& pattern : patterns)
    if (pattern.find('*') != std::string::npos ? nn::glob_match(pattern, name) : name.find(pattern) != std::string::npos)
      return true;
  return false;
}

}  // namespace

std::vector<std::string> apply_trainable_patterns(nn::Module& model, const std::string& patterns) {
  const std::vector<std::string> list = split_trainable_patterns(patterns);
  const std::vector<nn::NamedTensor> parameters = model.named_parameters();
  for (const std::string& pattern : list) {
    bool any = false;
    for (const auto& named : parameters) any = any || trainable_name_matches({pattern}, named.first);
    LAMINA_CHECK(any, "train: --trainable pattern '", pattern, "' matches no parameter (the names are like '",
                 parameters.empty() ? std::string("?") : parameters.front().first, "'; '*' matches any run of characters)");
  }
  std::vector<std::string> training;
  for (const auto& [name, parameter] : parameters) {
    const bool train = trainable_name_matches(list, name);
    parameter.set_requires_grad(train);
    if (train) training.push_back(name);
  }
  return training;
}

CrossEntropySum causal_lm_loss(const llama::LlamaForCausalLM& model, const Tensor& ids, const Tensor& targets,
                               const llama::ForwardOptions& forward) {
  if (fused_head_applies(model))
    return linear_cross_entropy_sum(model.hidden_states(ids, forward), model.output_weight(), targets);
  return cross_entropy_sum(model.forward(ids, forward), targets);
}

json::Value DataFingerprint::to_json() const {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)hash);
  json::Value out = json::Object{};
  out.set("examples", examples);
  out.set("tokens", tokens);
  out.set("hash", std::string(hex));
  return out;
}

DataFingerprint DataFingerprint::from_json(const json::Value& value) {
  DataFingerprint out;
  out.examples = value.at("examples").as_int64("trainer.json: data.examples");
  out.tokens = value.at("tokens").as_int64("trainer.json: data.tokens");
  const std::string& hex = value.at("hash").as_string("trainer.json: data.hash");
  const auto [end, error] = std::from_chars(hex.data(), hex.data() + hex.size(), out.hash, 16);
  LAMINA_CHECK(error == std::errc() && end == hex.data() + hex.size(), "trainer.json: data.hash is not hexadecimal: ", hex);
  return out;
}

std::string DataFingerprint::describe() const {
  return str_cat(examples, " examples, ", tokens, " tokens, hash ", to_json().at("hash").as_string());
}

DataFingerprint fingerprint(const std::vector<Example>& examples) {
  // FNV-1a over 64-bit words (each token's id and mask bit; each example's length), then a
  // final mix: a word per token keeps it fast on corpora of billions of tokens.
  constexpr uint64_t kPrime = 0x100000001b3ULL;
  DataFingerprint out;
  uint64_t hash = 0xcbf29ce484222325ULL;
  const auto mix = [&](uint64_t word) { hash = (hash ^ word) * kPrime; };
  for (const Example& example : examples) {
    mix(uint64_t(example.ids.size()) | (uint64_t(1) << 63));
    for (size_t i = 0; i < example.ids.size(); ++i)
      mix(uint64_t(uint32_t(example.ids[i])) | (uint64_t(i < example.loss_mask.size() && example.loss_mask[i]) << 32));
    out.tokens += int64_t(example.ids.size());
  }
  hash ^= hash >> 33;
  hash *= 0xff51afd7ed558ccdULL;
  hash ^= hash >> 33;
  out.examples = int64_t(examples.size());
  out.hash = hash;
  return out;
}

std::vector<OptionChange> exactness_breaking_changes(const TrainOptions& saved, const TrainOptions& now) {
  const json::Value before = saved.to_json(), after = now.to_json();
  std::vector<OptionChange> changes;
  const auto text = [](const json::Value& options, const char* key) { return options.at(key).dump(); };
  const auto compare = [&](const char* key) {
    if (text(before, key) != text(after, key)) changes.push_back({key, text(before, key), text(after, key)});
  };
  const auto micro = [](const TrainOptions& o) { return o.micro_batch_size == 0 ? o.batch_size : o.micro_batch_size; };
  compare("batch-size");
  if (micro(saved) != micro(now)) changes.push_back({"micro-batch-size", str_cat(micro(saved)), str_cat(micro(now))});
  for (const char* key : {"seq-len", "pack", "seed", "lr", "min-lr-ratio", "warmup-steps", "schedule", "weight-decay",
                          "beta1", "beta2", "eps", "clip", "lora", "qlora", "trainable", "attention-plan", "zero-stage"})
    compare(key);
  if (saved.compute_dtype() != now.compute_dtype())
    changes.push_back({"precision", str_cat(saved.precision, " (", dtype_name(saved.compute_dtype()), ")"),
                       str_cat(now.precision, " (", dtype_name(now.compute_dtype()), ")")});
  if (saved.resolved_device().is_cuda() != now.resolved_device().is_cuda()) changes.push_back({"device", saved.device, now.device});
  if ((saved.schedule != "constant" || now.schedule != "constant") && saved.steps != now.steps)
    changes.push_back({"steps", str_cat(saved.steps, " (the ", saved.schedule, " schedule's length)"), str_cat(now.steps)});
  return changes;
}

TrainingMemory estimate_training_memory(const llama::LlamaConfig& config, const TrainOptions& options) {
  TrainingMemory memory;
  // In doubles: the products overflow int64 for absurd sizes, which is the point.
  const double rows = double(options.micro_batch_size == 0 ? options.batch_size : options.micro_batch_size);
  const double tokens = double(options.seq_len);
  memory.parameters = config.parameter_count();
  const double parameters = double(memory.parameters);
  const bool on_cpu = !options.resolved_device().is_cuda();
  // The fused CPU attention reads packed rows' document ids; CUDA's reference path builds the
  // [B, 1, T, T] f32 mask from them on the host.
  memory.mask = options.pack && !on_cpu ? rows * tokens * tokens * 4 : 0;
  if (!on_cpu) {
    memory.weights = parameters * 4;  // the f32 model on the host, before it moves to the GPU
    return memory;
  }
  memory.dtype = options.compute_dtype();
  const double width = double(dtype_size(memory.dtype));
  // With LoRA only the adapters train: gradients, moments and master weights are theirs alone
  // (the adapters' own weights are counted with the trained state, f32).
  const double trained = options.lora.empty() ? parameters : double(lora_parameter_count(config, parse_lora_spec(options.lora)));
  // QLoRA keeps the projections' weights in NF4 with double-quantized scales: 4.127 bits each.
  const double four_bit = options.qlora ? double(config.linear_parameter_count()) : 0;
  memory.weights = (parameters - four_bit) * width + four_bit * (4.127 / 8) + (options.lora.empty() ? 0 : trained * 4);
  memory.gradients = trained * (options.lora.empty() ? width : 4);
  memory.moments = 2 * trained * 4;
  memory.master = memory.dtype == DType::f32 || !options.lora.empty() ? 0 : parameters * 4;
  if (!options.trainable.empty()) {
    // --trainable: gradients, moments and master weights for the matching parameters alone.
    const std::vector<std::string> patterns = split_trainable_patterns(options.trainable);
    double matching = 0;
    llama::LlamaForCausalLM::for_each_parameter_shape(config, [&](const std::string& name, const Shape& shape) {
      if (trainable_name_matches(patterns, name)) matching += double(shape_numel(shape));
    });
    memory.gradients = matching * width;
    memory.moments = 2 * matching * 4;
    memory.master = memory.dtype == DType::f32 ? 0 : matching * 4;
  }
  memory.logits = 2 * rows * tokens * double(config.vocab_size) * 4;  // f32 logits and their gradient
  // The fused CPU attention keeps no [T, T] matrix: per concurrent (row, kv head) task of its
  // backward, the f32 gradients of that head's keys and values and a tile of scores.
  const double tasks = std::min(double(num_threads()), rows * double(config.num_key_value_heads));
  memory.attention = tasks * (2 * tokens * double(config.head_dim) + 2 * 64.0 * 64.0) * 4;
  return memory;
}

namespace {
std::string bytes_text(double bytes) { return format_bytes(uint64_t(std::min(bytes, 1e19))); }
}  // namespace

std::string TrainingMemory::describe() const {
  char count[32];
  if (parameters >= 1000000000) std::snprintf(count, sizeof count, "%.2fB", double(parameters) / 1e9);
  else if (parameters >= 1000000) std::snprintf(count, sizeof count, "%.1fM", double(parameters) / 1e6);
  else std::snprintf(count, sizeof count, "%lld", (long long)parameters);
  std::string text = str_cat("weights ", bytes_text(weights), " (", count, " parameters in ", dtype_name(dtype), ")");
  if (gradients > 0) text += str_cat(", gradients ", bytes_text(gradients));
  if (moments > 0) text += str_cat(", AdamW moments ", bytes_text(moments));
  if (master > 0) text += str_cat(", f32 master weights ", bytes_text(master));
  text += str_cat(", a step's largest buffers ", bytes_text(buffers()), " (packing mask ", bytes_text(mask));
  if (logits > 0 || attention > 0)
    text += str_cat(", logits ", bytes_text(logits), ", attention scores ", bytes_text(attention));
  return text + ")";
}

void check_model_fits(const llama::LlamaConfig& config, const TrainOptions& options, double already_allocated) {
  LAMINA_CHECK(options.seq_len <= config.max_position_embeddings, "train: --seq-len ", options.seq_len,
               " is longer than the model's context, max_position_embeddings ", config.max_position_embeddings,
               " in its config");
  const TrainingMemory memory = estimate_training_memory(config, options);
  const HostMemory host = host_memory();
  // A step's buffers alone, against the machine's total (RAM and swap within this process's
  // limits): past it, no model of any size trains with these settings.
  const double rows = double(options.micro_batch_size == 0 ? options.batch_size : options.micro_batch_size);
  const double total = double(host.total_bytes);
  LAMINA_CHECK(total <= 0 || memory.buffers() <= total, "train: a step with --seq-len ", options.seq_len, " and ", rows,
               " rows per micro-batch needs at least ", bytes_text(memory.buffers()),
               " for its largest buffers (packing mask ", bytes_text(memory.mask),
               memory.logits > 0 ? str_cat(", logits ", bytes_text(memory.logits), ", attention scores ",
                                           bytes_text(memory.attention))
                                 : std::string(),
               "), more than this machine's ", bytes_text(total),
               " of memory: use a shorter --seq-len or a smaller --micro-batch-size");
  // The whole training state, against what can still be allocated now: the model may be built
  // (or loaded) already, and then holds part of it.
  const double needed = std::max(0.0, memory.total() - already_allocated);
  const double available = double(host.available_bytes);
  LAMINA_CHECK(available <= 0 || needed <= available, "train: training this model needs about ", bytes_text(memory.total()),
               " of host memory (", memory.describe(), ")",
               already_allocated > 0 ? str_cat(", of which ", bytes_text(already_allocated), " is allocated already")
                                     : std::string(),
               ", more than the ", bytes_text(available), " available: ",
               memory.state() >= memory.buffers() ? "train a smaller model, or on a machine with more memory"
                                                  : "use a shorter --seq-len or a smaller --micro-batch-size");
}

std::vector<OptionChange> model_config_changes(const llama::LlamaConfig& saved, const llama::LlamaConfig& now,
                                               const std::string& checkpoint) {
  const json::Value before = saved.to_json(), after = now.to_json();
  const auto text = [](const json::Value& config, const char* key) { return config.at(key).dump(); };
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "head_dim", "tie_word_embeddings"})
    LAMINA_CHECK(text(before, key) == text(after, key), "cannot resume from ", checkpoint, ": its model has ", key, " ",
                 text(before, key), ", the model being trained ", text(after, key),
                 ": a different architecture, whose weights are not this model's (no flag resumes across it; train "
                 "into another --output)");
  std::vector<OptionChange> changes;
  for (const char* key : {"rms_norm_eps", "rope_theta", "rope_scaling"})
    if (text(before, key) != text(after, key))
      changes.push_back({str_cat("config ", key), text(before, key), text(after, key)});
  return changes;
}

Trainer::Trainer(std::shared_ptr<llama::LlamaWithHead> model, TrainOptions options, std::vector<Example> train,
                 std::vector<Example> validation)
    : Trainer(std::move(model), options,
              std::make_unique<LanguageModelObjective>(options, std::move(train), std::move(validation))) {}

Trainer::Trainer(std::shared_ptr<llama::LlamaWithHead> model, TrainOptions options, std::unique_ptr<Objective> objective)
    : model_(placed(std::move(model), options)),
      options_(std::move(options)),
      objective_(std::move(objective)),
      fingerprint_(objective_->fingerprint()) {
  trainable(*model_);  // a model with nothing to train is an error now, not at the first step
  schedule_.kind = schedule_from_name(options_.schedule);
  schedule_.peak_lr = options_.lr;
  schedule_.warmup_steps = options_.warmup_steps;
  schedule_.total_steps = std::max<int64_t>(1, options_.steps);
  schedule_.min_lr_ratio = options_.min_lr_ratio;
  model_->set_gradient_checkpointing(options_.gradient_checkpointing);
  lora_ = lora_config(options_, *model_);
  objective_->prepare(*model_, options_);
}

Trainer::~Trainer() = default;

int Trainer::rank() const { return communicator_ != nullptr ? communicator_->rank() : 0; }
int Trainer::world_size() const { return communicator_ != nullptr ? communicator_->world_size() : 1; }

AdamW& Trainer::optimizer() {
  if (!optimizer_) optimizer_.emplace(trainable(*model_), adamw_options(options_));
  return *optimizer_;
}

void Trainer::set_communicator(std::shared_ptr<dist::Communicator> communicator) {
  LAMINA_CHECK(step_ == 0 && data_parallel_ == nullptr, "train: set_communicator comes once, before the run");
  if (communicator == nullptr || communicator->world_size() == 1) return;
  const std::string support = objective_->data_parallel_support();
  LAMINA_CHECK(support.empty(), "train: cannot run on ", communicator->world_size(), " ranks: ", support);
  communicator_ = std::move(communicator);
  data_parallel_ =
      std::make_unique<dist::DataParallel>(communicator_, trainable(*model_), int(options_.zero_stage));
  // Every rank starts from rank 0's weights (a fresh run's ranks drew the same ones from the
  // seed; this makes it so whatever they did), before ZeRO copies its shard of them.
  data_parallel_->broadcast_parameters(0);
  if (options_.zero_stage > 0) {
    optimizer_.reset();
    zero_ = std::make_unique<dist::ZeroOptimizer>(*data_parallel_, adamw_options(options_));
  }
  objective_->set_data_parallel(data_parallel_.get());
}

json::Value Trainer::validate() {
  autograd::NoGradGuard no_grad;
  // Evaluation mode for the pass (LoRA dropout off), training mode again however it ends.
  struct EvalMode {
    llama::LlamaWithHead& model;
    explicit EvalMode(llama::LlamaWithHead& m) : model(m) { model.eval(); }
    ~EvalMode() { model.train(); }
  } eval_mode(*model_);
  return objective_->validate(*model_);
}

json::Value Trainer::trainer_state() const {
  json::Value state = json::Object{};
  state.set("data_cursor", objective_->cursor());
  if (const json::Value settings = objective_->settings(); !settings.is_null()) state.set("objective", settings);
  if (const json::Value objective_state = objective_->state(); !objective_state.is_null())
    state.set("objective_state", objective_state);
  state.set("tokens_seen", tokens_seen_);
  state.set("world_size", int64_t(world_size()));
  state.set("options", options_.to_json());
  state.set("data", fingerprint_.to_json());
  if (lora_) {
    // Where the adapters' dropout stream is: a resumed run draws the masks the uninterrupted
    // one would have (the offset as text: all 64 bits).
    state.set("lora_dropout_offset", std::to_string(nn::lora_selection(*model_)->dropout_generator.offset()));
  }
  return state;
}

// ZeRO: every rank's shard of the optimizer goes into the checkpoint rank 0 is writing; rank 0
// names its partial folder once its own files are there, the others write theirs into it, and
// rank 0 completes the checkpoint only after all have (the barrier).
void Trainer::save_checkpoint(MetricsLog* log) {
  if (options_.output_dir.empty()) return;
  if (rank() != 0) {
    if (zero_ != nullptr) save_zero_shard_of_follower();
    return;
  }
  if (log != nullptr) log->sync();  // the metrics of the steps a checkpoint covers are as durable as it is
  const nn::LoraConfig* adapter = lora_ ? &*lora_ : nullptr;
  if (zero_ == nullptr) {
    save_training_checkpoint(options_.output_dir, step_, *model_, optimizer(), trainer_state(),
                             options_.keep_checkpoints, checkpoint_fault, adapter);
    return;
  }
  const OptimizerCheckpoint shards{zero_->state_json(), [&](const std::string& folder) {
                                     zero_->save_shard(folder);
                                     communicator_->broadcast_text(fs::absolute(folder).string(), 0);
                                     communicator_->barrier();
                                   }};
  save_training_checkpoint(options_.output_dir, step_, *model_, shards, trainer_state(), options_.keep_checkpoints,
                           checkpoint_fault, adapter);
}

void Trainer::save_zero_shard_of_follower() {
  const std::string folder = communicator_->broadcast_text("", 0);
  zero_->save_shard(folder);
  communicator_->barrier();
}

CheckpointContents Trainer::load_checkpoint_files(const std::string& checkpoint) {
  const nn::LoraConfig* adapter = lora_ ? &*lora_ : nullptr;
  if (zero_ == nullptr) return load_training_checkpoint(checkpoint, *model_, optimizer(), adapter);
  json::Value optimizer_state;
  CheckpointContents contents = load_training_checkpoint_model(checkpoint, *model_, optimizer_state, adapter);
  zero_->load_shard(checkpoint, optimizer_state);
  return contents;
}

std::string Trainer::resume(bool allow_option_changes) {
  const std::string& directory = options_.output_dir;
  const std::vector<std::string> candidates = complete_checkpoints(directory);
  if (candidates.empty()) {
    std::fprintf(stderr, "resume: no complete checkpoint in %s/checkpoints yet; starting at step 0\n", directory.c_str());
    return "";
  }
  std::optional<CheckpointContents> contents;
  std::string chosen, newest_error, listing;
  const auto does_not_load = [&](const std::string& candidate, const Error& error) {
    if (newest_error.empty()) newest_error = error.what();
    std::fprintf(stderr, "warning: checkpoint %s does not load (%s); trying the one before it\n", candidate.c_str(),
                 error.what());
  };
  for (const std::string& candidate : candidates) {
    // What the checkpoint was made with is checked before its weights and optimizer state are
    // loaded: a changed precision or model config is a change to name, not a broken checkpoint.
    std::optional<CheckpointHeader> header;
    try {
      header = read_checkpoint_header(candidate);
    } catch (const Error& error) {
      does_not_load(candidate, error);
      continue;
    }
    const json::Value& state = header->trainer_state;
    std::vector<OptionChange> changes =
        exactness_breaking_changes(TrainOptions::from_json(state.at("options"), TrainOptions{}), options_);
    for (OptionChange& change : model_config_changes(header->config, model_->config(), candidate))
      changes.push_back(std::move(change));
    if (const json::Value* data = state.find("data")) {
      const DataFingerprint saved = DataFingerprint::from_json(*data);
      if (saved != fingerprint_) changes.push_back({"training data", saved.describe(), fingerprint_.describe()});
    }
    const json::Value* saved_settings = state.find("objective");
    const std::string saved_text = saved_settings != nullptr ? saved_settings->dump() : "none";
    const json::Value settings = objective_->settings();
    const std::string settings_text = settings.is_null() ? "none" : settings.dump();
    if (saved_text != settings_text) changes.push_back({"objective", saved_text, settings_text});
    // Data parallelism: the step's rows are split differently, and summed in another order.
    const json::Value* saved_world = state.find("world_size");
    const int64_t saved_ranks = saved_world != nullptr ? saved_world->as_int64("trainer.json: world_size") : 1;
    if (saved_ranks != world_size()) changes.push_back({"world size (ranks)", str_cat(saved_ranks), str_cat(world_size())});
    listing.clear();
    for (const OptionChange& change : changes) listing += str_cat("\n  ", change.key, ": ", change.saved, " -> ", change.now);
    LAMINA_CHECK(changes.empty() || allow_option_changes, "cannot resume from ", candidate,
                 " exactly: these differ from the run it continues (saved -> now):", listing,
                 "\nuse the run's own settings, or pass --allow-option-changes to continue anyway (the result will "
                 "no longer match an uninterrupted run)");
    LAMINA_CHECK(header->step <= options_.steps, "cannot resume from ", candidate, ": it is at step ", header->step,
                 ", beyond --steps ", options_.steps);
    try {
      contents = load_checkpoint_files(candidate);
      chosen = candidate;
      break;
    } catch (const Error& error) {
      does_not_load(candidate, error);
    }
  }
  if (!contents)
    throw Error(str_cat("cannot resume: none of the ", candidates.size(), " complete checkpoints in ", directory,
                        "/checkpoints loads (the newest: ", newest_error, ")"));
  if (!listing.empty())
    std::fprintf(stderr, "resume: continuing with changes that break exactness (--allow-option-changes):%s\n",
                 listing.c_str());
  step_ = contents->step;
  restore_trainer_state(contents->trainer_state);
  std::fprintf(stderr, "resuming from %s (step %lld)%s\n", chosen.c_str(), (long long)step_,
               chosen == candidates.front() ? "" : ", the newest checkpoint that loads");
  return chosen;
}

void Trainer::restore_trainer_state(const json::Value& state) {
  objective_->restore(state.at("data_cursor"));
  if (const json::Value* objective_state = state.find("objective_state")) objective_->restore_state(*objective_state);
  tokens_seen_ = state.at("tokens_seen").as_int64("trainer.json: tokens_seen");
  if (const json::Value* offset = state.find("lora_dropout_offset"); lora_ && offset != nullptr) {
    const std::string& text = offset->as_string("trainer.json: lora_dropout_offset");
    uint64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    LAMINA_CHECK(error == std::errc() && end == text.data() + text.size(), "trainer.json: lora_dropout_offset is not a "
                 "number: '", text, "'");
    nn::lora_selection(*model_)->dropout_generator.set_offset(value);
  }
}

// A rank other than 0 of a data-parallel run with an output folder: rank 0 owns the folder
// (its lock, cleaning, pruning, metrics, checkpoints); this rank loads the checkpoint rank 0
// resumes from, if any, and trains beside it.
void Trainer::run_follower() {
  const std::string chosen = communicator_->broadcast_text("", 0);
  if (!chosen.empty()) {
    const CheckpointContents contents = load_checkpoint_files(chosen);
    step_ = contents.step;
    restore_trainer_state(contents.trainer_state);
  }
  train(nullptr);
}

void Trainer::prune_stopped_run() {
  const std::string& directory = options_.output_dir;
  const std::optional<std::string> newest = latest_checkpoint(directory);
  if (!newest) return;
  // The saved run's own count is what it would have pruned to; a header that does not read
  // leaves everything in place (resume then falls back past it).
  int64_t saved_keep = 0;
  try {
    saved_keep = read_checkpoint_header(*newest).trainer_state.at("options").at("keep-checkpoints").as_int64();
  } catch (const Error&) {
    return;
  }
  if (saved_keep < 1) return;
  for (const std::string& name : prune_checkpoints(directory, std::max(saved_keep, options_.keep_checkpoints)))
    std::fprintf(stderr, "removed %s/%s: beyond the %lld checkpoints the run keeps (--keep-checkpoints); it was stopped "
                 "before pruning it\n", directory.c_str(), name.c_str(), (long long)saved_keep);
}

void Trainer::run(RunStart start) {
  if (options_.output_dir.empty()) {
    train(nullptr);
    return;
  }
  if (rank() != 0) {
    run_follower();
    return;
  }
  const std::string& directory = options_.output_dir;
  check_output_folder(directory, start.existing);
  check_inputs_outside_run(directory, start.inputs, start.existing);
  const bool created = !fs::exists(directory);
  fs::create_directories(directory);
  try {
    const OutputFolderLock lock(directory);
    // Again, now that the folder is ours: what is there now is what the run will find.
    check_output_folder(directory, start.existing);
    check_inputs_outside_run(directory, start.inputs, start.existing);
    if (start.existing == ExistingRun::overwrite) {
      std::string removed;
      for (const std::string& name : remove_run_files(directory)) removed += (removed.empty() ? "" : ", ") + name;
      if (!removed.empty()) std::fprintf(stderr, "overwrite: removed the run in %s (%s)\n", directory.c_str(), removed.c_str());
    }
    std::vector<std::string> debris = remove_incomplete_checkpoints(directory);
    for (std::string& name : remove_interrupted_writes(directory)) debris.push_back(std::move(name));
    for (const std::string& name : debris)
      std::fprintf(stderr, "removed %s/%s, left by a run that was killed\n", directory.c_str(), name.c_str());
    std::string resumed_from;
    if (start.existing == ExistingRun::resume) {
      prune_stopped_run();
      resumed_from = resume(start.allow_option_changes);
    }
    if (communicator_ != nullptr)
      communicator_->broadcast_text(resumed_from.empty() ? "" : fs::absolute(resumed_from).string(), 0);
    MetricsLog log((fs::path(directory) / "metrics.jsonl").string(), start.existing == ExistingRun::resume ? step_ : -1);
    train(&log);
    log.close();
    if (lora_) lora_->base_model_name_or_path = base_model_path;
    if (options_.steps > 0) save_final_model(*model_, directory, step_, add_model_files, lora_ ? &*lora_ : nullptr);
  } catch (...) {
    std::error_code ignored;
    if (created && fs::is_empty(directory, ignored)) fs::remove(directory, ignored);  // leave nothing behind
    throw;
  }
}

void Trainer::train(MetricsLog* log) {
  const std::vector<Tensor> parameters = [&] {
    std::vector<Tensor> out;
    for (const auto& named : trainable(*model_)) out.push_back(named.second);
    return out;
  }();
  const int64_t parameter_count = model_->parameter_count();
  const Device device = model_->device();
  const std::optional<double> peak_flops = peak_flops_per_s(device_name(device), model_->dtype());
  reset_peak_memory(device);
  ProgressLine progress(options_.progress && rank() == 0);
  while (step_ < options_.steps) {
    const auto start = std::chrono::steady_clock::now();
    const dist::CommunicationStats communication_before =
        communicator_ != nullptr ? communicator_->stats() : dist::CommunicationStats{};
    const int64_t exchanges_before = data_parallel_ != nullptr ? data_parallel_->exchanges() : 0;
    const StepResult result = objective_->step(*model_, step_ + 1);
    LAMINA_CHECK(data_parallel_ == nullptr || data_parallel_->exchanges() == exchanges_before + 1, "train: the "
                 "objective did not exchange its step's gradients once (data_parallel->finish())");
    check_finite("loss", result.loss, step_ + 1);
    if (zero_ != nullptr) zero_->take_gradients();
    const double grad_norm =
        zero_ != nullptr ? zero_->clip_grad_norm(options_.clip) : clip_grad_norm(parameters, options_.clip);
    check_finite("gradient norm", grad_norm, step_ + 1);
    const double lr = schedule_.lr(step_);
    if (zero_ != nullptr) {
      zero_->step(lr);
      zero_->zero_grad();
      for (const Tensor& parameter : parameters) parameter.set_grad(Tensor());  // stage 1 kept the whole sums
    } else {
      optimizer().step(lr);
      optimizer().zero_grad();
    }
    ++step_;
    failpoint("train.after-step", step_, log != nullptr ? log->path() : "");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t tokens = result.tokens;
    tokens_seen_ += tokens;
    json::Value line = json::Object{};
    line.set("step", step_);
    line.set("loss", result.loss);
    line.set("lr", lr);
    line.set("grad_norm", grad_norm);
    for (const auto& [key, value] : result.metrics.as_object()) line.set(key, value);
    line.set("tokens", tokens_seen_);
    line.set("tokens_per_s", double(tokens) / seconds);
    // Model FLOPs per token ~ 6 x parameters (forward + backward); MFU where the device's
    // peak is known (GPUs in peak_flops_per_s's table, bf16).
    const double flops_per_s = 6.0 * double(parameter_count) * double(tokens) / seconds;
    line.set("flops_per_s", flops_per_s);
    if (peak_flops) line.set("mfu", flops_per_s / *peak_flops);
    line.set("peak_rss_bytes", peak_rss_bytes());
    line.set("peak_tensor_bytes", memory_stats(device).peak_bytes);  // on the training device
    if (communicator_ != nullptr) {
      // This rank's traffic, and the wait for it after backward had ended (the part that did
      // not overlap the computation), beside the step's whole time.
      const dist::CommunicationStats now = communicator_->stats();
      line.set("world_size", int64_t(world_size()));
      line.set("comm_bytes", now.bytes_sent - communication_before.bytes_sent);
      line.set("comm_operations", now.operations - communication_before.operations);
      line.set("comm_in_flight_s", now.seconds_in_flight - communication_before.seconds_in_flight);
      line.set("comm_exposed_s", data_parallel_->last_exposed_seconds());
      line.set("step_s", seconds);
    }
    const bool evaluate = objective_->has_validation() &&
                          ((options_.eval_every > 0 && step_ % options_.eval_every == 0) || step_ == options_.steps);
    if (evaluate) {
      const json::Value metrics = validate();
      for (const auto& [key, value] : metrics.as_object()) {
        if (value.is_number()) check_finite(key == "val_loss" ? "validation loss" : key.c_str(), value.as_double(), step_);
        line.set(key, value);
      }
    }
    progress.update(step_, options_.steps, result.loss, lr, double(tokens) / seconds);
    if (log != nullptr) {
      failpoint("metrics.write", step_, log->path());
      log->write(line);
    }
    if (on_metrics) on_metrics(line);
    if ((options_.save_every > 0 && step_ % options_.save_every == 0) || step_ == options_.steps) save_checkpoint(log);
  }
  progress.finish();
}

}  // namespace lamina::train
