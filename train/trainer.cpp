#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "tensor/cuda_runtime.h"
#include "train/checkpoint.h"

namespace lamina::train {
namespace fs = std::filesystem;

void TrainOptions::validate() const {
  LAMINA_CHECK(steps >= 0, "train: steps must be >= 0, got ", steps);
  LAMINA_CHECK(batch_size > 0 && seq_len > 1, "train: batch size and sequence length must be positive (got ", batch_size,
               " and ", seq_len, ")");
  const int64_t micro = micro_batch_size == 0 ? batch_size : micro_batch_size;
  LAMINA_CHECK(micro > 0 && batch_size % micro == 0, "train: batch size ", batch_size,
               " is not a multiple of the micro-batch size ", micro);
  LAMINA_CHECK(lr > 0 && std::isfinite(lr), "train: lr must be positive, got ", lr);
  LAMINA_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1, "train: min-lr-ratio must be in [0, 1], got ", min_lr_ratio);
  LAMINA_CHECK(warmup_steps >= 0 && eval_every >= 0 && save_every >= 0 && keep_checkpoints >= 1,
               "train: warmup, eval-every and save-every must be >= 0 and keep-checkpoints >= 1");
  LAMINA_CHECK(clip >= 0, "train: clip must be >= 0, got ", clip);
  schedule_from_name(schedule);
  resolved_device();
  compute_dtype();
}

DType TrainOptions::compute_dtype() const {
  if (precision == "auto") return resolved_device().is_cuda() ? DType::bf16 : DType::f32;
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
  out.set("device", device);
  out.set("precision", precision);
  out.set("eval-every", eval_every);
  out.set("save-every", save_every);
  out.set("keep-checkpoints", keep_checkpoints);
  out.set("seed", int64_t(seed));
  return out;
}

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
    else if (key == "device") o.device = value.as_string(what);
    else if (key == "precision") o.precision = value.as_string(what);
    else if (key == "eval-every") o.eval_every = value.as_int64(what);
    else if (key == "save-every") o.save_every = value.as_int64(what);
    else if (key == "keep-checkpoints") o.keep_checkpoints = value.as_int64(what);
    else if (key == "seed") o.seed = uint64_t(value.as_int64(what));
    else if (key == "output-dir") o.output_dir = value.as_string(what);
    else throw Error(str_cat("training options: unknown key \"", key, "\""));
  }
  return o;
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

// Sum of token losses and the number of targets of one batch (built on the host), computed
// where the model is.
CrossEntropySum batch_loss(const llama::LlamaForCausalLM& model, const Batch& batch) {
  const Device device = model.device();
  const auto moved = [&](const Tensor& t) { return t.defined() ? ops::to_device(t, device) : t; };
  llama::ForwardOptions forward;
  forward.positions = moved(batch.positions);
  forward.mask = moved(batch.mask);
  return cross_entropy_sum(model.forward(moved(batch.ids), forward), moved(batch.targets));
}

// The model, validated options applied: on the training device in the training dtype (before
// the optimizer takes its parameters, so that its state is made there too).
std::shared_ptr<llama::LlamaForCausalLM> placed(std::shared_ptr<llama::LlamaForCausalLM> model,
                                                const TrainOptions& options) {
  LAMINA_CHECK(model != nullptr, "train: no model");
  options.validate();
  model->to(options.resolved_device(), options.compute_dtype());
  return model;
}

}  // namespace

Trainer::Trainer(std::shared_ptr<llama::LlamaForCausalLM> model, TrainOptions options, std::vector<Example> train,
                 std::vector<Example> validation)
    : model_(placed(std::move(model), options)),
      options_(std::move(options)),
      optimizer_(trainable(*model_), adamw_options(options_)) {
  const int64_t micro = options_.micro_batch_size == 0 ? options_.batch_size : options_.micro_batch_size;
  loader_ = std::make_unique<DataLoader>(std::move(train), loader_options(options_, micro, true));
  if (!validation.empty()) validation_ = std::make_unique<DataLoader>(std::move(validation), loader_options(options_, micro, false));
  schedule_.kind = schedule_from_name(options_.schedule);
  schedule_.peak_lr = options_.lr;
  schedule_.warmup_steps = options_.warmup_steps;
  schedule_.total_steps = std::max<int64_t>(1, options_.steps);
  schedule_.min_lr_ratio = options_.min_lr_ratio;
  model_->set_gradient_checkpointing(options_.gradient_checkpointing);
}

double Trainer::validation_loss() const {
  LAMINA_CHECK(validation_ != nullptr, "train: no validation data");
  autograd::NoGradGuard no_grad;
  double total = 0;
  int64_t count = 0;
  for (const Batch& batch : validation_->all_batches()) {
    const CrossEntropySum loss = batch_loss(*model_, batch);
    total += loss.loss_sum.item<double>();
    count += loss.target_count;
  }
  return count > 0 ? total / double(count) : 0.0;
}

