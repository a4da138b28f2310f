#include "train/reward_trainer.h"

#include <numeric>

#include "autograd/autograd.h"
#include "models/llama/reward_model.h"
#include "train/preference_trainer.h"
#include "train/sampler.h"
#include "train/trainer.h"

namespace lamina::train {
namespace {

llama::LlamaForSequenceClassification& reward_model(llama::LlamaWithHead& model) {
  auto* reward = dynamic_cast<llama::LlamaForSequenceClassification*>(&model);
  LAMINA_CHECK(reward != nullptr, "train reward: trains a reward model (LlamaForSequenceClassification), not a model "
               "with another head");
  LAMINA_CHECK(reward->num_labels() == 1, "train reward: the Bradley-Terry loss needs one reward per row; the model "
               "has ", reward->num_labels(), " labels");
  return *reward;
}

}  // namespace

json::Value RewardOptions::to_json() const {
  json::Value out = json::Object{};
  out.set("loss", "bradley_terry");
  out.set("center_coefficient", center_coefficient);
  out.set("max_length", truncation.max_length);
  out.set("truncation_mode", truncation.mode == TruncationMode::keep_start ? "keep_start" : "keep_end");
  out.set("max_prompt_length", truncation.max_prompt_length);
  out.set("max_completion_length", truncation.max_completion_length);
  return out;
}

struct RewardObjective::Impl {
  RewardOptions options;
  std::vector<PreferencePair> pairs, validation_pairs;
  int64_t batch_size = 0, micro_batch_size = 0;
  DataFingerprint data_fingerprint;
  std::unique_ptr<EpochSampler> sampler;

  // The loss and metrics of `indices` in micro-batches, each weighted by its share; with
  // `backward`, each micro-batch's weighted loss is back-propagated as it is computed.
  StepResult run(llama::LlamaForSequenceClassification& model, const std::vector<int64_t>& indices,
                 const std::vector<PreferencePair>& data, bool backward) {
    StepResult result;
    const double total = double(indices.size());
    double accuracy = 0, margin = 0, mean = 0;
    double low = 0, high = 0;
    bool first = true;
    for (size_t start = 0; start < indices.size(); start += size_t(micro_batch_size)) {
      std::vector<const PreferencePair*> micro;
      for (size_t i = start; i < std::min(indices.size(), start + size_t(micro_batch_size)); ++i)
        micro.push_back(&data[size_t(indices[i])]);
      const double weight = double(micro.size()) / total;
      const PreferenceBatch batch = make_preference_batch(micro, options.truncation, options.pad_id);
      for (int64_t length : batch.lengths) result.tokens += length;
      const Device device = model.device();
      const Tensor lengths = Tensor::from_vector(batch.lengths, {int64_t(batch.lengths.size())});
      const Tensor rewards = model.forward(ops::to_device(batch.input_ids, device), ops::to_device(lengths, device));
      const int64_t b = batch.pairs;
      const llama::BradleyTerryLoss loss = llama::bradley_terry_loss(rewards.narrow(0, 0, b), rewards.narrow(0, b, b),
                                                                     Tensor(), options.center_coefficient);
      result.loss += weight * loss.loss.item<double>();
      if (backward) mul(loss.loss, weight).backward();
      accuracy += weight * loss.accuracy;
      margin += weight * loss.margin;
      mean += weight * loss.mean_reward;
      low = first ? loss.min_reward : std::min(low, loss.min_reward);
      high = first ? loss.max_reward : std::max(high, loss.max_reward);
      first = false;
    }
    result.metrics.set("accuracy", accuracy);
    result.metrics.set("margin", margin);
    result.metrics.set("min_reward", low);
    result.metrics.set("mean_reward", mean);
    result.metrics.set("max_reward", high);
    return result;
  }
};

RewardObjective::RewardObjective(RewardOptions options, const TrainOptions& train_options, PreferenceData train,
                                 PreferenceData validation)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  impl.options = std::move(options);
  for (PreferenceData* data : {&train, &validation})
    LAMINA_CHECK(data->unpaired.empty() && data->prompts.empty(), "train reward: the Bradley-Terry loss compares a "
                 "chosen and a rejected completion; the data holds ", preference_layout_name(data->layout), " lines");
  impl.pairs = std::move(train.pairs);
  impl.validation_pairs = std::move(validation.pairs);
  LAMINA_CHECK(!impl.pairs.empty(), "train reward: no training pairs");
  impl.batch_size = train_options.batch_size;
  impl.micro_batch_size = train_options.micro_batch_size == 0 ? train_options.batch_size : train_options.micro_batch_size;
  impl.data_fingerprint = preference_fingerprint(impl.pairs);
  impl.sampler = std::make_unique<EpochSampler>(int64_t(impl.pairs.size()), train_options.seed);
}

RewardObjective::~RewardObjective() = default;

StepResult RewardObjective::step(llama::LlamaWithHead& model, int64_t step) {
  (void)step;
  Impl& impl = *impl_;
  return impl.run(reward_model(model), impl.sampler->next(impl.batch_size), impl.pairs, true);
}

bool RewardObjective::has_validation() const { return !impl_->validation_pairs.empty(); }

json::Value RewardObjective::validate(llama::LlamaWithHead& model) {
  Impl& impl = *impl_;
  std::vector<int64_t> indices(impl.validation_pairs.size());
  std::iota(indices.begin(), indices.end(), 0);
  const StepResult result = impl.run(reward_model(model), indices, impl.validation_pairs, false);
  json::Value out = json::Object{};
  out.set("val_loss", result.loss);
  for (const auto& [name, value] : result.metrics.as_object()) out.set("val_" + name, value);
  return out;
}

json::Value RewardObjective::cursor() const { return impl_->sampler->cursor(); }
void RewardObjective::restore(const json::Value& cursor) { impl_->sampler->restore(cursor); }
DataFingerprint RewardObjective::fingerprint() const { return impl_->data_fingerprint; }
json::Value RewardObjective::settings() const { return impl_->options.to_json(); }

}  // namespace lamina::train
