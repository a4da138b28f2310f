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
#include <optional>
#include <string>

#include "autograd/functions.h"
#include "models/llama/model.h"
#include "nn/lora.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/objective.h"
#include "train/optimizer.h"
#include "train/run_folder.h"
#include "train/schedule.h"

namespace lamina::dist {
class Communicator;
class DataParallel;
class ZeroOptimizer;
}  // namespace lamina::dist

namespace lamina::train {

// The causal-LM loss of pretraining and SFT: the summed token cross-entropies of
// model(ids, forward) against targets (ignore_index -100) and their count. On the CPU with a plain
// or tied head (no adapters, 4-bit base or bias) the head's GEMM and the loss run fused over
// vocabulary chunks (lamina::linear_cross_entropy_sum), so the [tokens, vocab] logits and their
// gradient never exist; otherwise logits, then cross_entropy_sum. `lamina bench train` measures
// the same.
CrossEntropySum causal_lm_loss(const llama::LlamaForCausalLM& model, const Tensor& ids, const Tensor& targets,
                               const llama::ForwardOptions& forward = {});

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
  // LoRA (train/lora_spec.h: "r=16,alpha=32,dropout=0.05,targets=all-linear"): adapters on the
  // targeted projections train and the base stays frozen; checkpoints and the final model/
  // hold the adapter only, as a PEFT folder. Empty: every weight trains.
  std::string lora;
  // Which parameters train, by name (e.g. "model.layers.2.*,model.layers.5.*" for blocks added by
  // `lamina expand`, or "embed_tokens,lm_head"): comma-separated patterns, each a glob ('*' any
  // run of characters, dots included) when it has a '*' and otherwise a substring of the name.
  // Only parameters some pattern matches train; the rest are frozen. A pattern that matches no
  // parameter is an error naming it. Full fine-tuning only: with `lora` the adapters are what
  // trains, so the two are refused together. Empty: every weight trains.
  std::string trainable;
  // QLoRA: the base's linear weights are quantized to NF4 (blocks of 64, double-quantized
  // scales) before the adapters are added, and every product with them is the fused 4-bit one.
  // Needs `lora`.
  bool qlora = false;
  // A MoA plan file (models/sparse/moa_plan.h) resolved at seq_len: every head trains under its
  // own sink + window, as it will run. Empty: dense attention.
  std::string attention_plan;
  // Data parallelism over several ranks (Trainer::set_communicator): 0 = every rank keeps the
  // whole optimizer state; 1 = ZeRO-1, AdamW's state sharded across the ranks; 2 = ZeRO-2, the
  // gradients' sums sharded too (train/distributed/data_parallel.h). No effect on one rank.
  int64_t zero_stage = 0;
  std::string device = "cpu";      // cpu, cuda or cuda:N: the model is moved there before training
  std::string precision = "auto";  // f32, or bf16 (bf16 weights and activations, f32 master weights
                                   // and optimizer state); auto = bf16 on CUDA and on CPUs whose bf16
                                   // products are fast (AMX, or AVX-512 BF16 beating f32 FMA), else f32
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
  // Reads the knobs from a JSON object keyed like the CLI flags ("lr", "micro-batch-size", ...):
  // every key of json_keys(), and "pack" and "output-dir" as to_json writes them. The data,
  // model and run-mode flags (data, config, resume, ...) are flags only; they and unknown keys
  // are errors naming them.
  static TrainOptions from_json(const json::Value& object, TrainOptions defaults);
  // The keys of an --options file, spelled as their flags: steps, batch-size, ..., no-pack,
  // output, quiet.
  static const std::vector<std::string>& json_keys();
};

// The fingerprint (train/objective.h) of a list of examples.
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
//   the dtype it resolves to), lora, qlora and trainable (what trains, on what base), zero-stage (where the
//   optimizer state lives, and the order of the gradient sums), and device (its kind, cpu or cuda: different
//   kernels round differently), and steps unless the schedule is constant: a linear or cosine decay is
//   stretched over `steps`, so a longer run would have had a different learning rate at every
//   step after the warmup, the finished ones included.
// Free to change: eval-every, save-every, keep-checkpoints, gradient-checkpointing (it recomputes
// the same values), the device index (cuda:0 -> cuda:1), the output folder, the progress line.
std::vector<OptionChange> exactness_breaking_changes(const TrainOptions& saved, const TrainOptions& now);

