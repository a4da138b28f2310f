#include "train/optimizer.h"

#include <cmath>

#include "autograd/autograd.h"
#include "ops/ops.h"
#include "tensor/profiler.h"

namespace lamina::train {
namespace {

DType state_dtype(DType parameter) { return parameter == DType::f64 ? DType::f64 : DType::f32; }

bool low_precision(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

}  // namespace

bool decays_by_default(const std::string&, const Tensor& parameter) { return parameter.dim() >= 2; }

AdamW::AdamW(std::vector<nn::NamedTensor> parameters, AdamWOptions options) : options_(std::move(options)) {
  LAMINA_CHECK(options_.lr >= 0 && options_.eps > 0 && options_.weight_decay >= 0, "AdamW: invalid lr ", options_.lr,
               ", eps ", options_.eps, " or weight_decay ", options_.weight_decay);
  LAMINA_CHECK(options_.beta1 >= 0 && options_.beta1 < 1 && options_.beta2 >= 0 && options_.beta2 < 1,
               "AdamW: betas must be in [0, 1), got ", options_.beta1, " and ", options_.beta2);
  if (!options_.decays) options_.decays = decays_by_default;
  for (auto& [name, parameter] : parameters) {
    LAMINA_CHECK(parameter.is_contiguous(), "AdamW: parameter '", name, "' is not contiguous");
    Slot slot;
    slot.name = name;
    slot.parameter = parameter;
    const DType dtype = state_dtype(parameter.dtype());
    if (low_precision(parameter.dtype())) slot.master = ops::cast(parameter, DType::f32);
    slot.exp_avg = zeros(parameter.shape(), dtype, parameter.device());
    slot.exp_avg_sq = zeros(parameter.shape(), dtype, parameter.device());
    slot.decay = options_.decays(name, parameter);
    slots_.push_back(std::move(slot));
  }
}

void AdamW::step(double lr) {
  autograd::NoGradGuard no_grad;
  const profiler::Scope scope("optimizer:adamw_step");
  ++steps_;
  for (Slot& slot : slots_) {
    const Tensor grad = slot.parameter.grad();
    if (!grad.defined()) continue;
    ops::AdamWStep hyper;
    hyper.lr = lr;
    hyper.beta1 = options_.beta1;
    hyper.beta2 = options_.beta2;
    hyper.eps = options_.eps;
    hyper.weight_decay = slot.decay ? options_.weight_decay : 0.0;
    hyper.step = steps_;
    const Tensor& target = slot.master.defined() ? slot.master : slot.parameter;
    // With a master copy, the weights are the master rounded, written in the same pass.
    const bool round_in_step = slot.master.defined() && slot.parameter.is_contiguous();
    ops::adamw_step_(target, ops::contiguous(grad), slot.exp_avg, slot.exp_avg_sq, hyper,
                     round_in_step ? slot.parameter : Tensor());
    if (slot.master.defined() && !round_in_step) {
      const profiler::Scope copy_scope("optimizer:round_master_to_weights");
      ops::copy_(slot.parameter, slot.master);  // round the master into the weights
    }
  }
}

void AdamW::zero_grad() {
  const profiler::Scope scope("optimizer:zero_grad");  // frees the gradients
  for (Slot& slot : slots_) slot.parameter.set_grad(Tensor());
}

std::vector<nn::NamedTensor> AdamW::state_tensors() const {
  std::vector<nn::NamedTensor> out;
  for (const Slot& slot : slots_) {
    out.emplace_back(slot.name + ".exp_avg", slot.exp_avg);
    out.emplace_back(slot.name + ".exp_avg_sq", slot.exp_avg_sq);
    if (slot.master.defined()) out.emplace_back(slot.name + ".master", slot.master);
  }
  return out;
}

json::Value AdamW::state_json() const {
  json::Value state = json::Object{};
  state.set("optimizer", "adamw");
  state.set("steps", steps_);
  state.set("beta1", options_.beta1);
  state.set("beta2", options_.beta2);
  state.set("eps", options_.eps);
  state.set("weight_decay", options_.weight_decay);
  return state;
}

void AdamW::load_state(const json::Value& state, const std::vector<nn::NamedTensor>& tensors) {
  LAMINA_CHECK(state.at("optimizer").as_string("optimizer state") == "adamw", "AdamW: the saved optimizer is '",
               state.at("optimizer").as_string(), "', not adamw");
  steps_ = state.at("steps").as_int64("optimizer state: steps");
  auto find = [&](const std::string& name) -> const Tensor* {
    for (const auto& [key, tensor] : tensors)
      if (key == name) return &tensor;
    return nullptr;
  };
  autograd::NoGradGuard no_grad;
  for (Slot& slot : slots_) {
    for (auto [suffix, target] : {std::pair<const char*, Tensor*>{".exp_avg", &slot.exp_avg},
                                  {".exp_avg_sq", &slot.exp_avg_sq}, {".master", &slot.master}}) {
      if (!target->defined()) continue;
      const Tensor* saved = find(slot.name + suffix);
      LAMINA_CHECK(saved != nullptr, "AdamW: the checkpoint has no optimizer state '", slot.name, suffix, "'");
      LAMINA_CHECK(saved->shape() == target->shape(), "AdamW: state '", slot.name, suffix, "' has shape ",
                   saved->shape(), ", the parameter needs ", target->shape());
      ops::copy_(*target, ops::to_device(*saved, target->device()));
    }
  }
}

Sgd::Sgd(std::vector<nn::NamedTensor> parameters, double momentum, double weight_decay)
    : parameters_(std::move(parameters)), momentum_(momentum), weight_decay_(weight_decay) {
  LAMINA_CHECK(momentum >= 0 && momentum < 1 && weight_decay >= 0, "Sgd: invalid momentum ", momentum,
               " or weight_decay ", weight_decay);
  for (const auto& [name, parameter] : parameters_)
    velocity_.push_back(momentum > 0 ? zeros(parameter.shape(), state_dtype(parameter.dtype())) : Tensor());
}

void Sgd::step(double lr) {
  autograd::NoGradGuard no_grad;
  const profiler::Scope scope("optimizer:sgd_step");
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const Tensor& parameter = parameters_[i].second;
    Tensor grad = parameter.grad();
    if (!grad.defined()) continue;
    grad = ops::cast(grad, state_dtype(parameter.dtype()));  // a fresh copy: safe to modify
    if (weight_decay_ > 0) ops::add_(grad, ops::cast(parameter, grad.dtype()), weight_decay_);
    if (momentum_ > 0) {
      ops::mul_(velocity_[i], momentum_);
      ops::add_(velocity_[i], grad);
      grad = velocity_[i];
    }
    const Tensor updated = ops::sub(ops::cast(parameter, grad.dtype()), ops::binary(ops::BinaryOp::mul, grad, lr));
    ops::copy_(parameter, updated);
  }
}

void Sgd::zero_grad() {
  for (const auto& [name, parameter] : parameters_) parameter.set_grad(Tensor());
}

double clip_grad_norm(const std::vector<Tensor>& parameters, double max_norm) {
  autograd::NoGradGuard no_grad;
  const profiler::Scope scope("optimizer:clip_grad_norm");
  // Per-parameter sums of squares stay where the gradients are; one value is read at the end
  // (on a GPU: one wait per step, not one per parameter).
  Tensor squares;
  for (const Tensor& parameter : parameters) {
    const Tensor grad = parameter.grad();
    if (!grad.defined()) continue;
    const Tensor g = grad.dtype() == DType::f64 ? grad : ops::cast(grad, DType::f32);
    const Tensor sum = ops::cast(ops::sum(ops::unary(ops::UnaryOp::square, g)), DType::f64);
    squares = squares.defined() ? ops::add(squares, sum) : sum;
  }
  const double norm = squares.defined() ? std::sqrt(squares.item<double>()) : 0.0;
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const double scale = max_norm / (norm + 1e-6);
    for (const Tensor& parameter : parameters)
      if (parameter.grad().defined()) ops::mul_(parameter.grad(), scale);
  }
  return norm;
}

}  // namespace lamina::train
