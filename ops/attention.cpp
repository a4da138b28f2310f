// Dense attention: shape checks, dtype handling and mask broadcasting, then the kernels of
// ops/cpu/attention.cpp or ops/cuda/attention.cu.
#include <cmath>

#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

DType compute_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

void check_attention_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  check_floating(op, "q", q);
  check_same_dtype(op, {{"q", &q}, {"k", &k}, {"v", &v}});
  check_dim(op, "q", q, 4);
  check_dim(op, "k", k, 4);
  check_shape(op, "v", v, k.shape());
  LAMINA_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3), op, ": q ", q.shape(), " [B, H, T, D] and k ",
               k.shape(), " [B, Hkv, S, D] disagree on B or D");
  LAMINA_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": query heads (", q.size(1),
               ") must be a multiple of kv heads (", k.size(1), ")");
}

Tensor prepared(const Tensor& t) { return contiguous(t.dtype() == DType::f64 ? t : cast(t, DType::f32)); }

// The forward reads q, k and v in place when each row of D values is contiguous (a KV cache's
// slots, a transposed projection); only other layouts and other dtypes are copied.
Tensor prepared_rows(const Tensor& t) {
  const bool compute_dtype = t.dtype() == DType::f32 || t.dtype() == DType::f64;
  if (compute_dtype && (t.stride(3) == 1 || t.size(3) == 1)) return t;
  return prepared(t);
}

Tensor prepared_mask(const char* op, const AttentionOptions& options, const Tensor& q, const Tensor& k) {
  if (!options.mask.defined()) return Tensor();
  check_floating(op, "mask", options.mask);
  const Tensor mask = options.mask.dtype() == compute_dtype(q.dtype()) ? options.mask
                                                                          : cast(options.mask, compute_dtype(q.dtype()));
  return views::broadcast_to(mask, {q.size(0), q.size(1), q.size(2), k.size(2)}, op);
}

double scale_of(const AttentionOptions& options, const Tensor& q) {
  return options.scale.value_or(1.0 / std::sqrt(double(q.size(3))));
}

}  // namespace

AttentionResult attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionOptions& options) {
  const Device device = check_device("attention", {{"q", &q_in}, {"k", &k_in}, {"v", &v_in}});
  check_attention_inputs("attention", q_in, k_in, v_in);
  const Tensor q = prepared_rows(q_in), k = prepared_rows(k_in), v = prepared_rows(v_in);
  const Tensor mask = prepared_mask("attention", options, q_in, k_in);
  AttentionResult result{Tensor::empty(q.shape(), q.dtype(), device),
                         Tensor::empty({q.size(0), q.size(1), q.size(2)}, q.dtype(), device)};
  LAMINA_DISPATCH(device, attention(result.out, result.lse, q, k, v, mask, options.causal, scale_of(options, q)));
  if (q_in.dtype() != q.dtype()) result.out = cast(result.out, q_in.dtype());
  return result;
}

AttentionGrads attention_backward(const Tensor& grad_out, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                  const Tensor& out_in, const Tensor& lse, const AttentionOptions& options) {
  const Device device = check_device("attention_backward", {{"grad_out", &grad_out}, {"q", &q_in}, {"k", &k_in},
                                                            {"v", &v_in}, {"out", &out_in}, {"lse", &lse}});
  check_attention_inputs("attention_backward", q_in, k_in, v_in);
  check_shape("attention_backward", "grad_out", grad_out, q_in.shape());
  check_shape("attention_backward", "out", out_in, q_in.shape());
  check_shape("attention_backward", "lse", lse, {q_in.size(0), q_in.size(1), q_in.size(2)});
  const Tensor q = prepared(q_in), k = prepared(k_in), v = prepared(v_in);
  const Tensor out = prepared(out_in), dout = prepared(grad_out), lse_c = prepared(lse);
  const Tensor mask = prepared_mask("attention_backward", options, q_in, k_in);
  AttentionGrads grads{Tensor::empty(q.shape(), q.dtype(), device), Tensor::empty(k.shape(), k.dtype(), device),
                       Tensor::empty(v.shape(), v.dtype(), device)};
  LAMINA_DISPATCH(device, attention_backward(grads.dq, grads.dk, grads.dv, dout, q, k, v, out, lse_c, mask,
                                             options.causal, scale_of(options, q)));
  if (q_in.dtype() != q.dtype()) {
    grads = {cast(grads.dq, q_in.dtype()), cast(grads.dk, q_in.dtype()), cast(grads.dv, q_in.dtype())};
  }
  return grads;
}

}  // namespace lamina::ops
