// The f64 oracles of ops::flash_attention and its backward, and of ops::cached_attention: the
// definitions as plain loops over every (query, key) pair. The mask predicate is written out
// again here from the spec's formula (sparse-attention.md §2.4), reading the pattern's tensors
// directly, so that it shares nothing with ResolvedAttentionPattern, which the kernels use.
#include <cmath>
#include <limits>

#include "ops/reference.h"
#include "tensor/view.h"

namespace lamina::ops::reference {
namespace {

constexpr double kMinusInfinity = -std::numeric_limits<double>::infinity();

// Every input read once into f64 arrays; allowed() and bias() give the pattern per element.
struct OracleAttention {
  int64_t B, H, Hkv, Tq, Tk, D, offset;
  double scale;
  std::vector<double> q, k, v;
  const AttentionPattern& pattern;
  std::vector<int64_t> documents, layout;
  std::vector<double> mask;  // [B, H, Tq, Tk] when an additive mask is given

  OracleAttention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionPattern& p,
                  std::optional<double> scale_in)
      : B(q_in.size(0)),
        H(q_in.size(1)),
        Hkv(k_in.size(1)),
        Tq(q_in.size(2)),
        Tk(k_in.size(2)),
        D(q_in.size(3)),
        offset(p.query_offset.value_or(k_in.size(2) - q_in.size(2))),
        scale(scale_in.value_or(1.0 / std::sqrt(double(q_in.size(3))))),
        q(q_in.to_vector<double>()),
        k(k_in.to_vector<double>()),
        v(v_in.to_vector<double>()),
        pattern(p) {
    if (p.document_ids.defined()) documents = p.document_ids.to_vector<int64_t>();
    if (p.block_layout.defined()) layout = p.block_layout.to_vector<int64_t>();
    if (p.additive_mask.defined()) mask = ops::contiguous(views::expand(p.additive_mask, {B, H, Tq, Tk})).to_vector<double>();
  }

  static int64_t per_head(const std::vector<int64_t>& values, int64_t h) {
    return values.size() == 1 ? values[0] : values[size_t(h)];
  }

  bool allowed(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (pattern.causal && j > i) return false;
    if (!documents.empty()) {
      const int64_t row = pattern.document_ids.dim() == 2 ? b * Tk : 0;
      if (documents[size_t(row + i)] != documents[size_t(row + j)]) return false;
    }
    const int64_t sink = per_head(pattern.sinks, h), window = per_head(pattern.windows, h);
    const bool in_sink = j < sink;
    const bool in_window = window > 0 && (window == kAllKeys || i - j < window);
    bool in_layout = false;
    if (!layout.empty()) {
      const Shape& shape = pattern.block_layout.shape();
      const int64_t head = shape[0] == 1 ? 0 : h;
      in_layout = layout[size_t((head * shape[1] + i / pattern.block_queries) * shape[2] + j / pattern.block_keys)] != 0;
    }
    return in_sink || in_window || in_layout;
  }

  // Scaled, masked scores of one (b, h, t) row: -inf where hidden.
  std::vector<double> scores(int64_t b, int64_t h, int64_t t) const {
    const int64_t g = h / (H / Hkv);
    std::vector<double> row(size_t(Tk), kMinusInfinity);
    for (int64_t j = 0; j < Tk; ++j) {
      if (!allowed(b, h, offset + t, j)) continue;
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += q[size_t(((b * H + h) * Tq + t) * D + d)] * k[size_t(((b * Hkv + g) * Tk + j) * D + d)];
      row[size_t(j)] = dot * scale + (mask.empty() ? 0.0 : mask[size_t(((b * H + h) * Tq + t) * Tk + j)]);
    }
    return row;
  }

  // Softmax probabilities of a row and its log-sum-exp (all 0 and -inf when nothing is visible).
  std::vector<double> probabilities(int64_t b, int64_t h, int64_t t, double* lse) const {
    std::vector<double> row = scores(b, h, t);
    double peak = kMinusInfinity;
    for (double s : row) peak = std::max(peak, s);
    if (peak == kMinusInfinity) {
      *lse = kMinusInfinity;
      return std::vector<double>(row.size(), 0.0);
    }
    double total = 0;
    for (double s : row) total += std::exp(s - peak);
    *lse = peak + std::log(total);
    for (double& s : row) s = std::exp(s - *lse);
    return row;
  }
};

}  // namespace

std::vector<Tensor> flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern,
                                    std::optional<double> scale) {
  const OracleAttention a(q, k, v, pattern, scale);
  std::vector<double> out(size_t(a.B * a.H * a.Tq * a.D), 0.0), lse(size_t(a.B * a.H * a.Tq));
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t h = 0; h < a.H; ++h) {
      const int64_t g = h / (a.H / a.Hkv);
      for (int64_t t = 0; t < a.Tq; ++t) {
        const int64_t row = (b * a.H + h) * a.Tq + t;
        const std::vector<double> p = a.probabilities(b, h, t, &lse[size_t(row)]);
        for (int64_t j = 0; j < a.Tk; ++j)
          for (int64_t d = 0; d < a.D; ++d)
            out[size_t(row * a.D + d)] += p[size_t(j)] * a.v[size_t(((b * a.Hkv + g) * a.Tk + j) * a.D + d)];
      }
    }
  return {Tensor::from_vector(out, q.shape(), DType::f64), Tensor::from_vector(lse, {a.B, a.H, a.Tq}, DType::f64)};
}

