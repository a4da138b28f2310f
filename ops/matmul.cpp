// matmul and its backward: shape checks, then cuBLASLt on a CUDA device (ops/cuda/matmul.cpp) or,
// on the CPU, batch broadcasting and transposes folded into strides for cpu::gemm_batch
// (ops/cpu/matmul.cpp: f32 on the hand-written GEMM of ops/cpu/gemm_f32* where it wins, Eigen for
// small products and f64; f16 widened to f32) or for the bf16 GEMM (ops/cpu/gemm_bf16.cpp: bf16 operands as
// they are, f32 accumulation, the f32 result rounded once to bf16; on a CPU without AMX or
// AVX-512 BF16, bf16 is widened for Eigen like f16 unless $LAMINA_CPU_GEMM asks for a path).
#include "ops/checks.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

// The logical matrix [rows, cols] at the start of a 2-D view (transposed when asked).
cpu::MatrixSpan span_of(const Tensor& matrix2d, bool transpose) {
  cpu::MatrixSpan span;
  span.data = matrix2d.raw_data();
  span.rows = matrix2d.size(transpose ? 1 : 0);
  span.cols = matrix2d.size(transpose ? 0 : 1);
  span.row_stride = matrix2d.stride(transpose ? 1 : 0);
  span.col_stride = matrix2d.stride(transpose ? 0 : 1);
  return span;
}

// A view whose every 2-D slice Eigen can map; a contiguous copy otherwise.
Tensor mappable(const Tensor& t) {
  if (t.numel() == 0) return t;  // no matrix to map (an empty batch has no first matrix either)
  const Tensor first = views::as_strided(t, {t.size(-2), t.size(-1)}, {t.stride(-2), t.stride(-1)}, t.offset());
  return cpu::gemm_compatible(span_of(first, false)) ? t : contiguous(t);
}

// t [..., R, C] broadcast to [batch..., R, C].
Tensor broadcast_batch(const Tensor& t, const Shape& batch) {
  Shape shape = batch;
  shape.push_back(t.size(-2));
  shape.push_back(t.size(-1));
  return views::broadcast_to(t, shape, "matmul");
}

// t [..., C] as the rows [N, C]: a view of t when its layout allows one, a contiguous copy otherwise.
Tensor as_rows(const Tensor& t) {
  const Shape rows_shape{shape_numel(Shape(t.shape().begin(), t.shape().end() - 1)), t.size(-1)};
  Shape strides;
  if (views::view_strides(t, rows_shape, strides)) return views::as_strided(t, rows_shape, strides, t.offset());
  return views::view(contiguous(t), rows_shape);
}

