// The op catalogue: every tensor operation lamina has, without autograd.
//
// Each op checks its arguments (shapes, dtypes, devices) and throws a lamina::Error naming
// the op and the offending shapes, then dispatches on the device to ops/cpu/ or ops/cuda/.
// Backward functions sit beside their forward and are plain ops too; autograd/ composes them
// into a tape. No op records on the tape, whatever grad mode is and whatever its inputs
// require: inside, views are the raw ones of tensor/view.h, never Tensor's view methods
// (tests/autograd/test_ops_record_nothing.cpp holds every op family to that).
// Outputs are fresh contiguous tensors unless the name ends in `_` (in place), or the op says
// it may return its input or views of it (contiguous, to_device, sum_to, split).
//
// Shapes in comments: x: [B, T, C] means any leading dims are allowed where written "...".
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace lamina {

// ---- creation (leaves)
Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
Tensor zeros_like(const Tensor& t);
Tensor arange(int64_t start, int64_t end, int64_t step = 1, DType dtype = DType::i64,
              Device device = Device::cpu());
// Uniform in [low, high), reproducible from (seed, offset) on any thread count or device.
Tensor uniform(const Shape& shape, double low, double high, Generator& generator,
               DType dtype = DType::f32, Device device = Device::cpu());
Tensor randn(const Shape& shape, Generator& generator, DType dtype = DType::f32,
             Device device = Device::cpu());  // standard normal (Box-Muller, computed in f64)
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& generator,
               DType dtype = DType::i64, Device device = Device::cpu());  // [low, high)

// ---- option types shared by the raw ops and the differentiable functions
// RoPE frequency settings; llama3_scaling is Llama 3.1+'s "rope_type": "llama3".
struct Llama3RopeScaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};
struct RopeConfig {
  int64_t head_dim = 128;
  double theta = 500000.0;
  std::optional<Llama3RopeScaling> llama3_scaling;  // Llama 3.1+ "rope_type": "llama3"
};
// Dense attention settings (see ops::attention).
struct AttentionOptions {
  bool causal = true;
  std::optional<double> scale;  // default 1 / sqrt(D)
  Tensor mask;
};

}  // namespace lamina

namespace lamina::ops {

// ---- copy and cast
Tensor cast(const Tensor& x, DType dtype);         // always a new tensor
Tensor contiguous(const Tensor& x);                // x itself when already contiguous
Tensor clone(const Tensor& x);                     // a contiguous copy
Tensor to_device(const Tensor& x, Device device);  // x itself when already there
void copy_(const Tensor& dst, const Tensor& src);  // src broadcast and cast into dst
void fill_(const Tensor& dst, double value);
// Inverted-dropout multipliers: 1/keep_prob with probability keep_prob, else 0. The same mask on
// every device for the same generator state (drawn from `uniform`'s stream).
Tensor dropout_mask(const Shape& shape, double keep_prob, Generator& generator, DType dtype = DType::f32,
                    Device device = Device::cpu());

// ---- elementwise (broadcasting, any strides)
enum class UnaryOp {
  neg, exp, log, sqrt, rsqrt, abs, square, reciprocal,
  sigmoid, silu, tanh, relu, gelu, softplus, log_sigmoid,
};
const char* unary_op_name(UnaryOp op);
Tensor unary(UnaryOp op, const Tensor& x);
// d(op)/dx applied to grad_out; `out` is op(x) (some rules are cheaper from the output).
Tensor unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& out);

enum class BinaryOp { add, sub, mul, div, pow, maximum, minimum };
const char* binary_op_name(BinaryOp op);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);  // same dtype, broadcast shapes
Tensor binary(BinaryOp op, const Tensor& a, double b);          // b kept in compute precision
Tensor binary(BinaryOp op, double a, const Tensor& b);
// Gradients of `out = op(a, b)` summed back to the shapes of a and b.
std::pair<Tensor, Tensor> binary_backward(BinaryOp op, const Tensor& grad_out, const Tensor& a,
                                          const Tensor& b, const Tensor& out);
void add_(const Tensor& dst, const Tensor& src, double alpha = 1.0);  // dst += alpha * src
void mul_(const Tensor& dst, double factor);                          // dst *= factor

enum class CompareOp { eq, ne, lt, le, gt, ge };
Tensor compare(CompareOp op, const Tensor& a, const Tensor& b);  // -> bool
Tensor compare(CompareOp op, const Tensor& a, double b);
Tensor logical_not(const Tensor& x);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b);  // condition: bool
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);    // mask: bool
Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high);
// Gradient passes where low <= x <= high.
Tensor clamp_backward(const Tensor& grad_out, const Tensor& x, std::optional<double> low,
                      std::optional<double> high);

