// Dense attention with GQA on the GPU: the correct baseline the fused kernels will be tested
// against, the twin of ops/cpu/attention.cpp. Same equations, same masking and lse rules:
//   S = scale * Q K^T + mask (+ causal -inf above the diagonal, offset by S_len - T)
//   lse_t = log sum_s exp(S_ts);  P = exp(S - lse);  O = P V
//   backward: dV = P^T dO;  dP = dO V^T;  D_t = sum_d dO_td O_td;  dS = scale P (dP - D)
//             dQ = dS K;  dK = dS^T Q
// The query heads of one kv group are consecutive, so for a (batch, kv head) pair they form one
// matrix [G * T, D] and every product above is a single GEMM per pair (dK and dV sum over the
// group's heads through the GEMM's inner dimension, in a fixed order). Pairs are batched through
// cuBLASLt in chunks whose score matrices fit a fixed budget; softmax and dS are kernels here.
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

constexpr size_t kScoresBudget = size_t(512) << 20;  // bytes of scores per chunk of pairs

struct AttentionShape {
  int64_t batch, heads, kv_heads, tokens, keys, head_dim;
  __host__ __device__ int64_t group() const { return heads / kv_heads; }
  __host__ __device__ int64_t pair_rows() const { return group() * tokens; }  // query rows of one (batch, kv head)
};

// Where a score row lives: row r of the chunk starting at pair p0.
struct RowPlace {
  int64_t b, h, t, query_row;  // query_row: (b * H + h) * T + t, the row of q/out/lse
};

struct ScoreParams {
  AttentionShape shape;
  int64_t first_pair;
  const void* mask;  // null, or the compute dtype with mask_strides over [B, H, T, S]
  int64_t mask_strides[4];
  bool causal;
  double scale;
};

__device__ __forceinline__ RowPlace place_of(const ScoreParams& params, int64_t row) {
  const AttentionShape& s = params.shape;
  const int64_t pair = params.first_pair + row / s.pair_rows();
  const int64_t within = row % s.pair_rows();
  RowPlace place;
  place.b = pair / s.kv_heads;
  place.h = (pair % s.kv_heads) * s.group() + within / s.tokens;
  place.t = within % s.tokens;
  place.query_row = pair * s.pair_rows() + within;
  return place;
}

// scale * score + mask, or -inf where the causal cut hides the key.
template <typename C>
__device__ __forceinline__ C masked_score(const ScoreParams& params, const RowPlace& place, int64_t j, C score) {
  const AttentionShape& s = params.shape;
  const int64_t visible = params.causal ? s.keys - s.tokens + place.t + 1 : s.keys;
  C value = score * C(params.scale);
  if (params.mask != nullptr) {
    const C* mask = static_cast<const C*>(params.mask);
    value += mask[place.b * params.mask_strides[0] + place.h * params.mask_strides[1] +
                  place.t * params.mask_strides[2] + j * params.mask_strides[3]];
  }
  return j < visible ? value : C(-INFINITY);
}

// Scores -> probabilities in place, and lse per query row.
template <typename C>
__global__ void __launch_bounds__(kMaxRowThreads) attention_softmax_kernel(C* scores, C* lse, int64_t rows, ScoreParams params) {
  __shared__ C scratch[32];
  const int64_t keys = params.shape.keys;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowPlace place = place_of(params, row);
    C* values = scores + row * keys;
    C local_max = C(-INFINITY);
    for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) {
      const C value = masked_score(params, place, j, values[j]);
      values[j] = value;
      local_max = MaxOp{}(local_max, value);
    }
    const C peak = block_reduce(local_max, MaxOp{}, C(-INFINITY), scratch);
    if (peak == C(-INFINITY)) {  // every key hidden: output 0
      if (threadIdx.x == 0) lse[place.query_row] = C(-INFINITY);
      for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) values[j] = C(0);
      continue;
    }
    C local_sum = C(0);
    for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) local_sum += dmath::exp(values[j] - peak);
    const C total = block_reduce(local_sum, SumOp{}, C(0), scratch);
    if (threadIdx.x == 0) lse[place.query_row] = peak + dmath::log(total);
    const C inverse = C(1) / total;
    for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) values[j] = dmath::exp(values[j] - peak) * inverse;
  }
}

// Backward: scores -> P from the saved lse, in place.
template <typename C>
__global__ void __launch_bounds__(kMaxRowThreads) attention_probs_kernel(C* scores, const C* lse, int64_t rows, ScoreParams params) {
  const int64_t keys = params.shape.keys;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowPlace place = place_of(params, row);
    const C row_lse = lse[place.query_row];
    C* values = scores + row * keys;
    for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) {
      const C value = masked_score(params, place, j, values[j]);
      values[j] = row_lse == C(-INFINITY) ? C(0) : dmath::exp(value - row_lse);
    }
  }
}

