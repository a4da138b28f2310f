// The stateful pieces of the preference losses, as explicit checkpointable objects.
//
// RunningRewardBaseline: BCO's reward baseline δ (preference-losses.md §5.3, and the TRL <= 0.28
// form of bco_pair, §2.8): the running mean of every reward seen, merged batch by batch with
// the parallel-variance rule of TRL's RunningMoments, starting from (mean, var, count) =
// (0, 1, 1e-24). A batch updates it *before* it is used; evaluation (training = false) reads
// it without updating.
//
// KtoKlEstimate: KTO's KL reference point z (§5.1): max(0, mean of the mismatched-pair
// log-ratios), computed without gradient, averaged across data-parallel ranks before the clamp.
// It remembers the last estimate, so a checkpoint can restore it and an evaluation batch
// without KL completions can reuse it (kto's kl_source=last).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "train/losses/loss.h"

namespace lamina::train {

// Mean, population variance and count of a batch (of one rank, or of all of them).
struct BatchMoments {
  double mean = 0, variance = 0, count = 0;
};
BatchMoments moments_of(const std::vector<double>& values);

// Turns one rank's moments into the global ones (an all-gather in data-parallel training);
// the identity by default.
using MomentsReducer = std::function<BatchMoments(const BatchMoments& local)>;

class RunningRewardBaseline final : public LossState {
 public:
  // Merges a batch of rewards; with training off it changes nothing.
  void update(const std::vector<double>& rewards);
  double mean() const { return mean_; }  // δ
  double variance() const { return variance_; }
  double count() const { return count_; }

  json::Value save() const override;  // {"type": "running_reward_baseline", "mean", "variance", "count"}
  void restore(const json::Value& saved) override;

  MomentsReducer reduce_across_ranks;

 private:
  double mean_ = 0, variance_ = 1, count_ = 1e-24;
};

class KtoKlEstimate final : public LossState {
 public:
  // z = max(0, global mean of the KL-pair log-ratios); remembered when training.
  double estimate(const std::vector<double>& kl_log_ratios);
  bool has_estimate() const { return batches_ > 0; }
  double last() const { return last_; }
  int64_t batches() const { return batches_; }

  json::Value save() const override;  // {"type": "kto_kl_estimate", "last", "batches"}
  void restore(const json::Value& saved) override;

  MomentsReducer reduce_across_ranks;

 private:
  double last_ = 0;
  int64_t batches_ = 0;
};

}  // namespace lamina::train