inline Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::add, a, b); }
inline Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::sub, a, b); }
inline Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::mul, a, b); }
inline Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::div, a, b); }
inline Tensor neg(const Tensor& x) { return unary(UnaryOp::neg, x); }
inline Tensor exp(const Tensor& x) { return unary(UnaryOp::exp, x); }
inline Tensor log(const Tensor& x) { return unary(UnaryOp::log, x); }

// ---- reductions (dims may be negative; an empty list reduces over every dim)
Tensor sum(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor max(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor min(const Tensor& x, const Shape& dims = {}, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // -> i64, first maximum
Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim = false);
// Variance with `correction` subtracted from the count (1 = unbiased, as torch.var).
Tensor var(const Tensor& x, const Shape& dims, int64_t correction = 1, bool keepdim = false);
// Sums the broadcast dims of x away so that the result has `shape` (the broadcast adjoint).
Tensor sum_to(const Tensor& x, const Shape& shape);
// Gradient of max/min over `dims`: grad_out split evenly between the tied extreme elements.
Tensor extremum_backward(const Tensor& grad_out, const Tensor& x, const Tensor& out, const Shape& dims,
                         bool keepdim);
Tensor logsumexp_backward(const Tensor& grad_out, const Tensor& x, const Tensor& out, const Shape& dims,
                          bool keepdim);
Tensor var_backward(const Tensor& grad_out, const Tensor& x, const Shape& dims, int64_t correction,
                    bool keepdim);
// Re-inserts reduced dims as size 1 so a reduction's output broadcasts against its input.
Tensor unsqueeze_reduced(const Tensor& reduced, const Shape& input_shape, const Shape& dims, bool keepdim);

// ---- matmul: a [..., M, K] (or [..., K, M] with transpose_a), b [..., K, N] (or [..., N, K])
// -> [..., M, N]; batch dims broadcast. f32 and f64 on Eigen; bf16/f16 computed in f32.
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false);
std::pair<Tensor, Tensor> matmul_backward(const Tensor& grad_out, const Tensor& a, const Tensor& b,
                                          bool transpose_a, bool transpose_b);
// Only the wanted gradients (the other is left undefined): dA needs b, dB needs a, so the operand
// only an unwanted gradient reads may be undefined; the shapes give the sums back to each operand.
// A frozen weight (LoRA's base) costs no dW product this way.
std::pair<Tensor, Tensor> matmul_backward(const Tensor& grad_out, const Tensor& a, const Tensor& b, const Shape& a_shape,
                                          const Shape& b_shape, bool transpose_a, bool transpose_b, bool want_a,
                                          bool want_b);

// ---- softmax family, over one dim
Tensor softmax(const Tensor& x, int64_t dim);
Tensor softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim);  // y = softmax(x)
Tensor log_softmax(const Tensor& x, int64_t dim);
Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim);  // y = log_softmax(x)

// ---- embedding: weight [V, D], ids [...] (i32/i64) -> [..., D]
Tensor embedding(const Tensor& weight, const Tensor& ids);
Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t num_embeddings);  // -> [V, D]

// ---- RMSNorm: x [..., D], weight [D] -> y [..., D]; rstd [...] (f32, or f64 for f64 input)
struct RmsNormResult {
  Tensor y;
  Tensor rstd;  // 1 / sqrt(mean(x^2) + eps) per row, saved for backward
};
RmsNormResult rms_norm(const Tensor& x, const Tensor& weight, double eps);
struct RmsNormGrads {
  Tensor dx;
  Tensor dweight;
};
RmsNormGrads rms_norm_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight,
                               const Tensor& rstd);

// ---- RoPE (Hugging Face rotate-half pairs (i, i + D/2)): x [B, T, H, D], positions [T] or [B, T]
// The D/2 rotation frequencies in f32, as both reference implementations compute them.
std::vector<float> rope_frequencies(const RopeConfig& config);
Tensor rope(const Tensor& x, const Tensor& positions, const RopeConfig& config);
Tensor rope_backward(const Tensor& grad_out, const Tensor& positions, const RopeConfig& config);

// ---- SwiGLU: silu(gate) * up, gate/up [..., F]
Tensor swiglu(const Tensor& gate, const Tensor& up);
std::pair<Tensor, Tensor> swiglu_backward(const Tensor& grad_out, const Tensor& gate, const Tensor& up);

