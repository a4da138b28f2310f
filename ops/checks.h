// Argument checks shared by the public ops. Every message names the op and the argument.
#pragma once

#include <initializer_list>
#include <utility>

#include "tensor/tensor.h"

namespace lamina::ops {

using NamedTensor = std::pair<const char*, const Tensor*>;

// Every tensor defined and on one device, and that device has a backend in this build.
Device check_device(const char* op, std::initializer_list<NamedTensor> tensors);
void check_dtype(const char* op, const char* argument, const Tensor& t, DType expected);
void check_same_dtype(const char* op, std::initializer_list<NamedTensor> tensors);
void check_floating(const char* op, const char* argument, const Tensor& t);
void check_index_dtype(const char* op, const char* argument, const Tensor& t);
void check_dim(const char* op, const char* argument, const Tensor& t, int64_t expected_dims);
void check_shape(const char* op, const char* argument, const Tensor& t, const Shape& expected);
// The tensor is written in place: it must not be a broadcast view (two indices, one element).
void check_writable(const char* op, const char* argument, const Tensor& t);

}  // namespace lamina::ops
