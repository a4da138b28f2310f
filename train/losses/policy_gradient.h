// The RL policy-gradient loss functions of preference-losses.md §7 (policy_gradient.cpp); their
// registry rows, one function serving several settings, are in policy_gradient_rows.cpp.
#pragma once

#include "train/losses/loss.h"

namespace lamina::train {

LossResult ppo_clip_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state);
LossResult grpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state);
LossResult rloo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state);
LossResult reinforce_pp_loss(const LossInputs& inputs, const Hyperparameters& params, LossState* state);

}  // namespace lamina::train
