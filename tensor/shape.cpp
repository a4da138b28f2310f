#include "tensor/shape.h"

#include <algorithm>
#include <sstream>

#include "tensor/error.h"

namespace lamina {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t size : shape) n *= size;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t running = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = running;
    running *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

DimSplit split_around(const Shape& shape, int64_t dim) {
  DimSplit split;
  for (int64_t d = 0; d < int64_t(shape.size()); ++d) {
    if (d < dim) split.outer *= shape[size_t(d)];
    if (d == dim) split.size = shape[size_t(d)];
    if (d > dim) split.inner *= shape[size_t(d)];
  }
  return split;
}

int64_t normalize_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t resolved = dim < 0 ? dim + ndim : dim;
  LAMINA_CHECK(resolved >= 0 && resolved < ndim, op, ": dim ", dim, " out of range for a tensor with ",
               ndim, " dims");
  return resolved;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t ndim = std::max(a.size(), b.size());
  Shape out(ndim);
  for (size_t i = 0; i < ndim; ++i) {
    const int64_t size_a = i < ndim - a.size() ? 1 : a[i - (ndim - a.size())];
    const int64_t size_b = i < ndim - b.size() ? 1 : b[i - (ndim - b.size())];
    LAMINA_CHECK(size_a == size_b || size_a == 1 || size_b == 1, op, ": shapes ", a, " and ", b,
                 " cannot be broadcast together");
    out[i] = size_a == 1 ? size_b : size_a;
  }
  return out;
}

}  // namespace lamina
