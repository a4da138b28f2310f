// The reference policy pi_ref of the preference objectives (train/preference_trainer.h,
// train/online_trainer.h): how its logits are computed.
//
//   copy          a frozen copy of the starting weights (full fine-tuning; twice the weights)
//   adapters-off  the policy with its LoRA adapters disabled (no second copy: the base is frozen)
//   precomputed   the starting model's log-probs, computed once by the objective with the policy
//                 before its first step (here: as adapters-off, the policy as it stands)
//   none          no reference
#pragma once

#include <memory>
#include <string>

#include "models/llama/model.h"

namespace lamina::train {

enum class ReferenceKind { automatic, copy, adapters_off, precomputed, none };
const char* reference_kind_name(ReferenceKind kind);  // "auto", "copy", "adapters-off", "precomputed", "none"
ReferenceKind reference_kind_from_name(const std::string& name);  // throws listing the names

class ReferenceModel {
 public:
  explicit ReferenceModel(ReferenceKind kind = ReferenceKind::none) : kind_(kind) {}
  ReferenceKind kind() const { return kind_; }

  // Called once the policy is placed (device, dtype, adapters): a copy takes the policy's
  // weights now (the optimizer then changes the policy's in place, never the copy's).
  void prepare(llama::LlamaForCausalLM& policy);
  // Logits [B, T, V] of ids [B, T] (host or device) under the reference, without gradient:
  // the copy's, or the policy's with its adapters off (put back on afterwards, whatever happens).
  Tensor logits(const Tensor& ids) const;

 private:
  ReferenceKind kind_;
  llama::LlamaForCausalLM* policy_ = nullptr;
  std::shared_ptr<llama::LlamaForCausalLM> copy_;
};

}  // namespace lamina::train
