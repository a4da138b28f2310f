// What a training run learns from: its data and the loss of a step (train/trainer.h runs the
// loop around it: the optimizer, clipping, the schedule, metrics, checkpoints and resuming).
//
// The causal-LM objective (pretraining and SFT: token cross-entropy over packed examples) is
// built into the Trainer; train/preference_trainer.h is the objective of the offline preference
// losses (DPO and the rest, over chosen/rejected pairs or labelled completions), and
// train/reward_trainer.h trains a reward model (a Llama with a score head) on pairs. The model is
// a llama::LlamaWithHead: a causal LM or a reward model.
#pragma once

#include <cstdint>
#include <string>

#include "models/llama/model.h"
#include "tensor/io/json.h"

namespace lamina::dist {
class DataParallel;
}

namespace lamina::train {

struct TrainOptions;

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

// One optimizer step's measurements.
struct StepResult {
  double loss = 0;      // the step's loss: the progress line's and the metrics' "loss"
  int64_t tokens = 0;   // tokens the step's forward passes processed on every rank together (for tokens/s)
  // Further metrics for the step's line, an object written after "grad_norm" in its order
  // ("target_tokens"; "rewards/chosen", "rewards/accuracies", ...).
  json::Value metrics = json::Object{};
};

// The model as a causal LM, for objectives that need its logits; a clear error when it is a
// model with another head (a reward model given to a language-model objective).
inline llama::LlamaForCausalLM& causal_lm(llama::LlamaWithHead& model, const char* objective) {
  auto* lm = dynamic_cast<llama::LlamaForCausalLM*>(&model);
  LAMINA_CHECK(lm != nullptr, objective, ": trains a causal language model (LlamaForCausalLM), not a model with "
               "another head");
  return *lm;
}

class Objective {
 public:
  virtual ~Objective() = default;

  // Called once, after the Trainer has put the model on its device and dtype and added its
  // adapters, before the first step (a reference model is made here, for example).
  virtual void prepare(llama::LlamaWithHead& /*model*/, const TrainOptions& /*options*/) {}
  // Draws step `step`'s data (1-based), and runs forward and backward over it so that the
  // trainable parameters' gradients add up to the gradient of the step's loss.
  virtual StepResult step(llama::LlamaWithHead& model, int64_t step) = 0;

  virtual bool has_validation() const { return false; }
  // Metrics over the validation data, keyed with a "val_" prefix (at least "val_loss"); called
  // in eval mode, without gradients.
  virtual json::Value validate(llama::LlamaWithHead& /*model*/) { return json::Object{}; }

  // Where the data stands (saved with each checkpoint) and what it is (compared on resume).
  virtual json::Value cursor() const = 0;
  virtual void restore(const json::Value& cursor) = 0;
  virtual DataFingerprint fingerprint() const = 0;
  // What else a resumed run must share with the run it continues (a loss and its
  // hyperparameters): compared as text on resume. Null when there is nothing.
  virtual json::Value settings() const { return json::Value(); }
  // State carried between steps beyond the data cursor (a loss's running baseline), saved with
  // each checkpoint and given back on resume. Null when there is none.
  virtual json::Value state() const { return json::Value(); }
  virtual void restore_state(const json::Value& /*state*/) {}

  // Data parallelism (train/distributed/data_parallel.h), set by the Trainer before the first
  // step of a run with several ranks. An objective that supports it draws the whole step's data
  // on every rank (the cursor stays the same everywhere), computes its rank's share, divides by
  // the step's total over all ranks (target tokens, examples), calls
  // data_parallel->expect_final_backward() before its last backward of the step and
  // data_parallel->finish() right after it (before any other collective: every rank must issue
  // the same collectives in the same order), and returns the step's loss and metrics over all
  // ranks; validate() likewise. Null: one rank.
  // An empty answer from data_parallel_support() means supported; otherwise it says why not.
  virtual std::string data_parallel_support() const { return "this objective does not split its steps across ranks yet"; }
  void set_data_parallel(dist::DataParallel* data_parallel) { data_parallel_ = data_parallel; }

 protected:
  dist::DataParallel* data_parallel_ = nullptr;
};

}  // namespace lamina::train
