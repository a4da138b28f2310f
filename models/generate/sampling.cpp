#include "models/generate/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "ops/ops.h"
#include "tensor/error.h"

namespace lamina::generate {
namespace {

constexpr double kNegativeInfinity = -std::numeric_limits<double>::infinity();

void apply_repetition_penalty(std::vector<double>& z, const std::vector<int64_t>& context, double penalty) {
  if (penalty == 1.0) return;
  std::unordered_set<int64_t> seen(context.begin(), context.end());
  for (int64_t token : seen) {
    if (token < 0 || token >= int64_t(z.size())) continue;
    double& value = z[size_t(token)];
    value = value > 0 ? value / penalty : value * penalty;
  }
}

size_t argmax(const std::vector<double>& z) {
  return size_t(std::max_element(z.begin(), z.end()) - z.begin());  // first maximum, like torch
}

std::vector<double> softmax(const std::vector<double>& z) {
  const double peak = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double total = 0;
  for (size_t i = 0; i < z.size(); ++i) total += (p[i] = z[i] == kNegativeInfinity ? 0.0 : std::exp(z[i] - peak));
  for (double& value : p) value /= total;
  return p;
}

}  // namespace

void SamplingOptions::validate() const {
  LAMINA_CHECK(temperature >= 0 && std::isfinite(temperature), "sampling: temperature must be >= 0, got ", temperature);
  LAMINA_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0 disables it), got ", top_k);
  LAMINA_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1], got ", top_p);
  LAMINA_CHECK(min_p >= 0 && min_p < 1, "sampling: min_p must be in [0, 1), got ", min_p);
  LAMINA_CHECK(repetition_penalty > 0, "sampling: repetition_penalty must be > 0, got ", repetition_penalty);
}

int64_t first_non_finite_logit(const float* logits, int64_t vocab) {
  for (int64_t i = 0; i < vocab; ++i)
    if (std::isnan(logits[i]) || logits[i] == std::numeric_limits<float>::infinity()) return i;
  return -1;
}

std::vector<double> next_token_probabilities(std::vector<float> logits, const std::vector<int64_t>& context,
                                             const SamplingOptions& options) {
  options.validate();
  LAMINA_CHECK(!logits.empty(), "sampling: empty logits");
  const int64_t bad = first_non_finite_logit(logits.data(), int64_t(logits.size()));
  LAMINA_CHECK(bad < 0, "sampling: the logit of token ", bad, " is ",
               std::isnan(logits[size_t(std::max<int64_t>(bad, 0))]) ? "NaN" : "+inf",
               " (logits must be finite, or -inf for a masked token)");
  std::vector<double> z(logits.begin(), logits.end());
  apply_repetition_penalty(z, context, options.repetition_penalty);
  const double peak = *std::max_element(z.begin(), z.end());
  LAMINA_CHECK(peak != kNegativeInfinity, "sampling: every one of the ", z.size(), " logits is -inf (every token masked)");
  if (options.temperature == 0.0) {
    std::vector<double> one_hot(z.size(), 0.0);
    one_hot[argmax(z)] = 1.0;
    return one_hot;
  }
  // Shift by the largest logit before dividing: (z - peak) / T lies in [-inf, 0] for every
  // T > 0, so a tiny temperature sends the other tokens to -inf (probability 0) where z / T
  // would overflow to inf and the softmax to inf - inf = NaN. The shift does not change the
  // softmax, and the penalised logits (|z| < 3.5e44) cannot overflow when subtracted.
  for (double& value : z) value = (value - peak) / options.temperature;
  if (options.top_k > 0 && options.top_k < int64_t(z.size())) {
    // Keep the k largest; ties with the k-th value stay.
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(), std::greater<>());
    const double kth = sorted[size_t(options.top_k - 1)];
    for (double& value : z)
      if (value < kth) value = kNegativeInfinity;
  }
  if (options.top_p < 1.0) {
    // The shortest prefix (by descending probability) whose mass reaches top_p; the token that
    // crosses it is kept, and so is at least one token.
    const std::vector<double> p = softmax(z);
    std::vector<size_t> order(z.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
    double cumulative = 0;
    size_t kept = 0;
    while (kept < order.size() && (kept == 0 || cumulative < options.top_p)) cumulative += p[order[kept++]];
    for (size_t i = kept; i < order.size(); ++i) z[order[i]] = kNegativeInfinity;
  }
  if (options.min_p > 0.0) {
    const std::vector<double> p = softmax(z);
    const double threshold = options.min_p * *std::max_element(p.begin(), p.end());
    for (size_t i = 0; i < z.size(); ++i)
      if (p[i] < threshold) z[i] = kNegativeInfinity;
  }
  return softmax(z);
}

int64_t sample_next_token(const float* logits, int64_t vocab, const std::vector<int64_t>& context,
                          const SamplingOptions& options, Generator& generator) {
  const std::vector<double> p = next_token_probabilities(std::vector<float>(logits, logits + vocab), context, options);
  if (options.temperature == 0.0) return int64_t(argmax(p));
  const double draw = uniform({1}, 0.0, 1.0, generator, DType::f64).item<double>();
  double cumulative = 0;
  int64_t last_possible = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0) continue;
    last_possible = int64_t(i);
    cumulative += p[i];
    if (draw < cumulative) return int64_t(i);
  }
  return last_possible;  // rounding left the draw just above the total
}

}  // namespace lamina::generate
