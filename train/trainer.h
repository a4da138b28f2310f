// The causal-LM training loop shared by pretraining and SFT (they differ only in their data):
//
//   for each optimizer step:
//     draw the step's micro-batches; count their target tokens N
//     for each micro-batch: loss_sum = sum of token cross-entropies; backward(loss_sum / N)
//     clip the global gradient norm; AdamW step at the scheduled rate
//     log one metrics line; evaluate and checkpoint every so often
//
// Dividing every micro-batch by the step's total N makes k micro-batches of b rows exactly
// one batch of k*b rows, however unevenly the target tokens fall. A run stopped and resumed
// from a checkpoint logs the same losses as one that never stopped (same device and threads),
// and ends with the same weights, bit for bit: tests/tools/test_cli_faults.cpp kills runs at
// every checkpoint stage (train/failpoint.h) and checks it.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "models/llama/model.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/run_folder.h"
#include "train/schedule.h"

namespace lamina::train {

struct TrainOptions {
  int64_t steps = 100;           // optimizer steps
  int64_t batch_size = 8;        // rows (sequences) per optimizer step
  int64_t micro_batch_size = 0;  // rows per forward/backward; 0 = batch_size
  int64_t seq_len = 256;
  bool pack = true;
  double lr = 3e-4;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double clip = 1.0;  // global gradient-norm limit; 0 = off
  bool gradient_checkpointing = false;
  std::string device = "cpu";      // cpu, cuda or cuda:N: the model is moved there before training
  std::string precision = "auto";  // f32, or bf16 (bf16 weights and activations, f32 master weights
                                   // and optimizer state); auto = bf16 on CUDA, f32 on the CPU
  int64_t eval_every = 0;  // steps; 0 = only at the end when there is validation data
  int64_t save_every = 0;  // steps; 0 = only at the end
  int64_t keep_checkpoints = 2;
  uint64_t seed = 0;       // the full 64 bits; in JSON a number, or a string of digits above 2^63 - 1
  std::string output_dir;  // metrics.jsonl, checkpoints/, model/ (final weights); empty: nothing written
  bool progress = true;    // live progress line on stderr

  // Checks every knob's range (whether it came from a flag or a JSON file), naming the key.
  void validate() const;
  Device resolved_device() const { return Device::parse(device); }
  DType compute_dtype() const;  // the parameters' dtype during training
  json::Value to_json() const;
  // Reads the knobs from a JSON object keyed like the CLI flags ("lr", "micro-batch-size", ...);
  // unknown keys are an error naming them.
  static TrainOptions from_json(const json::Value& object, TrainOptions defaults);
};

// What a data set was, for telling on resume whether it is the one the run trained on: the
// example count, token count and a hash of every example's ids and loss mask, in order.
struct DataFingerprint {
  int64_t examples = 0;
  int64_t tokens = 0;
  uint64_t hash = 0;
  json::Value to_json() const;  // {"examples", "tokens", "hash": 16 hex digits}
  static DataFingerprint from_json(const json::Value& value);
  bool operator==(const DataFingerprint&) const = default;
  std::string describe() const;  // "120 examples, 3456 tokens, hash 0123abcd..."
};
DataFingerprint fingerprint(const std::vector<Example>& examples);

// A changed option that keeps a resumed run from computing what the uninterrupted run would.
struct OptionChange {
  std::string key, saved, now;
};
// The options that break a resumed run's exactness, and whether they changed between the run's
// saved options and `now`. They are:
//   batch-size, micro-batch-size (as the rows per forward; the step's sum is accumulated in a
//   different order), seq-len, pack, seed (the rows and their order), lr, min-lr-ratio,
//   warmup-steps, schedule, weight-decay, beta1, beta2, eps, clip (the update), precision (as
//   the dtype it resolves to) and device (its kind, cpu or cuda: different kernels round
//   differently), and steps unless the schedule is constant: a linear or cosine decay is
//   stretched over `steps`, so a longer run would have had a different learning rate at every
//   step after the warmup, the finished ones included.
// Free to change: eval-every, save-every, keep-checkpoints, gradient-checkpointing (it recomputes
// the same values), the device index (cuda:0 -> cuda:1), the output folder, the progress line.
std::vector<OptionChange> exactness_breaking_changes(const TrainOptions& saved, const TrainOptions& now);

// Checks, before anything is allocated, that a step of `options` fits the model and the
// machine: seq-len within the model's max_position_embeddings, and the step's largest
// buffers (the packing mask, the logits and their gradient, the CPU attention's score
// matrices) within the physical memory. An Error says which and by how much.
void check_model_fits(const llama::LlamaConfig& config, const TrainOptions& options);

// How run() starts.
struct RunStart {
  ExistingRun existing = ExistingRun::refuse;  // an output folder that is not empty: see run_folder.h
  // Resume even when options that break exactness, or the training data, differ from the
  // saved run's (stderr says which); without it that is an error listing them.
  bool allow_option_changes = false;
};

class Trainer {
 public:
  Trainer(std::shared_ptr<llama::LlamaForCausalLM> model, TrainOptions options, std::vector<Example> train,
          std::vector<Example> validation = {});

  // Trains up to options.steps. With an output folder: takes its lock, treats what is there as
  // `start` says, removes what killed runs left, and resumes (ExistingRun::resume) from the
  // newest complete checkpoint that loads, falling back to older ones (saying so). A step
  // whose micro-batches hold no target token is an error.
  void run(RunStart start = {});
  // Mean token loss over the validation examples (no gradients); an error when they hold no
  // target token.
  double validation_loss() const;
  int64_t step() const { return step_; }
  bool has_validation() const { return validation_ != nullptr; }
  const DataFingerprint& data_fingerprint() const { return fingerprint_; }

  // Called with every metrics line as it is written (the demo and tests read them here).
  std::function<void(const json::Value& line)> on_metrics;
  // Tests: called while a checkpoint is being written; may throw to simulate a failure.
  std::function<void(const std::string& stage)> checkpoint_fault;
  // Called with the folder the final model is written to, before it replaces <output>/model:
  // files put there (the tokenizer) arrive together with the weights.
  std::function<void(const std::string& folder)> add_model_files;

 private:
  json::Value trainer_state() const;
  void save_checkpoint(MetricsLog* log);
  void resume(bool allow_option_changes);
  void train(MetricsLog* log);

  std::shared_ptr<llama::LlamaForCausalLM> model_;
  TrainOptions options_;
  DataFingerprint fingerprint_;
  std::unique_ptr<DataLoader> loader_;
  std::unique_ptr<DataLoader> validation_;
  AdamW optimizer_;
  Schedule schedule_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
};

}  // namespace lamina::train
