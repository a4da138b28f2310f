// Dense attention with GQA, the reference the fused kernels are tested against.
//
// Per (batch b, query head h), with kv head g = h / (H / Hkv):
//   S = scale * Q K^T + mask (+ causal -inf above the diagonal, offset by S_len - T)
//   lse_t = log sum_s exp(S_ts);  P = exp(S - lse);  O = P V
// Backward (P recomputed from the saved lse, never stored between the passes):
//   dV += P^T dO;  dP = dO V^T;  D_t = sum_d dO_td O_td;  dS = P (dP - D)
//   dQ = scale dS K;  dK += scale dS^T Q
// The backward runs one task per (b, g) and visits the group's query heads in order, so
// dK and dV accumulate in a fixed order without locks.
#include <cmath>
#include <vector>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {
namespace {

struct AttentionShape {
  int64_t batch, heads, kv_heads, tokens, keys, head_dim;
  int64_t group() const { return heads / kv_heads; }
};

AttentionShape shape_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

MatrixSpan matrix(const void* data, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride = 1) {
  return {const_cast<void*>(data), rows, cols, row_stride, col_stride};
}

// S = scale * Q K^T + mask with the causal cut, for one (b, h): scores [T, S_len] row-major.
// q and k rows are `q_stride` and `k_stride` elements apart (the KV cache's rows are spread
// over its capacity; the attention reads them in place).
template <typename C>
void compute_scores(std::vector<C>& scores, const C* q, int64_t q_stride, const C* k, int64_t k_stride,
                    const AttentionShape& s, int64_t b, int64_t h, const Tensor& mask, bool causal, C scale) {
  const int64_t T = s.tokens, S = s.keys, D = s.head_dim;
  gemm_batch(dtype_of<C>(), {{matrix(q, T, D, q_stride), matrix(k, D, S, 1, k_stride), matrix(scores.data(), T, S, S)}});
  // The mask rows of this (b, h), read through its (broadcast) strides.
  const C* mask_data = mask.defined() ? static_cast<const C*>(mask.raw_data()) + b * mask.stride(0) + h * mask.stride(1)
                                      : nullptr;
  const int64_t mask_row_stride = mask.defined() ? mask.stride(2) : 0;
  const int64_t mask_column_stride = mask.defined() ? mask.stride(3) : 0;
  for (int64_t t = 0; t < T; ++t) {
    C* row = scores.data() + t * S;
    const int64_t visible = causal ? S - T + t + 1 : S;  // keys [0, visible) are visible
    if (mask_data != nullptr) {
      const C* mask_row = mask_data + t * mask_row_stride;
      for (int64_t j = 0; j < visible; ++j) row[j] = row[j] * scale + mask_row[j * mask_column_stride];
    } else {
      for (int64_t j = 0; j < visible; ++j) row[j] *= scale;
    }
    for (int64_t j = std::max<int64_t>(visible, 0); j < S; ++j) row[j] = C(-INFINITY);
  }
}

template <typename C>
void attention_typed(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& mask, bool causal, C scale) {
  const AttentionShape s = shape_of(q, k);
  const int64_t T = s.tokens, S = s.keys, D = s.head_dim;
  const C* q_data = static_cast<const C*>(q.raw_data());
  const C* k_data = static_cast<const C*>(k.raw_data());
  const C* v_data = static_cast<const C*>(v.raw_data());
  C* out_data = static_cast<C*>(out.raw_data());
  C* lse_data = static_cast<C*>(lse.raw_data());
  // Enough (b, h) tasks per thread that waking a thread pays off (decode steps are tiny).
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, T * S * D));
  parallel_for(0, s.batch * s.heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<C> scores(static_cast<size_t>(T * S));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.heads, h = task % s.heads, g = h / s.group();
      const C* q_bh = q_data + b * q.stride(0) + h * q.stride(1);
      const C* k_bg = k_data + b * k.stride(0) + g * k.stride(1);
      const C* v_bg = v_data + b * v.stride(0) + g * v.stride(1);
      compute_scores(scores, q_bh, q.stride(2), k_bg, k.stride(2), s, b, h, mask, causal, scale);
      for (int64_t t = 0; t < T; ++t) {
        C* row = scores.data() + t * S;
        const C peak = row_max(row, S);
        if (peak == C(-INFINITY)) {  // every key hidden: output 0
          lse_data[task * T + t] = C(-INFINITY);
          for (int64_t j = 0; j < S; ++j) row[j] = 0;
          continue;
        }
        const C total = row_sum_exp(row, S, peak);
        lse_data[task * T + t] = peak + std::log(total);
        const C inverse = C(1) / total;
        for (int64_t j = 0; j < S; ++j) row[j] = fast_exp(row[j] - peak) * inverse;
      }
      gemm_batch(dtype_of<C>(),
                 {{matrix(scores.data(), T, S, S), matrix(v_bg, S, D, v.stride(2)), matrix(out_data + task * T * D, T, D, D)}});
    }
  });
}

