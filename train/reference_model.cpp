#include "train/reference_model.h"

#include "autograd/autograd.h"
#include "nn/lora.h"

namespace lamina::train {

const char* reference_kind_name(ReferenceKind kind) {
  switch (kind) {
    case ReferenceKind::automatic: return "auto";
    case ReferenceKind::copy: return "copy";
    case ReferenceKind::adapters_off: return "adapters-off";
    case ReferenceKind::precomputed: return "precomputed";
    case ReferenceKind::none: return "none";
  }
  return "?";
}

ReferenceKind reference_kind_from_name(const std::string& name) {
  for (ReferenceKind kind : {ReferenceKind::automatic, ReferenceKind::copy, ReferenceKind::adapters_off,
                             ReferenceKind::precomputed, ReferenceKind::none})
    if (name == reference_kind_name(kind)) return kind;
  throw Error(str_cat("unknown reference '", name, "' (auto, copy, adapters-off, precomputed or none)"));
}

void ReferenceModel::prepare(llama::LlamaForCausalLM& policy) {
  policy_ = &policy;
  if (kind_ != ReferenceKind::copy) return;
  autograd::NoGradGuard no_grad;
  copy_ = std::make_shared<llama::LlamaForCausalLM>(policy.config(), policy.dtype(), nn::ParameterInit::uninitialized);
  const auto source = policy.named_parameters();
  const auto target = copy_->named_parameters();
  LAMINA_CHECK(source.size() == target.size(), "reference: the policy's parameters (", source.size(),
               ") do not match a fresh model's (", target.size(), "): a copy needs a plain model (use adapters-off "
               "with LoRA)");
  for (size_t i = 0; i < source.size(); ++i) target[i].second.set_data(ops::clone(source[i].second));
  copy_->to(policy.device(), policy.dtype());
  for (const auto& [name, parameter] : copy_->named_parameters()) parameter.set_requires_grad(false);
  copy_->eval();
}

Tensor ReferenceModel::logits(const Tensor& ids) const {
  autograd::NoGradGuard no_grad;
  const auto on = [](const Tensor& t, Device device) { return t.device() == device ? t : ops::to_device(t, device); };
  if (kind_ == ReferenceKind::copy) {
    LAMINA_CHECK(copy_ != nullptr, "reference: the copy is made by prepare(), which was not called");
    return copy_->forward(on(ids, copy_->device()));
  }
  LAMINA_CHECK(policy_ != nullptr, "reference: prepare() was not called with the policy");
  const std::shared_ptr<nn::LoraSelection> selection = nn::lora_selection(*policy_);
  if (selection->adapters.empty()) return policy_->forward(on(ids, policy_->device()));
  struct Restore {
    llama::LlamaForCausalLM& model;
    std::string active;
    ~Restore() { nn::set_active_adapter(model, active); }
  } restore{*policy_, selection->active};
  nn::disable_adapters(*policy_);
  return policy_->forward(on(ids, policy_->device()));
}

}  // namespace lamina::train
