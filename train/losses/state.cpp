#include "train/losses/state.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "tensor/error.h"

namespace lamina::train {
namespace {

// A number member of a saved state, checked.
double saved_number(const json::Value& saved, const char* type, const char* key, bool positive) {
  const json::Value* value = saved.find(key);
  LAMINA_CHECK(value != nullptr, type, " state: missing key '", key, "'");
  const double number = value->as_double(std::string(type) + " state: " + key);
  LAMINA_CHECK(std::isfinite(number) && (!positive || number > 0), type, " state: '", key, "' must be ",
               positive ? "a finite number > 0" : "finite", ", got ", number);
  return number;
}

void check_type(const json::Value& saved, const char* type) {
  LAMINA_CHECK(saved.is_object(), type, " state: expected a JSON object, got ", json::type_name(saved.type()));
  const json::Value* found = saved.find("type");
  LAMINA_CHECK(found != nullptr && found->is_string() && found->as_string() == type, type,
               " state: \"type\" must be \"", type, "\"",
               found != nullptr && found->is_string() ? ", got \"" + found->as_string() + "\"" : std::string());
}

}  // namespace

BatchMoments moments_of(const std::vector<double>& values) {
  BatchMoments moments;
  moments.count = double(values.size());
  if (values.empty()) return moments;
  for (double v : values) moments.mean += v / moments.count;
  for (double v : values) moments.variance += (v - moments.mean) * (v - moments.mean) / moments.count;
  return moments;
}

void RunningRewardBaseline::update(const std::vector<double>& rewards) {
  if (!training) return;
  BatchMoments batch = moments_of(rewards);
  if (reduce_across_ranks) batch = reduce_across_ranks(batch);
  if (batch.count <= 0) return;
  // Chan et al.'s merge of two (mean, variance, count) summaries, as TRL's RunningMoments.
  const double delta = batch.mean - mean_;
  const double total = count_ + batch.count;
  const double merged_sum = variance_ * count_ + delta * delta * count_ * batch.count / total +
                            batch.variance * batch.count;
  mean_ += delta * batch.count / total;
  variance_ = merged_sum / total;
  count_ = total;
}

json::Value RunningRewardBaseline::save() const {
  return json::Object{{"type", "running_reward_baseline"}, {"mean", mean_}, {"variance", variance_}, {"count", count_}};
}

void RunningRewardBaseline::restore(const json::Value& saved) {
  const char* type = "running_reward_baseline";
  check_type(saved, type);
  const double mean = saved_number(saved, type, "mean", false);
  const double variance = saved_number(saved, type, "variance", false);
  const double count = saved_number(saved, type, "count", true);
  LAMINA_CHECK(variance >= 0, type, " state: 'variance' must be >= 0, got ", variance);
  mean_ = mean;
  variance_ = variance;
  count_ = count;
}

double KtoKlEstimate::estimate(const std::vector<double>& kl_log_ratios) {
  BatchMoments batch = moments_of(kl_log_ratios);
  if (reduce_across_ranks) batch = reduce_across_ranks(batch);
  const double z = std::max(0.0, batch.mean);
  if (training) {
    last_ = z;
    ++batches_;
  }
  return z;
}

json::Value KtoKlEstimate::save() const {
  return json::Object{{"type", "kto_kl_estimate"}, {"last", last_}, {"batches", batches_}};
}

void KtoKlEstimate::restore(const json::Value& saved) {
  const char* type = "kto_kl_estimate";
  check_type(saved, type);
  const double last = saved_number(saved, type, "last", false);
  const json::Value* batches = saved.find("batches");
  LAMINA_CHECK(batches != nullptr, type, " state: missing key 'batches'");
  const int64_t count = batches->as_int64(std::string(type) + " state: batches");
  LAMINA_CHECK(last >= 0 && count >= 0, type, " state: 'last' and 'batches' must be >= 0");
  last_ = last;
  batches_ = count;
}

}  // namespace lamina::train
