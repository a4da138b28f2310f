#include "train/losses/advantages.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace lamina::train {
namespace {

double mean_of_range(const std::vector<double>& values, size_t begin, size_t end) {
  double total = 0;
  for (size_t i = begin; i < end; ++i) total += values[i];
  return end > begin ? total / double(end - begin) : 0.0;
}

double std_of_range(const std::vector<double>& values, size_t begin, size_t end) {
  if (end - begin < 2) return 0.0;
  const double mean = mean_of_range(values, begin, end);
  double squares = 0;
  for (size_t i = begin; i < end; ++i) squares += (values[i] - mean) * (values[i] - mean);
  return std::sqrt(squares / double(end - begin - 1));
}

void check_groups(const std::vector<double>& rewards, int64_t group_size) {
  LAMINA_CHECK(group_size >= 1 && rewards.size() % size_t(group_size) == 0, "the batch of ", rewards.size(),
               " completions is not a whole number of groups of num_generations = ", group_size);
}

}  // namespace

double sample_std(const std::vector<double>& values) { return std_of_range(values, 0, values.size()); }

std::vector<double> group_centered(const std::vector<double>& rewards, int64_t group_size) {
  check_groups(rewards, group_size);
  std::vector<double> centered(rewards.size());
  for (size_t begin = 0; begin < rewards.size(); begin += size_t(group_size)) {
    const size_t end = begin + size_t(group_size);
    const double mean = mean_of_range(rewards, begin, end);
    for (size_t i = begin; i < end; ++i) centered[i] = rewards[i] - mean;
  }
  return centered;
}

std::vector<double> group_stds(const std::vector<double>& rewards, int64_t group_size) {
  check_groups(rewards, group_size);
  std::vector<double> stds;
  for (size_t begin = 0; begin < rewards.size(); begin += size_t(group_size))
    stds.push_back(std_of_range(rewards, begin, begin + size_t(group_size)));
  return stds;
}

std::vector<double> group_advantages(const std::vector<double>& rewards, int64_t group_size, const std::string& scale,
                                     double std_epsilon) {
  std::vector<double> advantages = group_centered(rewards, group_size);
  if (scale == "none") return advantages;
  const std::vector<double> stds = group_stds(rewards, group_size);
  const double batch_std = sample_std(rewards);
  for (size_t i = 0; i < advantages.size(); ++i) {
    const double std = scale == "batch" ? batch_std : stds[i / size_t(group_size)];
    advantages[i] /= std + std_epsilon;
  }
  return advantages;
}

std::vector<double> leave_one_out_advantages(const std::vector<double>& rewards, int64_t group_size) {
  check_groups(rewards, group_size);
  LAMINA_CHECK(group_size >= 2, "leave-one-out baselines need at least 2 samples per prompt, got ", group_size);
  std::vector<double> advantages(rewards.size());
  for (size_t begin = 0; begin < rewards.size(); begin += size_t(group_size)) {
    const size_t end = begin + size_t(group_size);
    double total = 0;
    for (size_t i = begin; i < end; ++i) total += rewards[i];
    for (size_t i = begin; i < end; ++i) advantages[i] = rewards[i] - (total - rewards[i]) / double(group_size - 1);
  }
  return advantages;
}

std::vector<int64_t> last_kept_positions(const std::vector<bool>& mask, int64_t rows) {
  const int64_t width = rows > 0 ? int64_t(mask.size()) / rows : 0;
  std::vector<int64_t> last(size_t(rows), -1);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t t = 0; t < width; ++t)
      if (mask[size_t(b * width + t)]) last[size_t(b)] = b * width + t;
  return last;
}

std::vector<double> generalized_advantages(const std::vector<double>& token_rewards, const std::vector<double>& values,
                                           const std::vector<bool>& mask, int64_t rows, double gamma, double lambda) {
  const int64_t width = rows > 0 ? int64_t(mask.size()) / rows : 0;
  std::vector<double> advantages(mask.size(), 0.0);
  for (int64_t b = 0; b < rows; ++b) {
    double next_value = 0, next_advantage = 0;
    for (int64_t t = width - 1; t >= 0; --t) {
      const size_t at = size_t(b * width + t);
      if (!mask[at]) continue;
      const double delta = token_rewards[at] + gamma * next_value - values[at];
      advantages[at] = delta + gamma * lambda * next_advantage;
      next_value = values[at];
      next_advantage = advantages[at];
    }
  }
  return advantages;
}

std::vector<double> returns_to_go(const std::vector<double>& token_rewards, const std::vector<bool>& mask,
                                  int64_t rows, double gamma) {
  const int64_t width = rows > 0 ? int64_t(mask.size()) / rows : 0;
  std::vector<double> returns(mask.size(), 0.0);
  for (int64_t b = 0; b < rows; ++b) {
    double running = 0;
    for (int64_t t = width - 1; t >= 0; --t) {
      const size_t at = size_t(b * width + t);
      if (!mask[at]) continue;
      running = token_rewards[at] + gamma * running;
      returns[at] = running;
    }
  }
  return returns;
}

void whiten(std::vector<double>& values, const std::vector<bool>& mask) {
  double count = 0, total = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (mask[i]) count += 1, total += values[i];
  if (count < 2) return;  // no variance to divide by (TRL would divide by zero)
  const double mean = total / count;
  double squares = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (mask[i]) squares += (values[i] - mean) * (values[i] - mean);
  const double scale = 1.0 / std::sqrt(squares / (count - 1) + 1e-8);
  for (size_t i = 0; i < values.size(); ++i) values[i] = mask[i] ? (values[i] - mean) * scale : 0.0;
}

std::pair<double, double> normalize(std::vector<double>& values, const std::vector<bool>& mask, double min_variance) {
  double count = 0, total = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (mask[i]) count += 1, total += values[i];
  if (count == 0) return {0.0, 0.0};
  const double mean = total / count;
  double squares = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (mask[i]) squares += (values[i] - mean) * (values[i] - mean);
  const double std = std::sqrt(std::max(squares / count, min_variance));
  for (size_t i = 0; i < values.size(); ++i) values[i] = mask[i] ? (values[i] - mean) / std : 0.0;
  return {mean, std};
}

double overlong_penalty(double length, double max_length, double buffer_length) {
  const double expected = max_length - buffer_length;
  if (length <= expected) return 0.0;
  if (length <= max_length) return (expected - length) / buffer_length;
  return -1.0;
}

}  // namespace lamina::train
