// The order examples are drawn in: a fresh permutation of all of them each epoch, from the run's
// seed and the epoch number, so that a run resumed at a cursor draws what the uninterrupted run
// would have. (The causal-LM loader, train/data.h, has its own, over packed rows.)
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/io/json.h"

namespace lamina::train {

class EpochSampler {
 public:
  EpochSampler(int64_t count, uint64_t seed);
  // The next `n` example indices, continuing into the next epoch's permutation as needed.
  std::vector<int64_t> next(int64_t n);
  // {"epoch", "position", "started"}: where the next draw starts.
  json::Value cursor() const;
  // Throws naming the key when the cursor does not fit `count` examples.
  void restore(const json::Value& cursor);

 private:
  int64_t count_;
  uint64_t seed_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<int64_t> order_;  // empty before the first draw
};

// The data cursor of an online objective (train/online_trainer.h, train/refuel_trainer.h): the
// sampler's cursor and "step", the steps taken. restore_step_cursor restores the sampler and
// returns the step.
json::Value step_cursor(const EpochSampler& sampler, int64_t steps_done);
int64_t restore_step_cursor(EpochSampler& sampler, const json::Value& cursor);

// The permutation of epoch `epoch`: Fisher-Yates driven by SplitMix64 of the seed and the epoch.
std::vector<int64_t> epoch_permutation(int64_t count, uint64_t seed, int64_t epoch);

}  // namespace lamina::train