// The host memory that training a model of `config` with `options` holds at once, estimated
// from the config alone (bytes). On the CPU that is the whole training state: the weights and
// their gradients in the training dtype, AdamW's two f32 moments and, for bf16 training, f32
// master weights; plus a step's largest buffers (the f32 logits and their gradient, the fused
// attention's per-thread tiles). On CUDA the state lives in device memory, which lamina cannot
// query yet: there the host holds the f32 weights while the model is built or loaded, and the
// packing mask the materialising attention takes from the document ids. With `trainable`, the
// gradients, moments and master weights are counted for the matching parameters alone.
struct TrainingMemory {
  int64_t parameters = 0;
  DType dtype = DType::f32;  // the weights' dtype
  double weights = 0, gradients = 0, moments = 0, master = 0;
  double mask = 0, logits = 0, attention = 0;
  double state() const { return weights + gradients + moments + master; }
  double buffers() const { return mask + logits + attention; }
  double total() const { return state() + buffers(); }
  // "weights 1.00 GiB (268.4M parameters in f32), gradients 1.00 GiB, AdamW moments 2.00 GiB,
  // a step's largest buffers 12.00 MiB (packing mask ..., logits ..., attention scores ...)"
  std::string describe() const;
};
TrainingMemory estimate_training_memory(const llama::LlamaConfig& config, const TrainOptions& options);

// Checks, before anything is allocated, that a step of `options` fits the model and the
// machine: seq-len within the model's max_position_embeddings, the step's largest buffers
// within the machine's memory, and the whole training state (estimate_training_memory) within
// the memory available now, less `already_allocated` bytes of it that the caller holds already
// (a model built before the check). An Error says which, with the estimate's parts.
void check_model_fits(const llama::LlamaConfig& config, const TrainOptions& options, double already_allocated = 0);

// Where the model of a checkpoint (`saved`, its config.json) and the model being trained differ
// in what they compute. A different architecture (vocab_size, hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, tie_word_embeddings)
// is an error naming the field: the checkpoint's weights are not this model's, and no flag
// makes them so. Changes that keep the weights' shapes but change the numbers (rms_norm_eps,
// rope_theta, rope_scaling) are returned, keyed "config <field>", to be refused or allowed like
// option changes. Fields that change nothing a training step computes (max_position_embeddings,
// token ids, torch_dtype, initializer_range) are not compared.
std::vector<OptionChange> model_config_changes(const llama::LlamaConfig& saved, const llama::LlamaConfig& now,
                                               const std::string& checkpoint);

// How run() starts.
struct RunStart {
  ExistingRun existing = ExistingRun::refuse;  // an output folder that is not empty: see run_folder.h
  // Resume even when options that break exactness, the model's config or the training data
  // differ from the saved run's (stderr says which); without it that is an error listing them.
  bool allow_option_changes = false;
  // What the run reads (flag and path: {"--model", "out/model"}): refused when it lies inside
  // what the run would remove or replace in its output folder (check_inputs_outside_run).
  std::vector<RunInput> inputs = {};
};

// Freezes every parameter of `model` that no pattern of `patterns` (TrainOptions::trainable)
// matches and returns the names of those that train; an empty pattern or one that matches no
// parameter is an error naming it.
std::vector<std::string> apply_trainable_patterns(nn::Module& model, const std::string& patterns);

class Trainer {
 public:
  // The causal-LM objective: mean token cross-entropy over (packed) examples.
  Trainer(std::shared_ptr<llama::LlamaWithHead> model, TrainOptions options, std::vector<Example> train,
          std::vector<Example> validation = {});
  // Any objective (train/objective.h), e.g. a preference loss over pairs.
  Trainer(std::shared_ptr<llama::LlamaWithHead> model, TrainOptions options, std::unique_ptr<Objective> objective);
  ~Trainer();