// dS = scale P (dP - D_t) written over dP, with D_t = dO_t . O_t.
template <typename C>
__global__ void __launch_bounds__(kMaxRowThreads) attention_grad_scores_kernel(C* grad_scores, const C* probs, const C* dout, const C* out, int64_t rows,
                                             ScoreParams params) {
  __shared__ C scratch[32];
  const int64_t keys = params.shape.keys, head_dim = params.shape.head_dim;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowPlace place = place_of(params, row);
    const C* g = dout + place.query_row * head_dim;
    const C* o = out + place.query_row * head_dim;
    C local = C(0);
    for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) local += g[d] * o[d];
    const C delta = block_reduce(local, SumOp{}, C(0), scratch);
    C* dp = grad_scores + row * keys;
    const C* p = probs + row * keys;
    for (int64_t j = threadIdx.x; j < keys; j += blockDim.x) dp[j] = C(params.scale) * p[j] * (dp[j] - delta);
  }
}

AttentionShape shape_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

ScoreParams score_params(const AttentionShape& shape, const Tensor& mask, bool causal, double scale) {
  ScoreParams params{};
  params.shape = shape;
  params.mask = mask.defined() ? mask.raw_data() : nullptr;
  for (int d = 0; d < 4; ++d) params.mask_strides[d] = mask.defined() ? mask.stride(d) : 0;
  params.causal = causal;
  params.scale = scale;
  return params;
}

// Pairs per chunk, so that one chunk's [pairs, G * T, S] scores stay within the budget.
int64_t chunk_pairs(const AttentionShape& s, size_t element) {
  const size_t per_pair = size_t(s.pair_rows()) * size_t(s.keys) * element;
  const int64_t pairs = s.batch * s.kv_heads;
  return std::clamp<int64_t>(int64_t(kScoresBudget / std::max<size_t>(per_pair, 1)), 1, pairs);
}

// Row-major [rows, cols] matrices one `step` apart (in elements) from `base`.
GemmOperand matrices(const void* base, int64_t rows, int64_t cols, int64_t step) {
  return {base, rows, cols, cols, 1, step};
}
// The transposes of row-major [cols, rows] matrices: a column-major view, no copy.
GemmOperand transposed(const void* base, int64_t rows, int64_t cols, int64_t step) {
  return {base, rows, cols, 1, rows, step};
}

template <typename C>
const C* at(const Tensor& t, int64_t elements) {
  return static_cast<const C*>(t.raw_data()) + elements;
}

}  // namespace

void attention(const Tensor& out, const Tensor& lse, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
               const Tensor& mask, bool causal, double scale) {
  // The CPU kernel reads rows in place; the pairs' GEMMs here want each tensor contiguous.
  const Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
  const AttentionShape s = shape_of(q, k);
  if (q.numel() == 0 && lse.numel() == 0) return;
  if (s.keys == 0) {  // no keys: lse -inf, output 0
    fill(lse, -INFINITY);
    fill(out, 0.0);
    return;
  }
  const int device = q.device().index;
  const DType dtype = q.dtype();
  visit_floating(dtype, "attention", [&](auto tag) {
    using C = device_t<decltype(tag)>;
    if constexpr (std::is_same_v<C, float> || std::is_same_v<C, double>) {
      const int64_t T = s.tokens, S = s.keys, D = s.head_dim, rows = s.pair_rows();
      const int64_t chunk = chunk_pairs(s, sizeof(C));
      const Tensor scores = Tensor::empty({chunk, rows, S}, dtype, q.device());
      for (int64_t first = 0; first < s.batch * s.kv_heads; first += chunk) {
        const int64_t pairs = std::min(chunk, s.batch * s.kv_heads - first);
        if (D == 0) {
          fill(scores, 0.0);
        } else {
          gemm(dtype, matrices(at<C>(q, first * rows * D), rows, D, rows * D),
               transposed(at<C>(k, first * S * D), D, S, S * D), matrices(scores.raw_data(), rows, S, rows * S), pairs,
               1.0, 0.0, device);
        }
        ScoreParams params = score_params(s, mask, causal, scale);
        params.first_pair = first;
        attention_softmax_kernel<C><<<row_blocks(pairs * rows), row_threads(S), 0, stream_of(q)>>>(
            data_of<C>(scores), data_of<C>(lse), pairs * rows, params);
        LAMINA_CUDA_CHECK_LAUNCH("attention (softmax)");
        if (D > 0 && T > 0) {
          gemm(dtype, matrices(scores.raw_data(), rows, S, rows * S), matrices(at<C>(v, first * S * D), S, D, S * D),
               matrices(at<C>(out, first * rows * D), rows, D, rows * D), pairs, 1.0, 0.0, device);
        }
      }
    } else {
      throw Error("attention: the CUDA kernel takes f32 or f64 (the op casts 16-bit inputs to f32)");
    }
  });
}

