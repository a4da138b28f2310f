// Reductions and their backwards: dim handling and output shapes; kernels in ops/cpu/reduce.cpp
// and ops/cuda/reduce.cu. The backwards are compositions of other ops.
#include <algorithm>

#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

// Which dims to reduce; an empty list means all of them.
std::vector<bool> reduced_dims(const Tensor& x, const Shape& dims, const char* op) {
  std::vector<bool> reduce(static_cast<size_t>(x.dim()), dims.empty());
  for (int64_t dim : dims) {
    const int64_t d = normalize_dim(dim, x.dim(), op);
    LAMINA_CHECK(!reduce[size_t(d)], op, ": dim ", dim, " listed twice in ", dims);
    reduce[size_t(d)] = true;
  }
  return reduce;
}

Shape reduced_shape(const Tensor& x, const std::vector<bool>& reduce, bool keepdim) {
  Shape shape;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (!reduce[size_t(d)]) {
      shape.push_back(x.size(d));
    } else if (keepdim) {
      shape.push_back(1);
    }
  }
  return shape;
}

Tensor run_reduce(ReduceKind kind, const char* op, const Tensor& x, const Shape& dims, bool keepdim,
                  int64_t correction = 0) {
  const Device device = check_device(op, {{"x", &x}});
  // Checked here so that the error names the op, not the shared kernel.
  LAMINA_CHECK(is_floating(x.dtype()) || x.dtype() == DType::i32 || x.dtype() == DType::i64, op,
               ": expected an arithmetic dtype (f32, f64, bf16, f16, i32, i64), got ", dtype_name(x.dtype()));
  const std::vector<bool> reduce = reduced_dims(x, dims, op);
  int64_t reduced_count = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (reduce[size_t(d)]) reduced_count *= x.size(d);
  const bool needs_elements = kind == ReduceKind::max || kind == ReduceKind::min ||
                              kind == ReduceKind::argmax;
  LAMINA_CHECK(!needs_elements || reduced_count > 0, op, ": cannot reduce over zero elements (shape ", x.shape(),
               ", dims ", dims, ")");
  const DType out_dtype = kind == ReduceKind::argmax ? DType::i64 : x.dtype();
  Tensor out = Tensor::empty(reduced_shape(x, reduce, keepdim), out_dtype, device);
  LAMINA_DISPATCH(device, reduce(kind, out, x, reduce, correction));
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const Shape& dims, bool keepdim) {
  return run_reduce(ReduceKind::sum, "sum", x, dims, keepdim);
}

Tensor mean(const Tensor& x, const Shape& dims, bool keepdim) {
  check_defined(x, "mean", "x");
  check_floating("mean", "x", x);
  return run_reduce(ReduceKind::mean, "mean", x, dims, keepdim);
}

Tensor max(const Tensor& x, const Shape& dims, bool keepdim) {
  return run_reduce(ReduceKind::max, "max", x, dims, keepdim);
}

Tensor min(const Tensor& x, const Shape& dims, bool keepdim) {
  return run_reduce(ReduceKind::min, "min", x, dims, keepdim);
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  check_defined(x, "argmax", "x");
  return run_reduce(ReduceKind::argmax, "argmax", x, {dim}, keepdim);
}

Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim) {
  check_defined(x, "logsumexp", "x");
  check_floating("logsumexp", "x", x);
  return run_reduce(ReduceKind::logsumexp, "logsumexp", x, dims, keepdim);
}

Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  check_defined(x, "var", "x");
  check_floating("var", "x", x);
  LAMINA_CHECK(correction >= 0, "var: correction must be non-negative, got ", correction);
  return run_reduce(ReduceKind::var, "var", x, dims, keepdim, correction);
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  check_defined(x, "sum_to", "x");
  if (x.shape() == shape) return x;
  LAMINA_CHECK(int64_t(shape.size()) <= x.dim(), "sum_to: cannot sum shape ", x.shape(), " to ", shape);
  const size_t lead = size_t(x.dim()) - shape.size();
  Shape dims;
  for (size_t d = 0; d < size_t(x.dim()); ++d) {
    if (d < lead) {
      dims.push_back(int64_t(d));
    } else if (shape[d - lead] == 1 && x.size(int64_t(d)) != 1) {
      dims.push_back(int64_t(d));
    } else {
      LAMINA_CHECK(shape[d - lead] == x.size(int64_t(d)), "sum_to: cannot sum shape ", x.shape(), " to ", shape);
    }
  }
  if (dims.empty()) return views::view(x, shape);
  return views::view(sum(x, dims, true), shape);
}

Tensor unsqueeze_reduced(const Tensor& reduced, const Shape& input_shape, const Shape& dims, bool keepdim) {
  if (keepdim) return reduced;
  Shape shape = input_shape;
  if (dims.empty()) {
    std::fill(shape.begin(), shape.end(), 1);
  } else {
    for (int64_t dim : dims) shape[size_t(normalize_dim(dim, int64_t(input_shape.size()), "unsqueeze_reduced"))] = 1;
  }
  return views::view(reduced, shape);
}

Tensor extremum_backward(const Tensor& grad_out, const Tensor& x, const Tensor& out, const Shape& dims,
                         bool keepdim) {
  const Tensor is_extreme = cast(compare(CompareOp::eq, x, unsqueeze_reduced(out, x.shape(), dims, keepdim)),
                                 x.dtype());
  const Tensor ties = sum(is_extreme, dims, true);
  return mul(is_extreme, div(unsqueeze_reduced(grad_out, x.shape(), dims, keepdim), ties));
}

Tensor logsumexp_backward(const Tensor& grad_out, const Tensor& x, const Tensor& out, const Shape& dims,
                          bool keepdim) {
  const Tensor softmax_weights = exp(sub(x, unsqueeze_reduced(out, x.shape(), dims, keepdim)));
  return mul(softmax_weights, unsqueeze_reduced(grad_out, x.shape(), dims, keepdim));
}

Tensor var_backward(const Tensor& grad_out, const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  const int64_t count = x.numel() / std::max<int64_t>(1, mean(x, dims, true).numel());
  const double scale = 2.0 / double(std::max<int64_t>(1, count - correction));
  const Tensor centered = sub(x, mean(x, dims, true));
  return binary(BinaryOp::mul, mul(centered, unsqueeze_reduced(grad_out, x.shape(), dims, keepdim)), scale);
}

}  // namespace lamina::ops
