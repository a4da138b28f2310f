// `lamina train grpo|rloo|online-dpo|inpo|rebel|spin`: the online loops (train/online_trainer.h)
// from the command line. tools/train.cpp dispatches these kinds here.
#pragma once

#include <string>

#include "tools/commands.h"

namespace lamina::cli {

// The online kinds `lamina train` accepts: grpo (with --loss: dr_grpo, dapo, simplerl_zoo,
// reinforce_pp, reinforce_pp_baseline), rloo, online-dpo, inpo, rebel (an iteration is
// --iteration-steps steps on a pool sampled at its start; 1 by default: the iterate is the policy
// that sampled the batch), spin (SFT data; its answers against the policy's own responses).
bool is_online_train_kind(const std::string& kind);

// Runs `lamina train <kind> ARGS`; `kind` is one of the above.
int run_train_online(const Arguments& args, const std::string& kind);

}  // namespace lamina::cli