std::vector<Tensor> flash_attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                             const AttentionPattern& pattern, std::optional<double> scale) {
  const OracleAttention a(q, k, v, pattern, scale);
  const std::vector<double> dout = grad_out.to_vector<double>();
  std::vector<double> dq(a.q.size(), 0.0), dk(a.k.size(), 0.0), dv(a.v.size(), 0.0);
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t h = 0; h < a.H; ++h) {
      const int64_t g = h / (a.H / a.Hkv);
      for (int64_t t = 0; t < a.Tq; ++t) {
        const int64_t row = (b * a.H + h) * a.Tq + t;
        double lse = 0;
        const std::vector<double> p = a.probabilities(b, h, t, &lse);
        // dP_j = dO . v_j;  dS_j = P_j (dP_j - sum_i P_i dP_i)
        std::vector<double> dp(size_t(a.Tk), 0.0);
        double weighted = 0;
        for (int64_t j = 0; j < a.Tk; ++j) {
          for (int64_t d = 0; d < a.D; ++d)
            dp[size_t(j)] += dout[size_t(row * a.D + d)] * a.v[size_t(((b * a.Hkv + g) * a.Tk + j) * a.D + d)];
          weighted += p[size_t(j)] * dp[size_t(j)];
        }
        for (int64_t j = 0; j < a.Tk; ++j) {
          const double ds = p[size_t(j)] * (dp[size_t(j)] - weighted);
          const int64_t key = (b * a.Hkv + g) * a.Tk + j;
          for (int64_t d = 0; d < a.D; ++d) {
            dv[size_t(key * a.D + d)] += p[size_t(j)] * dout[size_t(row * a.D + d)];
            dq[size_t(row * a.D + d)] += a.scale * ds * a.k[size_t(key * a.D + d)];
            dk[size_t(key * a.D + d)] += a.scale * ds * a.q[size_t(row * a.D + d)];
          }
        }
      }
    }
  return {Tensor::from_vector(dq, q.shape(), DType::f64), Tensor::from_vector(dk, k.shape(), DType::f64),
          Tensor::from_vector(dv, v.shape(), DType::f64)};
}

// The oracle of ops::cached_attention: the keys of every run with their given positions, the
// spec's predicate (causal, sink, window) on those positions, empty slots (-1) never seen.
std::vector<Tensor> cached_attention(const Tensor& q_in, const std::vector<PositionedKeys>& runs,
                                     const AttentionPattern& pattern, std::optional<double> scale_in) {
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = runs.empty() ? 1 : runs[0].keys.size(1);
  const int64_t offset = pattern.query_offset.value_or(0);
  const double scale = scale_in.value_or(1.0 / std::sqrt(double(D)));
  const std::vector<double> q = q_in.to_vector<double>();
  struct Run {
    std::vector<double> k, v;
    std::vector<int64_t> positions;
    int64_t length;
    bool per_head;
  };
  std::vector<Run> loaded;
  for (const PositionedKeys& run : runs)
    loaded.push_back({run.keys.to_vector<double>(), run.values.to_vector<double>(), run.positions.to_vector<int64_t>(),
                      run.keys.size(2), run.positions.dim() == 2});
  const auto per_head = [](const std::vector<int64_t>& values, int64_t h) {
    return values.size() == 1 ? values[0] : values[size_t(h)];
  };
  std::vector<double> out(size_t(B * H * T * D), 0.0), lse(size_t(B * H * T), kMinusInfinity);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      const int64_t sink = per_head(pattern.sinks, h), window = per_head(pattern.windows, h);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t i = offset + t, row = (b * H + h) * T + t;
        // (score, value row) of every visible key.
        std::vector<std::pair<double, const double*>> visible;
        for (const Run& run : loaded)
          for (int64_t s = 0; s < run.length; ++s) {
            const int64_t j = run.positions[size_t(run.per_head ? g * run.length + s : s)];
            if (j < 0 || (pattern.causal && j > i)) continue;
            if (!(j < sink || (window > 0 && (window == kAllKeys || i - j < window)))) continue;
            const int64_t key = ((b * Hkv + g) * run.length + s) * D;
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += q[size_t(row * D + d)] * run.k[size_t(key + d)];
            visible.emplace_back(dot * scale, run.v.data() + key);
          }
        if (visible.empty()) continue;
        double peak = kMinusInfinity, total = 0;
        for (const auto& [score, value] : visible) peak = std::max(peak, score);
        for (const auto& [score, value] : visible) total += std::exp(score - peak);
        lse[size_t(row)] = peak + std::log(total);
        for (const auto& [score, value] : visible) {
          const double p = std::exp(score - lse[size_t(row)]);
          for (int64_t d = 0; d < D; ++d) out[size_t(row * D + d)] += p * value[d];
        }
      }
    }
  return {Tensor::from_vector(out, q_in.shape(), DType::f64), Tensor::from_vector(lse, {B, H, T}, DType::f64)};
}

}  // namespace lamina::ops::reference
