// CPU kernels behind the public ops. Arguments arrive validated: outputs allocated with the
// right shape and dtype, inputs broadcast (for elementwise kernels) and on the CPU.
#pragma once

#include "ops/common/kernel_kinds.h"
#include "ops/ops.h"

namespace lamina::ops::cpu {

// unary.cpp, unary_backward.cpp, binary.cpp, select.cpp, copy.cpp
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
void copy(const Tensor& dst, const Tensor& src);  // any dtype pair
void fill(const Tensor& dst, double value);
void add_scaled_inplace(const Tensor& dst, const Tensor& src, double alpha);

// random.cpp
void uniform(const Tensor& out, double low, double high, uint64_t seed, uint64_t first_counter);
void normal(const Tensor& out, uint64_t seed, uint64_t first_counter);
void randint(const Tensor& out, int64_t low, int64_t high, uint64_t seed, uint64_t first_counter);
void arange(const Tensor& out, int64_t start, int64_t step);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// reduce.cpp: reduce_dim[d] marks the dims to reduce; out is contiguous over the kept dims.
void reduce(ReduceKind kind, const Tensor& out, const Tensor& x, const std::vector<bool>& reduce_dim,
            int64_t correction = 0);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// matmul.cpp: one logical matrix inside a tensor (strides in elements).
struct MatrixSpan {
  void* data = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t row_stride = 0, col_stride = 0;
};
struct GemmTask {
  MatrixSpan a, b, c;       // c = a * b (or c += a * b), c row-major
  bool accumulate = false;
};
// Whether Eigen can map the matrix in place (one of its strides is 1).
bool gemm_compatible(const MatrixSpan& m);
// f32 or f64 products, spread over the threads (bf16 operands: gemm_bf16.h).
void gemm_batch(DType dtype, const std::vector<GemmTask>& tasks);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// softmax.cpp: contiguous rows over the last dim.
void softmax_rows(const Tensor& out, const Tensor& x, bool log_space);
void softmax_backward_rows(const Tensor& grad_in, const Tensor& grad_out, const Tensor& y, bool log_space);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// norm.cpp: contiguous x [rows, D], weight [D], rstd [rows].
void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps);
void rms_norm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                       const Tensor& weight, const Tensor& rstd);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// rope.cpp: x [B, T, H, D] any strides, out contiguous; inverse rotates by -phi.
void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& positions, const std::vector<float>& frequencies,
                 bool inverse);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// swiglu.cpp: same-shape operands; the backward takes contiguous ones.
void swiglu(const Tensor& out, const Tensor& gate, const Tensor& up);
void swiglu_backward(const Tensor& grad_gate, const Tensor& grad_up, const Tensor& grad_out, const Tensor& gate,
                     const Tensor& up);

// embedding.cpp: contiguous weight [V, D] and ids; ids already range-checked.
void embedding(const Tensor& out, const Tensor& weight, const Tensor& ids);
void embedding_backward(const Tensor& grad_weight, const Tensor& grad_out, const Tensor& ids);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// cross_entropy.cpp: contiguous logits [N, V], targets [N] already range-checked;
// losses, lse and grad_losses in f32 (f64 for f64 logits).
void cross_entropy(const Tensor& losses, const Tensor& lse, const Tensor& logits, const Tensor& targets,
                   int64_t ignore_index);
void cross_entropy_backward(const Tensor& grad_logits, const Tensor& grad_losses, const Tensor& logits,
                            const Tensor& targets, const Tensor& lse, int64_t ignore_index);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// attention.cpp: f32 or f64 q [B, H, T, D], k/v [B, Hkv, S, D] (forward: any strides with
// stride(3) == 1; backward: contiguous), out [B, H, T, D] and lse [B, H, T] contiguous; mask
// undefined or a view of the compute dtype broadcast to [B, H, T, S].
void attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor& mask, bool causal, double scale);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& mask,
                        bool causal, double scale);

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// index.cpp: indices already range-checked; index_select/index_add take contiguous data.
void index_select(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index);
void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src);
void gather(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index);
void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src);

// adamw.cpp: contiguous tensors of one shape; state in the compute dtype of param.
// `rounded` (optional, bf16/f16): receives the updated param in its dtype in the same pass.
void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                const AdamWStep& hyper, const Tensor& rounded = Tensor());

}  // namespace lamina::ops::cpu

namespace lamina::ops::cpu {

// logprob.cpp: logits rows at logits.raw_data() + row_offsets[n] with a unit-stride vocabulary;
// contiguous labels and mask [rows]; outputs and grad_logprobs in f32 (f64 for f64 logits);
// grad_logits contiguous [rows, V]. Labels under a false mask are not read.
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

}  // namespace lamina::ops::cpu