  // Data parallelism over the ranks of `communicator` (train/distributed/data_parallel.h): each
  // rank trains on its share of every step (batch_size rows per rank, so the step has
  // world_size x batch_size rows), the gradients are summed across ranks in buckets while
  // backward runs, and every rank applies the same update. Rank 0 alone writes the output folder
  // (metrics, checkpoints, the final model); the other ranks resume from the checkpoint rank 0
  // chooses. Called before run(); an objective that cannot split its steps is an error saying
  // why. A world of one rank changes nothing.
  void set_communicator(std::shared_ptr<dist::Communicator> communicator);
  // Empty when the objective can split its steps across ranks; else why not.
  std::string data_parallel_support() const { return objective_->data_parallel_support(); }
  int rank() const;
  int world_size() const;

  // Trains up to options.steps. With an output folder: takes its lock, treats what is there as
  // `start` says, removes what killed runs left, and resumes (ExistingRun::resume) from the
  // newest complete checkpoint that loads, falling back to older ones (saying so). A step
  // whose micro-batches hold no target token is an error, and so is a loss, gradient norm or
  // validation loss that is not finite (NaN or infinite), naming the step.
  //
  // Pruning on resume: the checkpoints beyond the saved run's --keep-checkpoints (or this
  // run's, when larger) are removed at the start, since the run that wrote them was stopped
  // before pruning them; a smaller --keep-checkpoints than the saved run's applies from this
  // run's next checkpoint on, never to what is there before it has written one.
  void run(RunStart start = {});
  // The objective's validation metrics ("val_loss", ...), in eval mode, without gradients; the
  // causal-LM objective's is the mean token loss, an error when the data holds no target token.
  json::Value validate();
  double validation_loss() { return validate().at("val_loss").as_double(); }
  int64_t step() const { return step_; }
  bool has_validation() const { return objective_->has_validation(); }
  const DataFingerprint& data_fingerprint() const { return fingerprint_; }
  llama::LlamaWithHead& model() const { return *model_; }

  // Called with every metrics line as it is written (the demo and tests read them here).
  std::function<void(const json::Value& line)> on_metrics;
  // Tests: called while a checkpoint is being written; may throw to simulate a failure.
  std::function<void(const std::string& stage)> checkpoint_fault;
  // Called with the folder the final model is written to, before it replaces <output>/model:
  // files put there (the tokenizer) arrive together with the weights.
  std::function<void(const std::string& folder)> add_model_files;
  // A LoRA run: the base model's path, written as base_model_name_or_path in adapter_config.json.
  std::string base_model_path;

 private:
  json::Value trainer_state() const;
  void save_checkpoint(MetricsLog* log);
  // Returns the checkpoint it resumed from ("" when none).
  std::string resume(bool allow_option_changes);
  void restore_trainer_state(const json::Value& state);
  CheckpointContents load_checkpoint_files(const std::string& checkpoint);
  void run_follower();
  void prune_stopped_run();
  void train(MetricsLog* log);

  std::shared_ptr<llama::LlamaWithHead> model_;
  TrainOptions options_;
  std::optional<nn::LoraConfig> lora_;  // a LoRA run's adapter settings (options_.lora)
  std::unique_ptr<Objective> objective_;
  DataFingerprint fingerprint_;
  std::optional<AdamW> optimizer_;  // made on first use (optimizer()): a ZeRO run never makes the whole one
  Schedule schedule_;
  int64_t step_ = 0;
  int64_t tokens_seen_ = 0;
  std::shared_ptr<dist::Communicator> communicator_;  // null: one rank
  std::unique_ptr<dist::DataParallel> data_parallel_;
  std::unique_ptr<dist::ZeroOptimizer> zero_;  // ZeRO-1/2: replaces optimizer_
  AdamW& optimizer();
  void save_zero_shard_of_follower();
};

}  // namespace lamina::train