// ---- cross-entropy over the last dim: logits [..., V], targets [...] (i32/i64)
struct CrossEntropyResult {
  Tensor losses;  // [...] per token; 0 where the target is ignore_index
  Tensor lse;     // [...] logsumexp of each row, saved for backward
  int64_t target_count = 0;  // tokens whose target is not ignore_index
  // linear_cross_entropy with keep_logits only: each vocabulary chunk's logits [R, chunk] over the
  // rows that have a target, for its backward to use instead of recomputing them.
  std::vector<Tensor> logit_chunks;
};
CrossEntropyResult cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);
// grad_losses [...]: the upstream gradient of each token's loss.
Tensor cross_entropy_backward(const Tensor& grad_losses, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t ignore_index = -100);

// ---- dense attention (the reference the fused kernels are tested against)
// q [B, H, T, D], k and v [B, Hkv, S, D] with H a multiple of Hkv (query head h reads kv head
// h / (H / Hkv)). Causal: query t sits at absolute position S - T + t and sees keys up to it.
// mask: optional additive mask broadcastable to [B, H, T, S] (use -inf to hide a key).
struct AttentionResult {
  Tensor out;  // [B, H, T, D]
  Tensor lse;  // [B, H, T] logsumexp of the scaled, masked scores (f32; f64 for f64 input)
};
AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options);
struct AttentionGrads {
  Tensor dq, dk, dv;
};
AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const AttentionOptions& options);

// ---- indexing and joining
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
std::vector<Tensor> split(const Tensor& x, const Shape& sizes, int64_t dim);  // views
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);      // index: 1-D
// Adds src into a zero tensor of `shape` at rows `index` of `dim` (index_select's adjoint).
Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& src);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);  // out[i][j] = x[i][index[i][j]] for dim 1
// out = base with src added at the positions named by index along dim (gather's adjoint).
Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src);
Tensor one_hot(const Tensor& index, int64_t num_classes, DType dtype = DType::f32);

// ---- optimizer: AdamW with decoupled weight decay and bias correction, in place.
// param f32/f64/bf16, grad any float dtype of the same shape, state in f32 (f64 for f64 params).
struct AdamWStep {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  int64_t step = 1;  // 1-based, after incrementing
};
// `rounded` (optional; bf16/f16, contiguous, param's shape): also receives the updated param
// rounded to its dtype, in the same pass (mixed precision: the weights a step's products read are
// written where the f32 master is, instead of a second pass over the master).
void adamw_step_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWStep& hyper, const Tensor& rounded = Tensor());

}  // namespace lamina::ops

namespace lamina::ops {

// ---- per-token log-probs: the fused log-softmax + gather of the preference losses
// logits [..., V] (any floating dtype), labels [...] (i32/i64), mask [...] (bool) -> logprobs [...]:
// log softmax(logits / temperature)[label] where mask is true, 0 where it is false. Computed in
// f32 (f64 for f64 logits) one row at a time: no [..., V] temporary, and a row-strided view
// (the shifted logits[:, :-1]) is read in place. Labels under a false mask are never read.
struct TokenLogprobsResult {
  Tensor logprobs;  // [...] f32 (f64 for f64 logits)
  Tensor lse;       // [...] logsumexp of logits / temperature per row, saved for backward (0 if masked)
};
TokenLogprobsResult token_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask,
                                   double temperature = 1.0);
// -> the gradient for logits [..., V] (logits' dtype, contiguous); rows under a false mask are 0.
Tensor token_logprobs_backward(const Tensor& grad_logprobs, const Tensor& logits, const Tensor& labels,
                               const Tensor& mask, const Tensor& lse, double temperature);
// Statistics of p = softmax(logits / temperature) per kept token, for metrics and WPO weights
// (no gradient); 0 / false under a false mask.
struct TokenDistributionStats {
  Tensor entropy;           // [...] -sum_v p log p
  Tensor logit_mean;        // [...] mean over the vocabulary of the raw logits
  Tensor log_sum_sq_probs;  // [...] log sum_v p^2
  Tensor argmax_matches;    // [...] bool: the first argmax of the logits is the label
};
TokenDistributionStats token_distribution_stats(const Tensor& logits, const Tensor& labels, const Tensor& mask,
                                                double temperature = 1.0);
// log(1 - exp(x)) for x <= 0, accurate near 0 and for very negative x (NaN for x > 0).
Tensor log1mexp(const Tensor& x);
Tensor log1mexp_backward(const Tensor& grad_out, const Tensor& x);  // grad_out * -1 / expm1(-x)

}  // namespace lamina::ops

// ---- fused attention (FlashAttention-2 style) with one mask semantics: ops/attention_pattern.h
#include "ops/attention_pattern.h"

