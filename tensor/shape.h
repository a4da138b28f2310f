// Shapes and strides are plain vectors of element counts; strides are in elements, not bytes.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace lamina {

// A list of sizes (or strides). A named type so that it prints itself in error messages.
struct Shape : std::vector<int64_t> {
  using std::vector<int64_t>::vector;
  Shape() = default;
  Shape(const std::vector<int64_t>& values) : std::vector<int64_t>(values) {}  // NOLINT
  friend std::ostream& operator<<(std::ostream& out, const Shape& shape) {
    out << '[';
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    return out << ']';
  }
};

int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3, 4]"

// Resolves a possibly negative dim against `ndim`; throws naming `op` when out of range.
int64_t normalize_dim(int64_t dim, int64_t ndim, const char* op);

// A contiguous tensor seen as [outer, size, inner] around one (already normalised) dim: the
// products of the dims before it, the dim itself, and the dims after it.
struct DimSplit {
  int64_t outer = 1, size = 1, inner = 1;
};
DimSplit split_around(const Shape& shape, int64_t dim);

// NumPy broadcasting of two shapes; throws naming `op` and both shapes when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace lamina
