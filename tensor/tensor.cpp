#include "tensor/tensor.h"

#include <iomanip>
#include <sstream>

#if LAMINA_WITH_CUDA
#include "tensor/cuda/memory.h"
#endif

namespace lamina {

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype)
    : impl_(std::make_shared<TensorImpl>()) {
  LAMINA_CHECK(storage != nullptr, "Tensor: storage is null");
  LAMINA_CHECK(shape.size() == strides.size(), "Tensor: shape ", shape, " and strides ", strides, " differ in length");
  for (int64_t size : shape) LAMINA_CHECK(size >= 0, "Tensor: negative size in shape ", shape);
  if (shape_numel(shape) > 0) {
    // The nearest and furthest elements any index reaches must lie inside the storage.
    int64_t lowest = offset, highest = offset;
    for (size_t i = 0; i < shape.size(); ++i) {
      const int64_t reach = (shape[i] - 1) * strides[i];
      (reach < 0 ? lowest : highest) += reach;
    }
    LAMINA_CHECK(lowest >= 0 && size_t(highest + 1) * dtype_size(dtype) <= storage->bytes(), "Tensor: view of shape ",
                 shape, " strides ", strides, " offset ", offset, " reaches outside its storage of ", storage->bytes(),
                 " bytes");
  }
  impl_->storage = std::move(storage);
  impl_->shape = std::move(shape);
  impl_->strides = std::move(strides);
  impl_->offset = offset;
  impl_->dtype = dtype;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  uint64_t bytes = dtype_size(dtype);
  for (int64_t size : shape) {
    LAMINA_CHECK(size >= 0, "empty: negative size in shape ", shape);
    const bool overflow = __builtin_mul_overflow(bytes, uint64_t(size), &bytes) || bytes > uint64_t(INT64_MAX);
    LAMINA_CHECK(!overflow, "empty: shape ", shape, " of ", dtype_name(dtype), " needs more than 2^63 bytes");
  }
  std::shared_ptr<Storage> storage;
  try {
    storage = Storage::allocate(size_t(bytes), device);
  } catch (const Error& error) {  // the allocator knows the sizes, not what the memory was for
    throw Error(str_cat(error.what(), " (for a tensor of shape ", shape, ", ", dtype_name(dtype), ")"));
  }
  return Tensor(std::move(storage), shape, contiguous_strides(shape), 0, dtype);
}

Tensor Tensor::scalar(double value, DType dtype) { return from_vector(std::vector<double>{value}, {}, dtype); }

int64_t Tensor::size(int64_t dim) const { return shape()[size_t(normalize_dim(dim, this->dim(), "size"))]; }

int64_t Tensor::stride(int64_t dim) const { return strides()[size_t(normalize_dim(dim, this->dim(), "stride"))]; }

Device Tensor::device() const { return storage()->device(); }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no elements, so no layout to get wrong (strides of [3, 0, 2] vary)
  int64_t expected = 1;
  for (size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] == 1) continue;
    if (strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

bool Tensor::is_alias_of(const Tensor& other) const {
  return storage() == other.storage() && shape() == other.shape() && strides() == other.strides() &&
         offset() == other.offset() && dtype() == other.dtype();
}

void* Tensor::raw_data() const {
  return static_cast<char*>(storage()->data()) + offset() * int64_t(element_size());
}

void Tensor::set_data(const Tensor& source) const {
  check_defined(source, "set_data", "source");
  TensorImpl& target = impl();
  const TensorImpl& from = *source.impl_;
  target.storage = from.storage;
  target.shape = from.shape;
  target.strides = from.strides;
  target.offset = from.offset;
  target.dtype = from.dtype;
}

Tensor Tensor::detach() const { return Tensor(storage(), shape(), strides(), offset(), dtype()); }

std::string Tensor::to_string(int max_values) const {
  if (!defined()) return "Tensor(undefined)";
  std::ostringstream out;
  out << "Tensor(shape=" << shape() << ", dtype=" << dtype_name(dtype()) << ", device=" << device().str();
  {
    const int64_t shown = std::min<int64_t>(numel(), max_values);
    // A CUDA tensor's values are copied over (which waits for the device): only the leading
    // ones when the layout is contiguous.
    const Tensor leading = device().is_cpu() || !is_contiguous() ? *this : Tensor(storage(), {shown}, {1}, offset(), dtype());
    const Tensor host = host_mirror(leading);
    out << ", values=[" << std::setprecision(6);
    visit_dtype(dtype(), [&](auto tag) {
      using Elem = typename decltype(tag)::type;
      const Elem* base = static_cast<const Elem*>(host.storage()->data());
      for_each_offset(host.shape(), host.strides(), host.offset(), [&](int64_t at, int64_t i) {
        if (i >= shown) return;
        out << (i ? ", " : "");
        if constexpr (std::is_same_v<Elem, uint8_t> || std::is_same_v<Elem, bool>) {
          out << int(base[at]);
        } else {
          out << compute_t<Elem>(base[at]);
        }
      });
    });
    if (numel() > shown) out << ", ...";
    out << "]";
  }
  out << ")";
  return out.str();
}

std::ostream& operator<<(std::ostream& out, const Tensor& tensor) { return out << tensor.to_string(); }

void check_defined(const Tensor& t, const char* op, const char* argument) {
  LAMINA_CHECK(t.defined(), op, ": argument '", argument, "' is an undefined tensor");
}

Tensor host_mirror(const Tensor& t) {
  check_defined(t, "host_mirror", "t");
  if (t.device().is_cpu()) return t;
#if LAMINA_WITH_CUDA
  return cuda::host_copy_of_span(t);
#else
  throw Error(str_cat("host_mirror: device ", t.device().str(), " is not available (this build has no CUDA backend)"));
#endif
}

void for_each_offset(const Shape& shape, const Shape& strides, int64_t offset,
                     const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t total = shape_numel(shape);
  if (total == 0) return;
  std::vector<int64_t> index(shape.size(), 0);
  int64_t at = offset;
  for (int64_t linear = 0; linear < total; ++linear) {
    fn(at, linear);
    for (size_t d = shape.size(); d-- > 0;) {  // odometer increment, last dim fastest
      if (++index[d] < shape[d]) {
        at += strides[d];
        break;
      }
      at -= strides[d] * (shape[d] - 1);
      index[d] = 0;
    }
  }
}

}  // namespace lamina
