// Softmax family over any dim: the kernels (ops/cpu/softmax.cpp, ops/cuda/softmax.cu) work on
// the last dim of contiguous rows, so other dims are transposed there and back.
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

// Runs `kernel(out, inputs...)` with `dim` moved last and every input made contiguous.
template <typename Kernel>
Tensor along_last_dim(const char* op, int64_t dim, const std::vector<Tensor>& inputs, Kernel kernel) {
  const Tensor& x = inputs[0];
  const int64_t d = normalize_dim(dim, std::max<int64_t>(x.dim(), 1), op);
  const bool moved = x.dim() > 0 && d != x.dim() - 1;
  std::vector<Tensor> rows;
  for (const Tensor& input : inputs) rows.push_back(contiguous(moved ? views::transpose(input, d, -1) : input));
  Tensor out = Tensor::empty(rows[0].shape(), x.dtype(), x.device());
  kernel(out, rows);
  return moved ? contiguous(views::transpose(out, d, -1)) : out;
}

Tensor softmax_forward(const char* op, const Tensor& x, int64_t dim, bool log_space) {
  check_device(op, {{"x", &x}});
  check_floating(op, "x", x);
  return along_last_dim(op, dim, {x}, [&](const Tensor& out, const std::vector<Tensor>& rows) {
    LAMINA_DISPATCH(out.device(), softmax_rows(out, rows[0], log_space));
  });
}

Tensor softmax_backward_impl(const char* op, const Tensor& grad_out, const Tensor& y, int64_t dim, bool log_space) {
  check_device(op, {{"grad_out", &grad_out}, {"y", &y}});
  check_floating(op, "y", y);
  check_same_dtype(op, {{"grad_out", &grad_out}, {"y", &y}});
  check_shape(op, "grad_out", grad_out, y.shape());
  return along_last_dim(op, dim, {grad_out, y}, [&](const Tensor& out, const std::vector<Tensor>& rows) {
    LAMINA_DISPATCH(out.device(), softmax_backward_rows(out, rows[0], rows[1], log_space));
  });
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_forward("softmax", x, dim, false); }

Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_forward("log_softmax", x, dim, true); }

Tensor softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim) {
  return softmax_backward_impl("softmax_backward", grad_out, y, dim, false);
}

Tensor log_softmax_backward(const Tensor& grad_out, const Tensor& y, int64_t dim) {
  return softmax_backward_impl("log_softmax_backward", grad_out, y, dim, true);
}

}  // namespace lamina::ops