namespace lamina::ops {

// q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D] (Hq a multiple of Hkv: GQA/MQA) -> out [B, Hq, Tq, D]
// and lse [B, Hq, Tq] (f32; f64 for f64 input), the keys each query sees given by `pattern`;
// scale defaults to 1 / sqrt(D). Tiled with an online softmax: no Tq x Tk buffer is ever
// allocated (the largest is a transposed copy of k, or of k and v in the backward), tiles the
// pattern leaves empty are skipped, and a query that sees no key gets out 0 and lse -inf.
// bf16/f16 are computed in f32. CPU and CUDA kernels (the CUDA one written and compiled, not yet
// run on a GPU: docs/gpu-status.md).
AttentionResult flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern,
                                std::optional<double> scale = std::nullopt);
// dq, dk, dv (dk/dv summed over each kv head's query heads), recomputing the scores tile by tile
// from q, k and the saved lse.
AttentionGrads flash_attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& out, const Tensor& lse, const AttentionPattern& pattern,
                                        std::optional<double> scale = std::nullopt);

// One run of keys along the key axis for cached_attention: keys and values [B, Hkv, S, D] (rows
// of D contiguous values; other strides free), positions integers [S] or [Hkv, S]: each key's
// absolute position, -1 for an empty slot (never attended; the cache keeps such slots finite).
struct PositionedKeys {
  Tensor keys, values, positions;
};
// Attention over keys that carry their own positions (the ring-buffer KV caches of sparse plans,
// models/llama/sparse_kv_cache.h): q [B, Hq, T, D], query row t at absolute position
// pattern.query_offset + t (which must be set), attends over the keys of every run (taken end to
// end, in any order of positions) with ops/attention_pattern.h's predicate on the positions:
// causality, per-head sinks and windows (no documents, layout or additive mask); query head h
// reads KV head h / (Hq / Hkv). -> out [B, Hq, T, D] in q's dtype, lse [B, Hq, T] (f32; f64 for
// f64). A query that sees no key gets out 0 and lse -inf. Forward only (inference); q, keys and
// values of one dtype, bf16/f16 computed in f32. The keys are split into chunks run on different
// threads whose partial results are merged (flash-decoding), and a KV group's query heads share
// each key row read. On CUDA (ops/cuda/cached_attention.cu: written, not yet run on a GPU) the
// positions may be CPU tensors while q and the keys are on the device; f64 is CPU only.
AttentionResult cached_attention(const Tensor& q, const std::vector<PositionedKeys>& runs,
                                 const AttentionPattern& pattern, std::optional<double> scale = std::nullopt);

}  // namespace lamina::ops

namespace lamina::ops {

// ---- fused LM head + cross-entropy (ops/linear_cross_entropy.cpp): hidden [..., d], weight [V, d]
// (the head, as nn::Linear holds it), targets [...] (i32/i64) -> the CrossEntropyResult of
// cross_entropy(matmul(hidden, weight^T), targets) without the [..., V] logits: the GEMM runs over
// chunks of `chunk_size` vocabulary rows (0 = automatic, about 2^21 logits at once) with an online
// log-sum-exp across them, only over the rows that have a target. bf16/f16 chunks are rounded like
// matmul's output, statistics and losses are f32 (f64 for f64). lse is 0 on ignored rows. CPU only.
// keep_logits: the result also holds every chunk's logits (logit_chunks: R x V values in the
// inputs' dtype), so that the backward skips its recomputing GEMM: worth it when they are small.
CrossEntropyResult linear_cross_entropy(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                        int64_t ignore_index = -100, int64_t chunk_size = 0, bool keep_logits = false);
struct LinearCrossEntropyGrads {
  Tensor grad_hidden;  // [..., d] in hidden's dtype; undefined unless wanted
  Tensor grad_weight;  // [V, d] in weight's dtype; undefined unless wanted
};
// grad_losses [...]: the upstream gradient of each token's loss; lse from the forward. Each chunk's
// logits are recomputed (or taken from logit_chunks, the forward's with the same chunk_size: they
// are overwritten, so pass them once), turned into g (softmax - onehot) in place and multiplied
// into dH (summed in f32) and its own rows of dW; a gradient not wanted costs no GEMM. The same
// bits either way: the recomputed logits are the forward's GEMM again.
LinearCrossEntropyGrads linear_cross_entropy_backward(const Tensor& grad_losses, const Tensor& hidden,
                                                      const Tensor& weight, const Tensor& targets, const Tensor& lse,
                                                      int64_t ignore_index = -100, bool want_hidden = true,
                                                      bool want_weight = true, int64_t chunk_size = 0,
                                                      std::vector<Tensor> logit_chunks = {});

}  // namespace lamina::ops
