// Indexing and joining: checks (every index in range) and allocation; kernels in
// ops/cpu/index.cpp and ops/cuda/index.cu (split needs none: its parts are views).
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

void check_indices(const char* op, const Tensor& index, int64_t limit) {
  check_index_dtype(op, "index", index);
  const std::vector<int64_t> values = index.to_vector<int64_t>();
  for (size_t i = 0; i < values.size(); ++i)
    LAMINA_CHECK(values[i] >= 0 && values[i] < limit, op, ": index ", values[i], " at flat position ", i,
                 " is out of range for size ", limit);
}

// gather/scatter_add: index has x's rank and fits inside x on every dim but `dim`.
void check_gather_shape(const char* op, const Tensor& x, int64_t dim, const Tensor& index) {
  LAMINA_CHECK(index.dim() == x.dim(), op, ": index ", index.shape(), " must have as many dims as ", x.shape());
  for (int64_t d = 0; d < x.dim(); ++d)
    LAMINA_CHECK(d == dim || index.size(d) <= x.size(d), op, ": index ", index.shape(), " exceeds ", x.shape(),
                 " on dim ", d);
}

}  // namespace

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  LAMINA_CHECK(!tensors.empty(), "cat: needs at least one tensor");
  const Tensor& first = tensors[0];
  check_defined(first, "cat", "tensors[0]");
  const int64_t d = normalize_dim(dim, first.dim(), "cat");
  Shape shape = first.shape();
  shape[size_t(d)] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    check_device("cat", {{"tensors[0]", &first}, {"tensors[i]", &t}});
    LAMINA_CHECK(t.dtype() == first.dtype(), "cat: tensor ", i, " has dtype ", dtype_name(t.dtype()), ", tensor 0 has ",
                 dtype_name(first.dtype()));
    LAMINA_CHECK(t.dim() == first.dim(), "cat: tensor ", i, " has shape ", t.shape(), ", tensor 0 has ", first.shape());
    for (int64_t k = 0; k < t.dim(); ++k)
      LAMINA_CHECK(k == d || t.size(k) == first.size(k), "cat: tensor ", i, " has shape ", t.shape(),
                   ", tensor 0 has ", first.shape(), " (only dim ", d, " may differ)");
    shape[size_t(d)] += t.size(d);
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  int64_t at = 0;
  for (const Tensor& t : tensors) {
    LAMINA_DISPATCH(out.device(), copy(views::slice(out, d, at, at + t.size(d)), t));
    at += t.size(d);
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const Shape& sizes, int64_t dim) {
  check_defined(x, "split", "x");
  const int64_t d = normalize_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t size : sizes) {
    LAMINA_CHECK(size >= 0, "split: negative size in ", sizes);
    total += size;
  }
  LAMINA_CHECK(total == x.size(d), "split: sizes ", sizes, " sum to ", total, " but dim ", d, " of ", x.shape(),
               " has ", x.size(d));
  std::vector<Tensor> parts;
  int64_t at = 0;
  for (int64_t size : sizes) {
    parts.push_back(views::slice(x, d, at, at + size));
    at += size;
  }
  return parts;
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  const Device device = check_device("index_select", {{"x", &x}, {"index", &index}});
  const int64_t d = normalize_dim(dim, x.dim(), "index_select");
  check_dim("index_select", "index", index, 1);
  check_indices("index_select", index, x.size(d));
  Shape shape = x.shape();
  shape[size_t(d)] = index.numel();
  Tensor out = Tensor::empty(shape, x.dtype(), device);
  LAMINA_DISPATCH(device, index_select(out, contiguous(x), d, contiguous(index)));
  return out;
}

Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& src) {
  const Device device = check_device("index_add", {{"index", &index}, {"src", &src}});
  const int64_t d = normalize_dim(dim, int64_t(shape.size()), "index_add");
  check_dim("index_add", "index", index, 1);
  check_indices("index_add", index, shape[size_t(d)]);
  Shape expected = shape;
  expected[size_t(d)] = index.numel();
  check_shape("index_add", "src", src, expected);
  Tensor out = zeros(shape, src.dtype(), device);
  LAMINA_DISPATCH(device, index_add(out, d, contiguous(index), contiguous(src)));
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  const Device device = check_device("gather", {{"x", &x}, {"index", &index}});
  const int64_t d = normalize_dim(dim, x.dim(), "gather");
  check_gather_shape("gather", x, d, index);
  check_indices("gather", index, x.size(d));
  Tensor out = Tensor::empty(index.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, gather(out, x, d, index));
  return out;
}

Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src) {
  check_device("scatter_add", {{"base", &base}, {"index", &index}, {"src", &src}});
  check_same_dtype("scatter_add", {{"base", &base}, {"src", &src}});
  const int64_t d = normalize_dim(dim, base.dim(), "scatter_add");
  check_gather_shape("scatter_add", base, d, index);
  check_shape("scatter_add", "src", src, index.shape());
  check_indices("scatter_add", index, base.size(d));
  Tensor out = clone(base);
  LAMINA_DISPATCH(out.device(), scatter_add(out, d, index, src));
  return out;
}

Tensor one_hot(const Tensor& index, int64_t num_classes, DType dtype) {
  const Device device = check_device("one_hot", {{"index", &index}});
  LAMINA_CHECK(num_classes > 0, "one_hot: num_classes must be positive, got ", num_classes);
  check_indices("one_hot", index, num_classes);
  Shape shape = index.shape();
  shape.push_back(num_classes);
  Tensor out = zeros(shape, dtype, device);
  Shape index_shape = index.shape();
  index_shape.push_back(1);
  LAMINA_DISPATCH(device, scatter_add(out, int64_t(shape.size()) - 1, views::unsqueeze(index, index.dim()),
                   ones(index_shape, dtype, device)));
  return out;
}

}  // namespace lamina::ops
