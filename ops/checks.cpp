// The argument checks of ops/checks.h: each failure names the op, the argument and what it got.
#include "ops/checks.h"

namespace lamina::ops {

Device check_device(const char* op, std::initializer_list<NamedTensor> tensors) {
  Device device;
  const char* first_name = nullptr;
  for (const auto& [name, tensor] : tensors) {
    check_defined(*tensor, op, name);
    if (first_name == nullptr) {
      device = tensor->device();
      first_name = name;
    } else {
      LAMINA_CHECK(tensor->device() == device, op, ": '", name, "' is on ", tensor->device().str(), " but '",
                   first_name, "' is on ", device.str());
    }
  }
#if !LAMINA_WITH_CUDA
  LAMINA_CHECK(device.is_cpu(), op, ": no kernel for device ", device.str(),
               " in this build (CUDA backend not built)");
#endif
  return device;
}

void check_dtype(const char* op, const char* argument, const Tensor& t, DType expected) {
  LAMINA_CHECK(t.dtype() == expected, op, ": '", argument, "' must have dtype ", dtype_name(expected),
               ", got ", dtype_name(t.dtype()));
}

void check_same_dtype(const char* op, std::initializer_list<NamedTensor> tensors) {
  const NamedTensor& first = *tensors.begin();
  for (const auto& [name, tensor] : tensors)
    LAMINA_CHECK(tensor->dtype() == first.second->dtype(), op, ": '", name, "' has dtype ",
                 dtype_name(tensor->dtype()), " but '", first.first, "' has ", dtype_name(first.second->dtype()),
                 " (cast one explicitly)");
}

void check_floating(const char* op, const char* argument, const Tensor& t) {
  LAMINA_CHECK(is_floating(t.dtype()), op, ": '", argument, "' must be floating (f32, f64, bf16, f16), got ",
               dtype_name(t.dtype()));
}

void check_index_dtype(const char* op, const char* argument, const Tensor& t) {
  LAMINA_CHECK(t.dtype() == DType::i32 || t.dtype() == DType::i64, op, ": '", argument,
               "' must hold integer indices (i32 or i64), got ", dtype_name(t.dtype()));
}

void check_dim(const char* op, const char* argument, const Tensor& t, int64_t expected_dims) {
  LAMINA_CHECK(t.dim() == expected_dims, op, ": '", argument, "' must have ", expected_dims,
               " dims, got shape ", t.shape());
}

void check_shape(const char* op, const char* argument, const Tensor& t, const Shape& expected) {
  LAMINA_CHECK(t.shape() == expected, op, ": '", argument, "' must have shape ", expected, ", got ", t.shape());
}

void check_writable(const char* op, const char* argument, const Tensor& t) {
  for (int64_t d = 0; d < t.dim(); ++d)
    LAMINA_CHECK(t.stride(d) != 0 || t.size(d) <= 1, op, ": '", argument, "' (shape ", t.shape(), ", strides ",
                 t.strides(), ") is a broadcast view and cannot be written in place");
}

}  // namespace lamina::ops
