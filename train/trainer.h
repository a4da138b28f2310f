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
// from a checkpoint logs the same losses as one that never stopped (same device and threads).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "models/llama/model.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/optimizer.h"
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
  uint64_t seed = 0;
  std::string output_dir;  // metrics.jsonl, checkpoints/, model/ (final weights); empty: nothing written
  bool progress = true;    // live progress line on stderr

  void validate() const;
  Device resolved_device() const { return Device::parse(device); }
  DType compute_dtype() const;  // the parameters' dtype during training
  json::Value to_json() const;
  // Reads the knobs from a JSON object keyed like the CLI flags ("lr", "micro-batch-size", ...);
  // unknown keys are an error naming them.
  static TrainOptions from_json(const json::Value& object, TrainOptions defaults);
};

class Trainer {
 public:
  Trainer(std::shared_ptr<llama::LlamaForCausalLM> model, TrainOptions options, std::vector<Example> train,
          std::vector<Example> validation = {});

  // Trains up to options.steps; with `resume`, first continues from the newest checkpoint in
  // output_dir (if there is one).
  void run(bool resume = false);
  // Mean token loss over the validation examples (no gradients).
  double validation_loss() const;
  int64_t step() const { return step_; }
  bool has_validation() const { return validation_ != nullptr; }

  // Called with every metrics line as it is written (the demo and tests read them here).
  std::function<void(const json::Value& line)> on_metrics;
  // Tests: called while a checkpoint is being written; may throw to simulate a failure.
  std::function<void(const std::string& stage)> checkpoint_fault;

 private:
  json::Value trainer_state() const;
  void save_checkpoint();

  std::shared_ptr<llama::LlamaForCausalLM> model_;
  TrainOptions options_;
  std::unique_ptr<DataLoader> loader_;
  std::unique_ptr<DataLoader> validation_;
  AdamW optimizer_;
  Schedule schedule_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
};

}  // namespace lamina::train
