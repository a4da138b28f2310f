#include "train/losses/common.h"

#include <numeric>

namespace lamina::train {

std::vector<double> values_of(const Tensor& t) { return t.detach().to_vector<double>(); }

double mean_of(const std::vector<double>& values) {
  if (values.empty()) return 0.0;
  return std::accumulate(values.begin(), values.end(), 0.0) / double(values.size());
}

Tensor tensor_like(const std::vector<double>& values, const Tensor& like) {
  return Tensor::from_vector(values, {int64_t(values.size())}, like.dtype());
}

Tensor scalar_like(double value, const Tensor& like) { return Tensor::scalar(value, like.dtype()); }

Tensor masked(const Tensor& x, const Tensor& mask) { return where(mask, x, zeros({}, x.dtype())); }

Tensor masked_row_sum(const Tensor& x, const Tensor& mask) { return sum(masked(x, mask), {1}); }

std::vector<double> row_counts(const Tensor& mask) {
  const int64_t rows = mask.size(0), width = mask.size(1);
  const std::vector<bool> kept = mask.to_vector<bool>();
  std::vector<double> counts(size_t(rows), 0.0);
  for (int64_t b = 0; b < rows; ++b)
    for (int64_t t = 0; t < width; ++t) counts[size_t(b)] += kept[size_t(b * width + t)] ? 1.0 : 0.0;
  return counts;
}

Tensor capped_exp(const Tensor& x, double cap) { return exp(clamp(x, std::nullopt, cap)); }

LossResult mean_result(const Tensor& per_example, Metrics metrics) {
  LossResult result;
  result.loss = mean(per_example);
  result.losses = per_example;
  result.metrics = std::move(metrics);
  return result;
}

LossResult batch_result(const Tensor& loss, Metrics metrics) {
  LossResult result;
  result.loss = loss;
  result.metrics = std::move(metrics);
  return result;
}

void require(bool condition, const Hyperparameters& params, const std::string& message) {
  LAMINA_CHECK(condition, "loss '", params.owner(), "': ", message);
}

}  // namespace lamina::train
