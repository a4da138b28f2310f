// Differentiable joining and indexing.
//   cat <-> split are each other's adjoints; index_select -> index_add; gather -> scatter_add.
#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;
using autograd::saved;

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  const profiler::Scope scope("forward:", "cat");
  Tensor out = ops::cat(tensors, dim);
  Shape sizes;
  const int64_t d = normalize_dim(dim, out.dim(), "cat");
  for (const Tensor& t : tensors) sizes.push_back(t.size(d));
  autograd::record("cat", {&out}, tensors, [sizes, d](const Grads& g) { return ops::split(g[0], sizes, d); });
  return out;
}

std::vector<Tensor> split(const Tensor& x, const Shape& sizes, int64_t dim) {
  const profiler::Scope scope("forward:", "split");
  std::vector<Tensor> parts = ops::split(x, sizes, dim);
  std::vector<Tensor*> outputs;
  for (Tensor& part : parts) outputs.push_back(&part);
  const int64_t d = normalize_dim(dim, x.dim(), "split");
  autograd::record("split", outputs, {x}, [d](const Grads& g) { return Grads{ops::cat(g, d)}; });
  return parts;
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  const profiler::Scope scope("forward:", "index_select");
  Tensor out = ops::index_select(x, dim, index);
  autograd::record("index_select", {&out}, {x}, [shape = x.shape(), dim, index = saved(index)](const Grads& g) {
    return Grads{ops::index_add(shape, dim, index, g[0])};
  });
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  const profiler::Scope scope("forward:", "gather");
  Tensor out = ops::gather(x, dim, index);
  autograd::record("gather", {&out}, {x}, [shape = x.shape(), dim, index = saved(index)](const Grads& g) {
    return Grads{ops::scatter_add(zeros(shape, g[0].dtype(), g[0].device()), dim, index, g[0])};
  });
  return out;
}

}  // namespace lamina
