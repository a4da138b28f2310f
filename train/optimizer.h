// Optimizers over a model's named parameters, and global-norm gradient clipping.
//
// AdamW keeps its state in f32 (f64 for f64 parameters). Parameters stored in a lower
// precision (bf16/f16, the mixed-precision case) get an f32 master copy that the update
// works on; the parameter is then the rounded master, so small updates are not lost to
// rounding step after step. Weight decay is decoupled and, by default, not applied to
// norms, biases and other 1-D parameters.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "nn/module.h"
#include "tensor/io/json.h"

namespace lamina::train {

struct AdamWOptions {
  double lr = 1e-3;  // the base rate; step() takes the scheduled one
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // Which parameters decay; default: every parameter with 2 or more dims.
  std::function<bool(const std::string& name, const Tensor& parameter)> decays;
};

// The usual rule: matrices decay, vectors (norm weights, biases) do not.
bool decays_by_default(const std::string& name, const Tensor& parameter);

class AdamW {
 public:
  AdamW(std::vector<nn::NamedTensor> parameters, AdamWOptions options);

  // One update with learning rate `lr` for every parameter that has a gradient.
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }
  const AdamWOptions& options() const { return options_; }

  // Everything needed to continue exactly: step count and, per parameter, its moments (and
  // master copy). Tensors are named "<param>.exp_avg", "<param>.exp_avg_sq", "<param>.master".
  std::vector<nn::NamedTensor> state_tensors() const;
  json::Value state_json() const;  // the step count and the hyperparameters, for checking on load
  void load_state(const json::Value& state, const std::vector<nn::NamedTensor>& tensors);

 private:
  struct Slot {
    std::string name;
    Tensor parameter;
    Tensor master;  // f32 copy for low-precision parameters, else undefined
    Tensor exp_avg, exp_avg_sq;
    bool decay = true;
  };
  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t steps_ = 0;
};

// Plain SGD with optional momentum (kept in f32), for comparisons and tests.
class Sgd {
 public:
  Sgd(std::vector<nn::NamedTensor> parameters, double momentum = 0.0, double weight_decay = 0.0);
  void step(double lr);
  void zero_grad();

 private:
  std::vector<nn::NamedTensor> parameters_;
  std::vector<Tensor> velocity_;
  double momentum_, weight_decay_;
};

// Scales the gradients in place so that their global L2 norm is at most `max_norm` (when
// max_norm > 0); returns the norm before clipping. Parameters without a gradient are skipped.
double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm);

}  // namespace lamina::train
