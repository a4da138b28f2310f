// Fused attention with one mask semantics (ops/attention_pattern.h): argument checks, dtype
// handling (bf16/f16 computed in f32, f64 in f64), then the tiled kernel of
// ops/cpu/flash_attention.cpp, or for CUDA tensors its twin in ops/cuda/flash_attention.cu,
// which reads bf16/f16/f32 as they are (f32 inside), writes out and the gradients in the input
// dtype and the lse in f32; f64 on a CUDA device is a clear error.
#include <cmath>

#include "ops/attention_pattern.h"
#include "ops/checks.h"
#include "ops/cpu/flash_attention.h"
#include "ops/ops.h"
#if LAMINA_WITH_CUDA
#include "ops/cuda/kernels.h"
#endif
#include "tensor/view.h"

namespace lamina::ops {
namespace {

DType compute_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

Tensor prepared(const Tensor& t) { return contiguous(t.dtype() == DType::f64 ? t : cast(t, DType::f32)); }

Device check_flash_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                          std::initializer_list<NamedTensor> others) {
  const Device device = check_device(op, others);
  check_floating(op, "q", q);
  LAMINA_CHECK(device.is_cpu() || q.dtype() != DType::f64, op,
               ": the CUDA kernel takes bf16, f16 or f32; f64 runs on the CPU only (move the tensors to the CPU)");
  check_same_dtype(op, {{"q", &q}, {"k", &k}, {"v", &v}});
  check_dim(op, "q", q, 4);
  check_dim(op, "k", k, 4);
  check_shape(op, "v", v, k.shape());
  LAMINA_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3), op, ": q ", q.shape(), " [B, Hq, Tq, D] and k ",
               k.shape(), " [B, Hkv, Tk, D] disagree on B or D");
  LAMINA_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": query heads (", q.size(1),
               ") must be a multiple of kv heads (", k.size(1), ")");
  return device;
}

// The additive mask in the compute dtype on the kernel's device (moved before broadcasting, so
// that only its own elements travel), viewed as [B, Hq, Tq, Tk].
Tensor prepared_mask(const char* op, const AttentionPattern& pattern, const Tensor& q, const Tensor& k,
                     Device device) {
  if (!pattern.additive_mask.defined()) return Tensor();
  check_floating(op, "additive_mask", pattern.additive_mask);
  const DType dtype = compute_dtype(q.dtype());
  Tensor mask = to_device(pattern.additive_mask, device);
  if (mask.dtype() != dtype) mask = cast(mask, dtype);
  return views::broadcast_to(mask, {q.size(0), q.size(1), q.size(2), k.size(2)}, op);
}

double scale_of(std::optional<double> scale, const Tensor& q) { return scale.value_or(1.0 / std::sqrt(double(q.size(3)))); }

}  // namespace

AttentionResult flash_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                const AttentionPattern& pattern, std::optional<double> scale) {
  const char* op = "flash_attention";
  const Device device = check_flash_inputs(op, q_in, k_in, v_in, {{"q", &q_in}, {"k", &k_in}, {"v", &v_in}});
  const ResolvedAttentionPattern resolved(pattern, q_in.size(0), q_in.size(1), q_in.size(2), k_in.size(2), op);
  const Tensor mask = prepared_mask(op, pattern, q_in, k_in, device);
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) {
    AttentionResult result{Tensor::empty(q_in.shape(), q_in.dtype(), device),
                           Tensor::empty({q_in.size(0), q_in.size(1), q_in.size(2)}, DType::f32, device)};
    cuda::flash_attention(result.out, result.lse, contiguous(q_in), contiguous(k_in), contiguous(v_in), pattern,
                          resolved, mask, scale_of(scale, q_in));
    return result;
  }
#endif
  const Tensor q = prepared(q_in), k = prepared(k_in), v = prepared(v_in);
  AttentionResult result{Tensor::empty(q.shape(), q.dtype(), device),
                         Tensor::empty({q.size(0), q.size(1), q.size(2)}, q.dtype(), device)};
  cpu::flash_attention(result.out, result.lse, q, k, v, resolved, mask, scale_of(scale, q));
  if (q_in.dtype() != q.dtype()) result.out = cast(result.out, q_in.dtype());
  return result;
}

AttentionGrads flash_attention_backward(const Tensor& grad_out, const Tensor& q_in, const Tensor& k_in,
                                        const Tensor& v_in, const Tensor& out_in, const Tensor& lse,
                                        const AttentionPattern& pattern, std::optional<double> scale) {
  const char* op = "flash_attention_backward";
  const Device device = check_flash_inputs(
      op, q_in, k_in, v_in,
      {{"grad_out", &grad_out}, {"q", &q_in}, {"k", &k_in}, {"v", &v_in}, {"out", &out_in}, {"lse", &lse}});
  check_shape(op, "grad_out", grad_out, q_in.shape());
  check_shape(op, "out", out_in, q_in.shape());
  check_shape(op, "lse", lse, {q_in.size(0), q_in.size(1), q_in.size(2)});
  const ResolvedAttentionPattern resolved(pattern, q_in.size(0), q_in.size(1), q_in.size(2), k_in.size(2), op);
  const Tensor mask = prepared_mask(op, pattern, q_in, k_in, device);
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) {
    // Everything in q's dtype as the kernel reads it, the lse in f32.
    const DType input = q_in.dtype();
    const auto as_input = [input](const Tensor& t) { return contiguous(t.dtype() == input ? t : cast(t, input)); };
    AttentionGrads grads{Tensor::empty(q_in.shape(), input, device), Tensor::empty(k_in.shape(), input, device),
                         Tensor::empty(v_in.shape(), input, device)};
    cuda::flash_attention_backward(grads.dq, grads.dk, grads.dv, as_input(grad_out), contiguous(q_in),
                                   contiguous(k_in), contiguous(v_in), as_input(out_in),
                                   contiguous(lse.dtype() == DType::f32 ? lse : cast(lse, DType::f32)), pattern,
                                   resolved, mask, scale_of(scale, q_in));
    return grads;
  }
#endif
  const Tensor q = prepared(q_in), k = prepared(k_in), v = prepared(v_in);
  const DType dtype = q.dtype();
  const auto as_compute = [dtype](const Tensor& t) { return contiguous(t.dtype() == dtype ? t : cast(t, dtype)); };
  const Tensor out = as_compute(out_in), dout = as_compute(grad_out), lse_c = as_compute(lse);
  AttentionGrads grads{Tensor::empty(q.shape(), dtype, Device::cpu()), Tensor::empty(k.shape(), dtype, Device::cpu()),
                       Tensor::empty(v.shape(), dtype, Device::cpu())};
  cpu::flash_attention_backward(grads.dq, grads.dk, grads.dv, dout, q, k, v, out, lse_c, resolved, mask,
                                scale_of(scale, q));
  if (q_in.dtype() != dtype) {
    grads = {cast(grads.dq, q_in.dtype()), cast(grads.dk, q_in.dtype()), cast(grads.dv, q_in.dtype())};
  }
  return grads;
}

}  // namespace lamina::ops
