#include "train/sampler.h"

#include <numeric>
#include <utility>

#include "tensor/error.h"

namespace lamina::train {
namespace {

// SplitMix64's finaliser: every input bit affects every output bit.
uint64_t mix(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t count, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  uint64_t state = mix(seed ^ mix(uint64_t(epoch) + 1));
  for (int64_t i = count - 1; i > 0; --i) {
    state = mix(state);
    std::swap(order[size_t(i)], order[size_t(state % uint64_t(i + 1))]);
  }
  return order;
}

EpochSampler::EpochSampler(int64_t count, uint64_t seed) : count_(count), seed_(seed) {
  LAMINA_CHECK(count > 0, "EpochSampler: no examples to draw from");
}

std::vector<int64_t> EpochSampler::next(int64_t n) {
  std::vector<int64_t> out;
  while (int64_t(out.size()) < n) {
    if (order_.empty() || position_ >= count_) {
      if (!order_.empty()) ++epoch_;
      order_ = epoch_permutation(count_, seed_, epoch_);
      position_ = 0;
    }
    out.push_back(order_[size_t(position_++)]);
  }
  return out;
}

json::Value EpochSampler::cursor() const {
  json::Value out = json::Object{};
  out.set("epoch", epoch_);
  out.set("position", position_);
  out.set("started", !order_.empty());
  return out;
}

void EpochSampler::restore(const json::Value& cursor) {
  epoch_ = cursor.at("epoch").as_int64("trainer.json: data_cursor.epoch");
  position_ = cursor.at("position").as_int64("trainer.json: data_cursor.position");
  LAMINA_CHECK(epoch_ >= 0 && position_ >= 0 && position_ <= count_, "trainer.json: data_cursor (epoch ", epoch_,
               ", position ", position_, ") does not fit the data's ", count_, " examples");
  order_.clear();
  if (cursor.at("started").as_bool("trainer.json: data_cursor.started")) order_ = epoch_permutation(count_, seed_, epoch_);
}

json::Value step_cursor(const EpochSampler& sampler, int64_t steps_done) {
  json::Value out = sampler.cursor();
  out.set("step", steps_done);
  return out;
}

int64_t restore_step_cursor(EpochSampler& sampler, const json::Value& cursor) {
  sampler.restore(cursor);
  return cursor.at("step").as_int64("trainer.json: data_cursor.step");
}

}  // namespace lamina::train