template <typename C>
void attention_backward_typed(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const Tensor& mask, bool causal, C scale) {
  const AttentionShape s = shape_of(q, k);
  const int64_t T = s.tokens, S = s.keys, D = s.head_dim;
  const C* q_data = static_cast<const C*>(q.raw_data());
  const C* k_data = static_cast<const C*>(k.raw_data());
  const C* v_data = static_cast<const C*>(v.raw_data());
  const C* o_data = static_cast<const C*>(out.raw_data());
  const C* do_data = static_cast<const C*>(dout.raw_data());
  const C* lse_data = static_cast<const C*>(lse.raw_data());
  C* dq_data = static_cast<C*>(dq.raw_data());
  C* dk_data = static_cast<C*>(dk.raw_data());
  C* dv_data = static_cast<C*>(dv.raw_data());
  parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> probs(static_cast<size_t>(T * S)), grad_probs(static_cast<size_t>(T * S));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, g = task % s.kv_heads;
      const C* k_bg = k_data + task * S * D;
      const C* v_bg = v_data + task * S * D;
      C* dk_bg = dk_data + task * S * D;
      C* dv_bg = dv_data + task * S * D;
      for (int64_t i = 0; i < S * D; ++i) dk_bg[i] = dv_bg[i] = 0;
      for (int64_t h = g * s.group(); h < (g + 1) * s.group(); ++h) {
        const int64_t bh = b * s.heads + h;
        const C* q_bh = q_data + bh * T * D;
        const C* o_bh = o_data + bh * T * D;
        const C* do_bh = do_data + bh * T * D;
        compute_scores(probs, q_bh, D, k_bg, D, s, b, h, mask, causal, scale);
        for (int64_t t = 0; t < T; ++t) {
          const C row_lse = lse_data[bh * T + t];
          C* row = probs.data() + t * S;
          for (int64_t j = 0; j < S; ++j) row[j] = row_lse == C(-INFINITY) ? C(0) : fast_exp(row[j] - row_lse);
        }
        // dV += P^T dO
        gemm_batch(dtype_of<C>(), {{matrix(probs.data(), S, T, 1, S), matrix(do_bh, T, D, D), matrix(dv_bg, S, D, D), true}});
        // dP = dO V^T
        gemm_batch(dtype_of<C>(), {{matrix(do_bh, T, D, D), matrix(v_bg, D, S, 1, D), matrix(grad_probs.data(), T, S, S)}});
        // dS = scale * P (dP - D_t), written over dP
        for (int64_t t = 0; t < T; ++t) {
          const C delta = row_dot(do_bh + t * D, o_bh + t * D, D);
          C* p_row = probs.data() + t * S;
          C* dp_row = grad_probs.data() + t * S;
          for (int64_t j = 0; j < S; ++j) dp_row[j] = scale * p_row[j] * (dp_row[j] - delta);
        }
        // dQ = dS K;  dK += dS^T Q
        gemm_batch(dtype_of<C>(), {{matrix(grad_probs.data(), T, S, S), matrix(k_bg, S, D, D), matrix(dq_data + bh * T * D, T, D, D)}});
        gemm_batch(dtype_of<C>(), {{matrix(grad_probs.data(), S, T, 1, S), matrix(q_bh, T, D, D), matrix(dk_bg, S, D, D), true}});
      }
    }
  });
}

}  // namespace

void attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor& mask, bool causal, double scale) {
  if (q.dtype() == DType::f64) {
    attention_typed<double>(out, lse, q, k, v, mask, causal, scale);
  } else {
    attention_typed<float>(out, lse, q, k, v, mask, causal, float(scale));
  }
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& mask,
                        bool causal, double scale) {
  if (q.dtype() == DType::f64) {
    attention_backward_typed<double>(dq, dk, dv, dout, q, k, v, out, lse, mask, causal, scale);
  } else {
    attention_backward_typed<float>(dq, dk, dv, dout, q, k, v, out, lse, mask, causal, float(scale));
  }
}

}  // namespace lamina::ops::cpu