json::Value Trainer::trainer_state() const {
  json::Value state = json::Object{};
  state.set("data_cursor", loader_->cursor());
  state.set("tokens_seen", tokens_seen_);
  state.set("options", options_.to_json());
  return state;
}

void Trainer::save_checkpoint() {
  if (options_.output_dir.empty()) return;
  save_training_checkpoint(options_.output_dir, step_, *model_, optimizer_, trainer_state(), options_.keep_checkpoints,
                           checkpoint_fault);
}

void Trainer::run(bool resume) {
  if (resume && !options_.output_dir.empty()) {
    if (const std::optional<std::string> latest = latest_checkpoint(options_.output_dir)) {
      const CheckpointContents contents = load_training_checkpoint(*latest, *model_, optimizer_);
      step_ = contents.step;
      loader_->restore(contents.trainer_state.at("data_cursor"));
      tokens_seen_ = contents.trainer_state.at("tokens_seen").as_int64();
      std::fprintf(stderr, "resuming from %s (step %lld)\n", latest->c_str(), (long long)step_);
    }
  }
  std::unique_ptr<MetricsLog> log;
  if (!options_.output_dir.empty()) {
    fs::create_directories(options_.output_dir);
    log = std::make_unique<MetricsLog>((fs::path(options_.output_dir) / "metrics.jsonl").string(), resume ? step_ : -1);
  }
  const int64_t micro_batches = options_.micro_batch_size == 0 ? 1 : options_.batch_size / options_.micro_batch_size;
  const std::vector<Tensor> parameters = [&] {
    std::vector<Tensor> out;
    for (const auto& named : trainable(*model_)) out.push_back(named.second);
    return out;
  }();
  const int64_t parameter_count = model_->parameter_count();
  const Device device = model_->device();
  const std::optional<double> peak_flops = peak_flops_per_s(device_name(device), model_->dtype());
  reset_peak_memory(device);
  ProgressLine progress(options_.progress);
  while (step_ < options_.steps) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<Batch> batches;
    int64_t target_tokens = 0;
    for (int64_t i = 0; i < micro_batches; ++i) {
      batches.push_back(loader_->next());
      target_tokens += batches.back().target_tokens;
    }
    double loss_sum = 0;
    for (const Batch& batch : batches) {
      const CrossEntropySum loss = batch_loss(*model_, batch);
      loss_sum += loss.loss_sum.item<double>();
      if (target_tokens > 0) div(loss.loss_sum, double(target_tokens)).backward();
    }
    const double grad_norm = clip_grad_norm(parameters, options_.clip);
    const double lr = schedule_.lr(step_);
    optimizer_.step(lr);
    optimizer_.zero_grad();
    ++step_;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t tokens = int64_t(batches.size()) * options_.seq_len * loader_->options().batch_size;
    tokens_seen_ += tokens;
    json::Value line = json::Object{};
    line.set("step", step_);
    line.set("loss", target_tokens > 0 ? loss_sum / double(target_tokens) : 0.0);
    line.set("lr", lr);
    line.set("grad_norm", grad_norm);
    line.set("target_tokens", target_tokens);
    line.set("tokens", tokens_seen_);
    line.set("tokens_per_s", double(tokens) / seconds);
    // Model FLOPs per token ~ 6 x parameters (forward + backward); MFU where the device's
    // peak is known (GPUs in peak_flops_per_s's table, bf16).
    const double flops_per_s = 6.0 * double(parameter_count) * double(tokens) / seconds;
    line.set("flops_per_s", flops_per_s);
    if (peak_flops) line.set("mfu", flops_per_s / *peak_flops);
    line.set("peak_rss_bytes", peak_rss_bytes());
    line.set("peak_tensor_bytes", memory_stats(device).peak_bytes);  // on the training device
    const bool evaluate = validation_ != nullptr &&
                          ((options_.eval_every > 0 && step_ % options_.eval_every == 0) || step_ == options_.steps);
    if (evaluate) line.set("val_loss", validation_loss());
    progress.update(step_, options_.steps, line.at("loss").as_double(), lr, double(tokens) / seconds);
    if (log) log->write(line);
    if (on_metrics) on_metrics(line);
    if ((options_.save_every > 0 && step_ % options_.save_every == 0) || step_ == options_.steps) save_checkpoint();
  }
  progress.finish();
  if (!options_.output_dir.empty() && options_.steps > 0) model_->save((fs::path(options_.output_dir) / "model").string());
}

}  // namespace lamina::train