void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout_in, const Tensor& q_in,
                        const Tensor& k_in, const Tensor& v_in, const Tensor& out_in, const Tensor& lse_in,
                        const Tensor& mask, bool causal, double scale) {
  const Tensor q = contiguous(q_in), k = contiguous(k_in), v = contiguous(v_in);
  const Tensor out = contiguous(out_in), dout = contiguous(dout_in), lse = contiguous(lse_in);
  const AttentionShape s = shape_of(q, k);
  const int64_t T = s.tokens, S = s.keys, D = s.head_dim, rows = s.pair_rows();
  if (T == 0 || S == 0 || D == 0 || s.batch * s.kv_heads == 0) {  // empty products: zero gradients
    fill(dq, 0.0);
    fill(dk, 0.0);
    fill(dv, 0.0);
    return;
  }
  const int device = q.device().index;
  const DType dtype = q.dtype();
  visit_floating(dtype, "attention_backward", [&](auto tag) {
    using C = device_t<decltype(tag)>;
    if constexpr (std::is_same_v<C, float> || std::is_same_v<C, double>) {
      const int64_t chunk = chunk_pairs(s, sizeof(C));
      const Tensor probs = Tensor::empty({chunk, rows, S}, dtype, q.device());
      const Tensor grad_scores = Tensor::empty({chunk, rows, S}, dtype, q.device());
      for (int64_t first = 0; first < s.batch * s.kv_heads; first += chunk) {
        const int64_t pairs = std::min(chunk, s.batch * s.kv_heads - first);
        const GemmOperand q_op = matrices(at<C>(q, first * rows * D), rows, D, rows * D);
        const GemmOperand do_op = matrices(at<C>(dout, first * rows * D), rows, D, rows * D);
        const GemmOperand p_op = matrices(probs.raw_data(), rows, S, rows * S);
        const GemmOperand ds_op = matrices(grad_scores.raw_data(), rows, S, rows * S);
        ScoreParams params = score_params(s, mask, causal, scale);
        params.first_pair = first;
        // P, recomputed from the scores and the saved lse
        gemm(dtype, q_op, transposed(at<C>(k, first * S * D), D, S, S * D), p_op, pairs, 1.0, 0.0, device);
        attention_probs_kernel<C><<<row_blocks(pairs * rows), row_threads(S), 0, stream_of(q)>>>(
            data_of<C>(probs), data_of<const C>(lse), pairs * rows, params);
        LAMINA_CUDA_CHECK_LAUNCH("attention_backward (probabilities)");
        // dV = P^T dO
        gemm(dtype, transposed(probs.raw_data(), S, rows, rows * S), do_op,
             matrices(at<C>(dv, first * S * D), S, D, S * D), pairs, 1.0, 0.0, device);
        // dP = dO V^T, then dS over it
        gemm(dtype, do_op, transposed(at<C>(v, first * S * D), D, S, S * D), ds_op, pairs, 1.0, 0.0, device);
        attention_grad_scores_kernel<C><<<row_blocks(pairs * rows), row_threads(S), 0, stream_of(q)>>>(
            data_of<C>(grad_scores), data_of<const C>(probs), data_of<const C>(dout), data_of<const C>(out),
            pairs * rows, params);
        LAMINA_CUDA_CHECK_LAUNCH("attention_backward (score gradients)");
        // dQ = dS K;  dK = dS^T Q
        gemm(dtype, ds_op, matrices(at<C>(k, first * S * D), S, D, S * D),
             matrices(at<C>(dq, first * rows * D), rows, D, rows * D), pairs, 1.0, 0.0, device);
        gemm(dtype, transposed(grad_scores.raw_data(), S, rows, rows * S), q_op,
             matrices(at<C>(dk, first * S * D), S, D, S * D), pairs, 1.0, 0.0, device);
      }
    } else {
      throw Error("attention_backward: the CUDA kernel takes f32 or f64 (the op casts 16-bit inputs to f32)");
    }
  });
}

}  // namespace lamina::ops::cuda
