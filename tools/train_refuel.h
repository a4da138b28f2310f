// `lamina train refuel`: REFUEL's multi-turn online loop (train/refuel_trainer.h) from the command
// line. tools/train.cpp dispatches the kind here.
#pragma once

#include "tools/commands.h"

namespace lamina::cli {

// Runs `lamina train refuel ARGS`.
int run_train_refuel(const Arguments& args);

}  // namespace lamina::cli