Tensor matrix_at(const Tensor& t, const Shape& batch_index) {
  Tensor matrix = t;
  for (int64_t index : batch_index) matrix = views::select(matrix, 0, index);
  return matrix;
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in, bool transpose_a, bool transpose_b) {
  const Device device = check_device("matmul", {{"a", &a_in}, {"b", &b_in}});
  check_same_dtype("matmul", {{"a", &a_in}, {"b", &b_in}});
  check_floating("matmul", "a", a_in);
  LAMINA_CHECK(a_in.dim() >= 2 && b_in.dim() >= 2, "matmul: operands need at least 2 dims, got ", a_in.shape(),
               " and ", b_in.shape());
  const int64_t m = a_in.size(transpose_a ? -1 : -2), k = a_in.size(transpose_a ? -2 : -1);
  const int64_t k_b = b_in.size(transpose_b ? -1 : -2), n = b_in.size(transpose_b ? -2 : -1);
  LAMINA_CHECK(k == k_b, "matmul: inner dimensions differ: a ", a_in.shape(), (transpose_a ? " (transposed)" : ""),
               " has ", k, ", b ", b_in.shape(), (transpose_b ? " (transposed)" : ""), " has ", k_b);
  const Shape batch_a(a_in.shape().begin(), a_in.shape().end() - 2);
  const Shape batch_b(b_in.shape().begin(), b_in.shape().end() - 2);
  const Shape batch = broadcast_shapes(batch_a, batch_b, "matmul");
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
#if LAMINA_WITH_CUDA
  // cuBLASLt takes bf16/f16 operands as they are (f32 accumulation) and every layout it can stride.
  if (device.is_cuda()) {
    Tensor out = Tensor::empty(out_shape, a_in.dtype(), device);
    cuda::matmul(out, a_in, b_in, transpose_a, transpose_b);
    return out;
  }
#endif
  const DType dtype = a_in.dtype();
  const bool bf16_kernels = dtype == DType::bf16 && cpu::gemm_bf16_has_fast_path();
  const bool widen = (dtype == DType::bf16 && !bf16_kernels) || dtype == DType::f16;
  Tensor a = widen ? cast(a_in, DType::f32) : a_in;
  Tensor b = widen ? cast(b_in, DType::f32) : b_in;
  const DType compute = widen ? DType::f32 : dtype;  // the bf16 kernels round into a bf16 out themselves
  Tensor out = Tensor::empty(out_shape, compute, device);
  const auto run = [&](const std::vector<cpu::GemmTask>& tasks) {
    if (bf16_kernels) {
      cpu::gemm_bf16_batch(tasks, cpu::GemmBf16Path::automatic, DType::bf16);
    } else {
      cpu::gemm_batch(compute, tasks);
    }
  };
  const auto finish = [&]() { return compute != dtype ? cast(out, dtype) : out; };

  // [..., M, K] x [K, N]: fold the batch into M when a's rows line up as one matrix.
  if (batch_b.empty() && !batch_a.empty() && !transpose_a) {
    Shape rows_strides;
    if (views::view_strides(a, {shape_numel(batch_a) * m, k}, rows_strides)) {
      const Tensor a2 = views::as_strided(a, {shape_numel(batch_a) * m, k}, rows_strides, a.offset());
      const Tensor b2 = mappable(b);
      const Tensor out2 = views::view(out, {shape_numel(batch_a) * m, n});
      run({{span_of(mappable(a2), false), span_of(b2, transpose_b), span_of(out2, false)}});
      return finish();
    }
  }

  a = mappable(broadcast_batch(a, batch));
  b = mappable(broadcast_batch(b, batch));
  std::vector<cpu::GemmTask> tasks;
  const int64_t batch_count = shape_numel(batch);
  tasks.reserve(size_t(batch_count));
  Shape index(batch.size(), 0);
  for (int64_t i = 0; i < batch_count; ++i) {
    tasks.push_back({span_of(matrix_at(a, index), transpose_a), span_of(matrix_at(b, index), transpose_b),
                     span_of(matrix_at(out, index), false)});
    for (size_t d = batch.size(); d-- > 0;) {
      if (++index[d] < batch[d]) break;
      index[d] = 0;
    }
  }
  run(tasks);
  return finish();
}

// out = A B with A = op(a), B = op(b), g = dL/dout:  dA = g B^T, dB = A^T g, then undo op()
// on each side and sum any broadcast batch dims away.
std::pair<Tensor, Tensor> matmul_backward(const Tensor& grad_out, const Tensor& a, const Tensor& b,
                                          bool transpose_a, bool transpose_b) {
  return matmul_backward(grad_out, a, b, a.shape(), b.shape(), transpose_a, transpose_b, true, true);
}

std::pair<Tensor, Tensor> matmul_backward(const Tensor& grad_out, const Tensor& a, const Tensor& b, const Shape& a_shape,
                                          const Shape& b_shape, bool transpose_a, bool transpose_b, bool want_a,
                                          bool want_b) {
  Tensor grad_a, grad_b;
  if (want_a) {
    grad_a = transpose_a ? matmul(b, grad_out, transpose_b, true) : matmul(grad_out, b, false, !transpose_b);
    grad_a = sum_to(grad_a, a_shape);
  }
  if (want_b) {
    if (b_shape.size() == 2 && a.dim() > 2 && !transpose_a) {
      // Shared 2-D weight: one product over all rows instead of a batch of products summed.
      const Tensor a_rows = as_rows(a);
      const Tensor g_rows = as_rows(grad_out);
      grad_b = transpose_b ? matmul(g_rows, a_rows, true, false) : matmul(a_rows, g_rows, true, false);
    } else {
      grad_b = transpose_b ? matmul(grad_out, a, true, transpose_a) : matmul(a, grad_out, !transpose_a, false);
    }
    grad_b = sum_to(grad_b, b_shape);
  }
  return {grad_a, grad_b};
}

}  // namespace lamina::ops
