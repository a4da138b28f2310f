// Tensor's differentiable methods: views and copies record their adjoint on the tape.
//   view/reshape/squeeze/unsqueeze/flatten: reshape the gradient back
//   transpose/permute: the inverse permutation
//   slice/select: the gradient written into zeros of the input's shape
//   expand: sum the broadcast dims away
//   contiguous/clone/to: the identity (cast back for dtype changes)
#include <numeric>

#include "autograd/autograd.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina {
namespace {

using autograd::saved;
using Grads = std::vector<Tensor>;

Tensor record_reshape_like(const char* name, Tensor out, const Tensor& input) {
  autograd::record(name, {&out}, {input}, [shape = input.shape()](const Grads& g) { return Grads{g[0].reshape(shape)}; });
  return out;
}

// A gradient for `input` that is zero except at the view `place_view(zeros)`, which gets g.
template <typename Place>
Tensor record_scatter_into_zeros(const char* name, Tensor out, const Tensor& input, Place place_view) {
  autograd::record(name, {&out}, {input}, [shape = input.shape(), place_view](const Grads& g) {
    Tensor grad = zeros(shape, g[0].dtype(), g[0].device());
    ops::copy_(place_view(grad), g[0]);
    return Grads{grad};
  });
  return out;
}

}  // namespace

Tensor Tensor::view(const Shape& shape) const { return record_reshape_like("view", views::view(*this, shape), *this); }

Tensor Tensor::reshape(const Shape& shape) const {
  const Shape resolved = views::infer_shape(*this, shape, "reshape");
  Shape strides;
  if (views::view_strides(*this, resolved, strides)) return view(resolved);
  return record_reshape_like("reshape", views::view(ops::contiguous(*this), resolved), *this);
}

Tensor Tensor::transpose(int64_t dim0, int64_t dim1) const {
  Tensor out = views::transpose(*this, dim0, dim1);
  autograd::record("transpose", {&out}, {*this}, [dim0, dim1](const Grads& g) { return Grads{g[0].transpose(dim0, dim1)}; });
  return out;
}

Tensor Tensor::permute(const Shape& order) const {
  Tensor out = views::permute(*this, order);
  Shape inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[size_t(normalize_dim(order[i], dim(), "permute"))] = int64_t(i);
  autograd::record("permute", {&out}, {*this}, [inverse](const Grads& g) { return Grads{g[0].permute(inverse)}; });
  return out;
}

Tensor Tensor::slice(int64_t dim, int64_t start, int64_t end, int64_t step) const {
  return record_scatter_into_zeros("slice", views::slice(*this, dim, start, end, step), *this,
                                   [=](const Tensor& grad) { return views::slice(grad, dim, start, end, step); });
}

Tensor Tensor::narrow(int64_t dim, int64_t start, int64_t length) const {
  LAMINA_CHECK(length >= 0 && start >= 0 && start + length <= size(dim), "narrow: [", start, ", ", start + length,
               ") is outside dim ", dim, " of shape ", shape());
  return slice(dim, start, start + length);
}

Tensor Tensor::select(int64_t dim, int64_t index) const {
  return record_scatter_into_zeros("select", views::select(*this, dim, index), *this,
                                   [=](const Tensor& grad) { return views::select(grad, dim, index); });
}

Tensor Tensor::expand(const Shape& shape) const {
  Tensor out = views::expand(*this, shape);
  autograd::record("expand", {&out}, {*this}, [in_shape = this->shape()](const Grads& g) {
    return Grads{ops::sum_to(g[0], in_shape)};
  });
  return out;
}

Tensor Tensor::squeeze(int64_t dim) const { return record_reshape_like("squeeze", views::squeeze(*this, dim), *this); }

Tensor Tensor::unsqueeze(int64_t dim) const {
  return record_reshape_like("unsqueeze", views::unsqueeze(*this, dim), *this);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  const int64_t first = normalize_dim(start_dim, dim(), "flatten");
  const int64_t last = normalize_dim(end_dim, dim(), "flatten");
  LAMINA_CHECK(first <= last, "flatten: start_dim ", start_dim, " is after end_dim ", end_dim);
  Shape shape(this->shape().begin(), this->shape().begin() + first);
  shape.push_back(std::accumulate(this->shape().begin() + first, this->shape().begin() + last + 1, int64_t(1),
                                  std::multiplies<>()));
  shape.insert(shape.end(), this->shape().begin() + last + 1, this->shape().end());
  return reshape(shape);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = ops::clone(*this);
  autograd::record("clone", {&out}, {*this}, [](const Grads& g) { return Grads{g[0]}; });
  return out;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == this->dtype()) return *this;
  Tensor out = ops::cast(*this, dtype);
  if (is_floating(dtype) && is_floating(this->dtype())) {
    autograd::record("cast", {&out}, {*this}, [from = this->dtype()](const Grads& g) { return Grads{ops::cast(g[0], from)}; });
  }
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor out = ops::to_device(*this, device);
  autograd::record("to_device", {&out}, {*this}, [from = this->device()](const Grads& g) {
    return Grads{ops::to_device(g[0], from)};
  });
  return out;
}

// ---- autograd state

bool Tensor::requires_grad() const {
  const auto& meta = autograd_meta();
  return meta != nullptr && (meta->requires_grad || meta->grad_fn != nullptr);
}

const Tensor& Tensor::set_requires_grad(bool requires_grad) const {
  LAMINA_CHECK(is_leaf(), "set_requires_grad: only leaf tensors can be marked (this one was computed by '",
               autograd_meta()->grad_fn->name(), "'); use detach() to make a new leaf");
  LAMINA_CHECK(!requires_grad || is_floating(dtype()), "set_requires_grad: only floating tensors have gradients, got ",
               dtype_name(dtype()));
  if (autograd_meta() == nullptr) set_autograd_meta(std::make_shared<autograd::AutogradMeta>());
  autograd_meta()->requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::grad() const { return autograd_meta() ? autograd_meta()->grad : Tensor(); }

void Tensor::set_grad(const Tensor& grad) const {
  LAMINA_CHECK(!grad.defined() || grad.shape() == shape(), "set_grad: gradient of shape ", grad.shape(),
               " for a tensor of shape ", shape());
  if (autograd_meta() == nullptr) set_autograd_meta(std::make_shared<autograd::AutogradMeta>());
  autograd_meta()->grad = grad;
}

bool Tensor::is_leaf() const { return autograd_meta() == nullptr || autograd_meta()->grad_fn == nullptr; }

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::backward({*this}, {gradient}, retain_graph);
}

void Tensor::retain_grad() const {
  LAMINA_CHECK(requires_grad(), "retain_grad: the tensor does not require grad");
  if (is_leaf() || autograd_meta()->retains_grad) return;
  autograd_meta()->retains_grad = true;
  std::weak_ptr<autograd::AutogradMeta> meta = autograd_meta();
  autograd_meta()->grad_fn->output_hooks[size_t(autograd_meta()->output_nr)].push_back([meta](const Tensor& grad) {
    if (auto alive = meta.lock()) alive->grad = alive->grad.defined() ? ops::add(alive->grad, grad) : ops::clone(grad);
    return Tensor();
  });
}

void Tensor::register_hook(std::function<Tensor(const Tensor&)> hook) const {
  LAMINA_CHECK(requires_grad(), "register_hook: the tensor does not require grad");
  if (is_leaf()) {
    autograd_meta()->hooks.push_back(std::move(hook));
  } else {
    autograd_meta()->grad_fn->output_hooks[size_t(autograd_meta()->output_nr)].push_back(std::move(hook));
  }
}

}  // namespace lamina
