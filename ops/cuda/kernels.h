// CUDA kernels behind the public ops: the same functions, arguments and contracts as
// ops/cpu/kernels.h (their oracles), on tensors of one CUDA device. Each file under ops/cuda/
// mirrors the CPU file of the same family. Work is queued on the device's stream and returns
// at once; allocations go through the caching allocator (Tensor::empty).
//
// Built only with the CUDA backend; the public ops reach these through LAMINA_DISPATCH
// (ops/checks.h), which names them only when LAMINA_WITH_CUDA is set. No CUDA types here
// (ops/*.cpp include it in every build), and C++17 (the .cu files include it too).
#pragma once

#include <vector>

#include "ops/common/kernel_kinds.h"
#include "ops/ops.h"

namespace lamina::ops::cpu {
struct KeyRunView;  // ops/cpu/cached_attention.h: one run of positioned keys, positions on the host
}  // namespace lamina::ops::cpu

namespace lamina::ops::cuda {

// elementwise.cu (copy, fill and casts live there too, as on the CPU)
void unary(UnaryOp op, const Tensor& out, const Tensor& x);
void unary_backward(UnaryOp op, const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, const Tensor& out);
void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b);
void binary_scalar(BinaryOp op, const Tensor& out, const Tensor& a, double b);
void scalar_binary(BinaryOp op, const Tensor& out, double a, const Tensor& b);
void compare(CompareOp op, const Tensor& out, const Tensor& a, const Tensor& b);
void logical(LogicalOp op, const Tensor& out, const Tensor& a, const Tensor& b);
void where(const Tensor& out, const Tensor& condition, const Tensor& a, const Tensor& b);
void masked_fill(const Tensor& out, const Tensor& x, const Tensor& mask, double value);
void clamp(const Tensor& out, const Tensor& x, double low, double high);
void clamp_backward(const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, double low, double high);
void copy(const Tensor& dst, const Tensor& src);  // any dtype pair, any strides, one device
void fill(const Tensor& dst, double value);
void add_scaled_inplace(const Tensor& dst, const Tensor& src, double alpha);

// transfer.cpp: x copied to `device` (contiguous), across host and devices.
Tensor to_device(const Tensor& x, Device device);

// random.cu: the Philox streams of tensor/rng.h, value for value (normal: Box-Muller in f64).
void uniform(const Tensor& out, double low, double high, uint64_t seed, uint64_t first_counter);
void normal(const Tensor& out, uint64_t seed, uint64_t first_counter);
void randint(const Tensor& out, int64_t low, int64_t high, uint64_t seed, uint64_t first_counter);
void arange(const Tensor& out, int64_t start, int64_t step);

// reduce.cu
void reduce(ReduceKind kind, const Tensor& out, const Tensor& x, const std::vector<bool>& reduce_dim,
            int64_t correction = 0);

// matmul.cpp: out [..., M, N] (allocated by the checked public op, a's dtype) = op(a) op(b):
// batch broadcasting, transposes folded into cuBLASLt's operand layouts, bf16/f16 in and out
// with f32 accumulation, f32, f64.
void matmul(const Tensor& out, const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b);

// softmax.cu: contiguous rows over the last dim.
void softmax_rows(const Tensor& out, const Tensor& x, bool log_space);
void softmax_backward_rows(const Tensor& grad_in, const Tensor& grad_out, const Tensor& y, bool log_space);

// norm.cu: contiguous x [rows, D], weight [D], rstd [rows].
void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps);
void rms_norm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x, const Tensor& weight,
                       const Tensor& rstd);

// rope.cu: x [B, T, H, D] any strides, out contiguous; inverse rotates by -phi.
void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& positions, const std::vector<float>& frequencies,
                 bool inverse);

// swiglu.cu: same-shape operands; the backward takes contiguous ones.
void swiglu(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& grad_gate, const Tensor& grad_up, const Tensor& grad_out, const Tensor& gate,
                     const Tensor& up);

