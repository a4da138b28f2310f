// Raw views: new shape/strides/offset over the same storage, with no autograd record.
// Tensor's view methods call these and add the tape entry; kernels use them directly.
#pragma once

#include "tensor/tensor.h"

namespace lamina::views {

Tensor as_strided(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset);
// Resolves one -1 in `shape` against t.numel(); throws on a mismatch.
Shape infer_shape(const Tensor& t, const Shape& shape, const char* op);
// Strides that view `t` with `shape` without a copy, or an empty optional-like result
// (returns false) when the layout does not allow it.
bool view_strides(const Tensor& t, const Shape& shape, Shape& strides_out);
Tensor view(const Tensor& t, const Shape& shape);
Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1);
Tensor permute(const Tensor& t, const Shape& order);
Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& t, int64_t dim, int64_t index);
Tensor expand(const Tensor& t, const Shape& shape);
Tensor squeeze(const Tensor& t, int64_t dim);
Tensor unsqueeze(const Tensor& t, int64_t dim);
// The view of `t` broadcast to `shape` (leading dims added, size-1 dims given stride 0).
Tensor broadcast_to(const Tensor& t, const Shape& shape, const char* op);

}  // namespace lamina::views
