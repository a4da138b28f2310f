// Reward-model training: the objective (train/objective.h) that trains a Llama with a score head
// (models/llama/reward_model.h, Hugging Face's LlamaForSequenceClassification) on preference
// pairs with the Bradley–Terry loss, as TRL's RewardTrainer does.
//
// A step takes batch_size pairs, micro_batch_size at a time; a micro-batch scores its chosen
// rows (prompt + chosen) and rejected rows (prompt + rejected) in one forward pass, each row
// read at its last real token, and the loss is -log sigmoid(r_chosen - r_rejected - margin)
// (margin: the line's "margin" field is not read yet: 0) plus TRL's optional centring term
// center_coefficient * mean((r_chosen + r_rejected)^2). Micro-batches are weighted by their
// share of the step's pairs. Metrics with TRL's names: accuracy (ties count as wrong), margin,
// and min/mean/max reward; "val_" + the same on --validation data.
#pragma once

#include <memory>

#include "train/objective.h"
#include "train/preference_data.h"

namespace lamina::train {

struct RewardOptions {
  PreferenceTruncation truncation;
  double center_coefficient = 0;  // TRL's center_rewards_coefficient (off)
  int32_t pad_id = 0;             // padding is never read: rows are scored at their lengths

  json::Value to_json() const;    // what a resumed run must share
};

class RewardObjective : public Objective {
 public:
  // `train` and `validation` hold pairs (paired or implicit-prompt lines).
  RewardObjective(RewardOptions options, const TrainOptions& train_options, PreferenceData train,
                  PreferenceData validation = {});
  ~RewardObjective() override;

  StepResult step(llama::LlamaWithHead& model, int64_t step) override;
  bool has_validation() const override;
  json::Value validate(llama::LlamaWithHead& model) override;
  json::Value cursor() const override;
  void restore(const json::Value& cursor) override;
  DataFingerprint fingerprint() const override;
  json::Value settings() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lamina::train
