// Options for the tiny training runs of the checkpoint and run-folder tests: a few constant-lr
// f32 steps of batch 2 x 16 tokens, checkpoints kept (10) so that a test can inspect them.
#pragma once

#include <cstdint>
#include <filesystem>

#include "train/trainer.h"

namespace lamina::testing {

inline train::TrainOptions tiny_run_options(const std::filesystem::path& dir, int64_t steps, int64_t save_every) {
  train::TrainOptions options;
  options.precision = "f32";  // the same numbers on every CPU (auto is bf16 where bf16 is fast)
  options.progress = false;
  options.steps = steps;
  options.batch_size = 2;
  options.seq_len = 16;
  options.lr = 3e-3;
  options.schedule = "constant";
  options.precision = "f32";
  options.save_every = save_every;
  options.keep_checkpoints = 10;
  options.output_dir = dir.string();
  return options;
}

}  // namespace lamina::testing
