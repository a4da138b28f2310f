// Tensor: a cheap handle to a strided view of shared storage.
//
//   storage  - the bytes, shared by every view of them
//   shape    - sizes per dim
//   strides  - elements (not bytes) to step in storage per index of each dim
//   offset   - elements from the start of storage to element [0, 0, ...]
//
// Copying a Tensor copies the handle, never the data: copies share one TensorImpl, so
// marking one copy requires_grad (or setting its grad) is seen through every copy. A view
// is a new TensorImpl over the same storage. The view methods (view, reshape,
// transpose, permute, slice, select, expand, squeeze, unsqueeze, flatten) share storage and
// are differentiable: they are declared here and recorded on the tape by autograd/, which is
// why their definitions live in autograd/tensor_methods.cpp. The raw, tape-free versions are
// in tensor/view.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/shape.h"
#include "tensor/storage.h"

namespace lamina {

namespace autograd {
struct AutogradMeta;
}

// The state behind a handle. Layout fields change only through Tensor::set_data.
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;
  DType dtype = DType::f32;
  std::shared_ptr<autograd::AutogradMeta> autograd;
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: no storage, defined() is false
  Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype);

  // Uninitialised contiguous memory.
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  // A CPU tensor holding a copy of `values`, converted to `dtype`.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, DType dtype = dtype_of<T>());
  static Tensor scalar(double value, DType dtype = DType::f32);

  // ---- metadata
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return int64_t(shape().size()); }
  int64_t size(int64_t dim) const;    // negative dims count from the end
  int64_t stride(int64_t dim) const;
  int64_t offset() const { return impl().offset; }
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const { return impl().dtype; }
  Device device() const;
  size_t element_size() const { return dtype_size(dtype()); }
  size_t nbytes() const { return size_t(numel()) * element_size(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  // True when both handles are copies of one tensor (one TensorImpl).
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }
  // True when both view the same elements of the same storage the same way.
  bool is_alias_of(const Tensor& other) const;

  // Points every copy of this handle at `source`'s data (storage, shape, strides, dtype),
  // keeping this tensor's autograd state: how a module's parameter is loaded or replaced.
  void set_data(const Tensor& source) const;

  // ---- raw element access (the address is a device address for CUDA tensors)
  void* raw_data() const;  // address of element [0, 0, ...]
  template <typename T>
  T* data() const {
    LAMINA_CHECK(dtype_of<T>() == dtype(), "Tensor::data<", dtype_name(dtype_of<T>()),
                 ">: tensor has dtype ", dtype_name(dtype()));
    return static_cast<T*>(raw_data());
  }
  // Every element, in row-major order, converted to T (any layout, any device: CUDA tensors are
  // copied to the host first, which waits for the device).
  template <typename T>
  std::vector<T> to_vector() const;
  // The single element of a one-element tensor, converted to T.
  template <typename T>
  T item() const;

  // ---- views: differentiable, zero-copy (see autograd/tensor_methods.cpp)
  Tensor view(const Shape& shape) const;     // one -1 size is inferred; throws if strides forbid
  Tensor reshape(const Shape& shape) const;  // a view when possible, a contiguous copy otherwise
  Tensor transpose(int64_t dim0, int64_t dim1) const;
  Tensor permute(const Shape& order) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;  // [start, end)
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;  // drops `dim`
  Tensor expand(const Shape& shape) const;          // size-1 dims broadcast; -1 keeps a size
  Tensor squeeze(int64_t dim) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;

  // ---- copies: differentiable
  Tensor contiguous() const;  // itself when already contiguous
  Tensor clone() const;
  Tensor to(DType dtype) const;  // itself when already that dtype
  Tensor to(Device device) const;

  // ---- autograd (see autograd/autograd.h)
  bool requires_grad() const;
  // Marks a leaf as needing a gradient; returns *this for chaining.
  const Tensor& set_requires_grad(bool requires_grad = true) const;
  Tensor grad() const;  // undefined until a backward pass reaches this tensor
  void set_grad(const Tensor& grad) const;
  bool is_leaf() const;
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  void retain_grad() const;  // keep .grad() on a non-leaf too
  // Called with the gradient flowing into this tensor; may return a replacement (or undefined
  // to keep the gradient unchanged).
  void register_hook(std::function<Tensor(const Tensor&)> hook) const;
  // A handle to the same data, outside the graph.
  Tensor detach() const;
  const std::shared_ptr<autograd::AutogradMeta>& autograd_meta() const { return impl().autograd; }
  // How many handles share this tensor (copies of one Tensor; views are other tensors): the
  // engine takes a leaf's first gradient without copying it when nothing else holds it.
  long handle_count() const { return impl_.use_count(); }
  // Shared by every copy of this handle (autograd/ sets it when a tensor joins the graph).
  void set_autograd_meta(std::shared_ptr<autograd::AutogradMeta> meta) const { impl().autograd = std::move(meta); }

  // "Tensor(shape=[2, 3], dtype=f32, device=cpu, values=[...])", a few leading values.
  std::string to_string(int max_values = 8) const;

 private:
  TensorImpl& impl() const {
    LAMINA_CHECK(impl_ != nullptr, "use of an undefined tensor");
    return *impl_;
  }
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& out, const Tensor& tensor);

// Throws naming `op` unless `t` is defined.
void check_defined(const Tensor& t, const char* op, const char* argument);

// A CPU tensor with t's shape, strides and values (t itself when t is on the CPU): for reading
// device results on the host. Not differentiable; ops::to_device is the op.
Tensor host_mirror(const Tensor& t);

// Calls fn(storage_offset_of_element, linear_index) for every element in row-major order.
void for_each_offset(const Shape& shape, const Shape& strides, int64_t offset,
                     const std::function<void(int64_t, int64_t)>& fn);

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, DType dtype) {
  LAMINA_CHECK(int64_t(values.size()) == shape_numel(shape), "Tensor::from_vector: ", values.size(),
               " values do not fill shape ", shape);
  Tensor out = empty(shape, dtype);
  visit_dtype(dtype, [&](auto tag) {
    using Out = typename decltype(tag)::type;
    Out* dst = static_cast<Out*>(out.raw_data());
    for (size_t i = 0; i < values.size(); ++i) dst[i] = Out(compute_t<Out>(values[i]));
  });
  return out;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  check_defined(*this, "Tensor::to_vector", "self");
  if (!device().is_cpu()) return host_mirror(*this).to_vector<T>();
  std::vector<T> values(static_cast<size_t>(numel()));
  visit_dtype(dtype(), [&](auto tag) {
    using Elem = typename decltype(tag)::type;
    const Elem* base = static_cast<const Elem*>(storage()->data());
    for_each_offset(shape(), strides(), offset(), [&](int64_t at, int64_t i) {
      values[size_t(i)] = T(compute_t<Elem>(base[at]));
    });
  });
  return values;
}

template <typename T>
T Tensor::item() const {
  LAMINA_CHECK(numel() == 1, "Tensor::item: tensor has ", numel(), " elements (shape ", shape(),
               "), expected exactly 1");
  return to_vector<T>()[0];
}

}  // namespace lamina
