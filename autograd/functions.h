// The differentiable functions: the ops of ops/ops.h plus a tape entry each. This is the
// catalogue model code uses; every entry's backward rule sits beside it in autograd/functions/.
// (Tensor's view and copy methods are differentiable too: autograd/tensor_methods.cpp.)
#pragma once

#include <optional>
#include <vector>

#include "ops/ops.h"

namespace lamina {

// ---- elementwise
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);
Tensor softplus(const Tensor& x);
Tensor log_sigmoid(const Tensor& x);

Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor sub(const Tensor& a, double b);
Tensor sub(double a, const Tensor& b);
Tensor mul(const Tensor& a, double b);
Tensor div(const Tensor& a, double b);
Tensor div(double a, const Tensor& b);
Tensor pow(const Tensor& a, double exponent);

Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);
Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return div(a, b); }
inline Tensor operator+(double a, const Tensor& b) { return add(b, a); }
inline Tensor operator-(double a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
inline Tensor operator/(double a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& x) { return neg(x); }

// ---- reductions (an empty dims list reduces everything)
Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor max(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor min(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim = false);
Tensor var(const Tensor& x, const Shape& dims, int64_t correction = 1, bool keepdim = false);

// ---- products
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false);

// ---- neural-network primitives
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
Tensor embedding(const Tensor& weight, const Tensor& ids);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);
Tensor rope(const Tensor& x, const Tensor& positions, const RopeConfig& config);
Tensor swiglu(const Tensor& gate, const Tensor& up);
// Inverted dropout: zeroes with probability p, scales the rest by 1 / (1 - p).
Tensor dropout(const Tensor& x, double p, Generator& generator);
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options = {});

enum class Reduction { none, sum, mean };
// Token cross-entropy; `mean` divides by the number of non-ignored targets (0 when there are none).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, Reduction reduction = Reduction::mean,
                     int64_t ignore_index = -100);
struct CrossEntropySum {
  Tensor loss_sum;           // scalar: the summed token losses
  int64_t target_count = 0;  // how many targets were not ignore_index
};
// For gradient accumulation: sum the losses, divide once by the total count of all micro-batches.
CrossEntropySum cross_entropy_sum(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);

// ---- joining and indexing
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const Shape& sizes, int64_t dim);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);

}  // namespace lamina

namespace lamina {

// ---- log-prob primitives of the preference losses (autograd/functions/logprob.cpp)
// Per-token log softmax(logits / temperature)[label] where mask (bool) is true, 0 elsewhere;
// fused, never materialising a [..., V] log-softmax (see ops::token_logprobs).
Tensor token_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask, double temperature = 1.0);
// log(1 - exp(x)) for x <= 0, stable at both ends (ORPO's log-odds).
Tensor log1mexp(const Tensor& x);

}  // namespace lamina

namespace lamina {

// Fused attention under an AttentionPattern (ops::flash_attention); the node saves q, k, v, out
// and the lse, never the probabilities, and its backward is ops::flash_attention_backward.
Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern = {},
                       std::optional<double> scale = std::nullopt);

}  // namespace lamina

namespace lamina {

// The LM head and the token cross-entropy in one fused op (ops::linear_cross_entropy): hidden
// [..., d], weight [V, d] -> the summed token losses of matmul(hidden, weight^T) and the target
// count, as cross_entropy_sum gives, never holding the [..., V] logits or their gradient. The
// node saves hidden, weight and the per-row lse, and its backward recomputes the logits chunk by
// chunk; either input may not require grad (no GEMM for its gradient). chunk_size 0 = automatic.
CrossEntropySum linear_cross_entropy_sum(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                         int64_t ignore_index = -100, int64_t chunk_size = 0);

}  // namespace lamina
