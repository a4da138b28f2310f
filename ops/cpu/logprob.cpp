// Per-token log-probs of chosen labels, fused: one row of logits x [V] at a time, with
// z = x / T (T the sampling temperature), m = max z and lse = m + log sum_j exp(z_j - m):
//   logprob   = z[label] - lse                       (0 where the mask is false)
//   backward  dx_j = (g / T) * ([j = label] - exp(z_j - lse))
// Rows are addressed through row_offsets (element offsets of each row's first logit), so a
// row-strided view such as the shifted logits[:, :-1] is read where it lies; nothing of size
// [rows, V] is allocated in the forward. Masked rows are skipped entirely.
//
// The same pass gives the distribution statistics the metrics and WPO weights need:
//   entropy            = lse - sum_j p_j z_j                    (p = softmax(z))
//   log sum_j p_j^2    = (2m + log sum_j exp(2 (z_j - m))) - 2 lse
//   logit mean         = mean_j x_j   (raw logits, as TRL logs them)
//   argmax match       = argmax_j x_j == label  (first maximum)
#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {
namespace {

// sum_j exp((x_j - peak) * scale) in kLanes lanes (peak is max x, so every exponent is <= 0).
template <typename T>
compute_t<T> row_sum_exp_scaled(const T* x, int64_t n, compute_t<T> peak, compute_t<T> scale) {
  using C = compute_t<T>;
  C lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += fast_exp((load(x[i + lane]) - peak) * scale);
  C total = 0;
  for (; i < n; ++i) total += fast_exp((load(x[i]) - peak) * scale);
  for (C lane : lanes) total += lane;
  return total;
}

}  // namespace

void token_logprobs(const Tensor& logprobs, const Tensor& lse, const Tensor& logits,
                    const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                    double temperature) {
  const int64_t vocab = logits.size(-1), rows = int64_t(row_offsets.size());
  visit_floating(logits.dtype(), "token_logprobs", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(labels.dtype(), "token_logprobs", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* base = static_cast<const T*>(logits.raw_data());
      const I* label = static_cast<const I*>(labels.raw_data());
      const bool* keep = static_cast<const bool*>(mask.raw_data());
      C* out = static_cast<C*>(logprobs.raw_data());
      C* row_lse = static_cast<C*>(lse.raw_data());
      const C inv_temperature = C(1.0 / temperature);
      for_each_row(rows, vocab, [&](int64_t n) {
        if (!keep[n]) {
          out[n] = C(0);
          row_lse[n] = C(0);
          return;
        }
        const T* row = base + row_offsets[size_t(n)];
        const C peak = row_max(row, vocab);
        const C log_total = peak * inv_temperature + std::log(row_sum_exp_scaled(row, vocab, peak, inv_temperature));
        row_lse[n] = log_total;
        out[n] = load(row[label[n]]) * inv_temperature - log_total;
      });
    });
  });
}

void token_logprobs_backward(const Tensor& grad_logits, const Tensor& grad_logprobs, const Tensor& logits,
                             const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                             const Tensor& lse, double temperature) {
  const int64_t vocab = logits.size(-1), rows = int64_t(row_offsets.size());
  visit_floating(logits.dtype(), "token_logprobs_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(labels.dtype(), "token_logprobs_backward", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* base = static_cast<const T*>(logits.raw_data());
      const I* label = static_cast<const I*>(labels.raw_data());
      const bool* keep = static_cast<const bool*>(mask.raw_data());
      const C* g = static_cast<const C*>(grad_logprobs.raw_data());
      const C* row_lse = static_cast<const C*>(lse.raw_data());
      T* dx = static_cast<T*>(grad_logits.raw_data());
      const C inv_temperature = C(1.0 / temperature);
      for_each_row(rows, vocab, [&](int64_t n) {
        T* out = dx + n * vocab;
        if (!keep[n]) {
          for (int64_t j = 0; j < vocab; ++j) out[j] = T(C(0));
          return;
        }
        const T* row = base + row_offsets[size_t(n)];
        const C scale = g[n] * inv_temperature, shift = row_lse[n];
        for (int64_t j = 0; j < vocab; ++j) out[j] = T(-scale * fast_exp(load(row[j]) * inv_temperature - shift));
        out[label[n]] = T(load(out[label[n]]) + scale);
      });
    });
  });
}

void token_distribution_stats(const TokenDistributionStats& stats, const Tensor& logits,
                              const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                              double temperature) {
  const int64_t vocab = logits.size(-1), rows = int64_t(row_offsets.size());
  visit_floating(logits.dtype(), "token_distribution_stats", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(labels.dtype(), "token_distribution_stats", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* base = static_cast<const T*>(logits.raw_data());
      const I* label = static_cast<const I*>(labels.raw_data());
      const bool* keep = static_cast<const bool*>(mask.raw_data());
      C* entropy = static_cast<C*>(stats.entropy.raw_data());
      C* logit_mean = static_cast<C*>(stats.logit_mean.raw_data());
      C* log_sum_sq = static_cast<C*>(stats.log_sum_sq_probs.raw_data());
      bool* matches = static_cast<bool*>(stats.argmax_matches.raw_data());
      const C inv_temperature = C(1.0 / temperature);
      for_each_row(rows, vocab, [&](int64_t n) {
        if (!keep[n]) {
          entropy[n] = logit_mean[n] = log_sum_sq[n] = C(0);
          matches[n] = false;
          return;
        }
        const T* row = base + row_offsets[size_t(n)];
        const C peak = row_max(row, vocab);
        // Exact sums (no lanes needed: these are metrics, computed once per logged step).
        C total = 0, weighted = 0, squares = 0, raw_sum = 0;
        int64_t best = 0;
        for (int64_t j = 0; j < vocab; ++j) {
          const C x = load(row[j]);
          const C shifted = (x - peak) * inv_temperature;
          const C e = fast_exp(shifted);
          total += e;
          weighted += e == C(0) ? C(0) : e * shifted;  // p log p -> 0 as p -> 0 (a -inf logit: not 0 * -inf)
          squares += e * e;
          raw_sum += x;
          if (x > load(row[best])) best = j;
        }
        const C log_total = std::log(total);  // lse - m / T
        entropy[n] = log_total - weighted / total;
        log_sum_sq[n] = std::log(squares) - C(2) * log_total;
        logit_mean[n] = raw_sum / C(vocab);
        matches[n] = best == int64_t(label[n]);
      });
    });
  });
}

// log1mexp(x) = log(1 - e^x) for x <= 0, switching at -ln 2 between the two accurate forms
// (Maechler 2012): log1p(-e^x) far from 0, log(-expm1(x)) near it. d/dx = -1 / expm1(-x).
void log1mexp(const Tensor& out, const Tensor& x) {
  visit_floating(x.dtype(), "log1mexp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map1<T, T>(out, x, [](C v) {
      return v < C(-0.693147180559945309) ? C(std::log1p(-std::exp(v))) : C(std::log(-std::expm1(v)));
    });
  });
}

void log1mexp_backward(const Tensor& grad_in, const Tensor& grad_out, const Tensor& x) {
  visit_floating(x.dtype(), "log1mexp_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map2<T, T, T>(grad_in, grad_out, x, [](C g, C v) { return C(-g / std::expm1(-v)); });
  });
}

}  // namespace lamina::ops::cpu