// embedding.cu: contiguous weight [V, D] and ids; ids already range-checked.
void embedding(const Tensor& out, const Tensor& weight, const Tensor& ids);
void embedding_backward(const Tensor& grad_weight, const Tensor& grad_out, const Tensor& ids);

// cross_entropy.cu: contiguous logits [N, V], targets [N] already range-checked; losses, lse and
// grad_losses in f32 (f64 for f64 logits). The vocabulary is split into chunks across blocks.
void cross_entropy(const Tensor& losses, const Tensor& lse, const Tensor& logits, const Tensor& targets,
                   int64_t ignore_index);
void cross_entropy_backward(const Tensor& grad_logits, const Tensor& grad_losses, const Tensor& logits,
                            const Tensor& targets, const Tensor& lse, int64_t ignore_index);

// logprob.cu: as ops/cpu/kernels.h's logprob.cpp: logits rows at logits.raw_data() +
// row_offsets[n] with a unit-stride vocabulary (the offsets are copied to the device), contiguous
// labels and mask [rows], kept labels already range-checked, outputs and grad_logprobs in f32
// (f64 for f64 logits), grad_logits contiguous [rows, V]. Chunked over the vocabulary like
// cross_entropy.cu; log1mexp and its backward are elementwise maps (any strides).
void token_logprobs(const Tensor& logprobs, const Tensor& lse, const Tensor& logits,
                    const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                    double temperature);
void token_logprobs_backward(const Tensor& grad_logits, const Tensor& grad_logprobs, const Tensor& logits,
                             const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                             const Tensor& lse, double temperature);
void token_distribution_stats(const TokenDistributionStats& stats, const Tensor& logits,
                              const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                              double temperature);
void log1mexp(const Tensor& out, const Tensor& x);
void log1mexp_backward(const Tensor& grad_in, const Tensor& grad_out, const Tensor& x);

// attention.cu: f32 or f64 q [B, H, T, D], k/v [B, Hkv, S, D] (copied contiguous when they are
// not); mask undefined or a view of the compute dtype broadcast to [B, H, T, S]. Scores through
// cuBLASLt, softmax here.
void attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor& mask, bool causal, double scale);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& mask,
                        bool causal, double scale);

// flash_attention.cu: the fused attention (ops/cpu/flash_attention.h's contract) for bf16, f16
// and f32: q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D] contiguous of one dtype, D <= 128; out in
// that dtype, lse (and the backward's lse) f32 [B, Hq, Tq]; mask undefined or an f32 view on the
// device broadcast to [B, Hq, Tq, Tk]. `pattern` is the one `resolved` was made from (its
// document ids and layout are copied to the device); tiles are classified on the host by
// resolved.classify. dq, dk, dv contiguous in the input dtype; deterministic (no atomics).
void flash_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const AttentionPattern& pattern, const ResolvedAttentionPattern& resolved, const Tensor& mask,
                     double scale);
void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                              const AttentionPattern& pattern, const ResolvedAttentionPattern& resolved,
                              const Tensor& mask, double scale);

// cached_attention.cu: ops::cached_attention (ops/cpu/cached_attention.h's contract) for bf16,
// f16 and f32: q [B, Hq, T, D] contiguous, D <= 128; every run's keys and values on q's device
// with rows of D contiguous values (other strides free); positions are host arrays (already
// validated), copied to the device with the per-head sinks and windows on every call. out
// contiguous in q's dtype, lse f32 [B, Hq, T]. Split over the keys in pieces merged in a fixed
// order (deterministic, no atomics); f32 inside.
void cached_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const std::vector<cpu::KeyRunView>& runs,
                      const ResolvedAttentionPattern& pattern, double scale);

// index.cu: indices already range-checked; index_select/index_add take contiguous data.
void index_select(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index);
void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src);
void gather(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index);
void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src);

// adamw.cu: contiguous tensors of one shape; state in the compute dtype of param.
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStep& hyper);

}  // namespace lamina::ops::cuda
