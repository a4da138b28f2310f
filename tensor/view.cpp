#include "tensor/view.h"

#include <algorithm>

namespace lamina::views {

Tensor as_strided(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset) {
  check_defined(t, "as_strided", "input");
  LAMINA_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape, " and strides ", strides,
               " differ in length");
  return Tensor(t.storage(), shape, strides, offset, t.dtype());
}

Shape infer_shape(const Tensor& t, const Shape& shape, const char* op) {
  Shape out = shape;
  int64_t known = 1;
  int inferred_at = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      LAMINA_CHECK(inferred_at < 0, op, ": more than one -1 in shape ", shape);
      inferred_at = int(i);
    } else {
      LAMINA_CHECK(out[i] >= 0, op, ": negative size in shape ", shape);
      known *= out[i];
    }
  }
  if (inferred_at >= 0) {
    LAMINA_CHECK(known != 0 && t.numel() % known == 0, op, ": cannot infer -1 in ", shape,
                 " for a tensor of shape ", t.shape());
    out[size_t(inferred_at)] = t.numel() / known;
  }
  LAMINA_CHECK(shape_numel(out) == t.numel(), op, ": shape ", shape, " has ", shape_numel(out),
               " elements but the tensor of shape ", t.shape(), " has ", t.numel());
  return out;
}

// Walks the old dims in groups whose elements are laid out as one contiguous-stride run; each
// group must map onto a run of new dims with the same element count.
bool view_strides(const Tensor& t, const Shape& shape, Shape& strides_out) {
  const Shape& old_shape = t.shape();
  const Shape& old_strides = t.strides();
  strides_out.assign(shape.size(), 0);
  if (t.numel() == 0) {
    strides_out = contiguous_strides(shape);
    return true;
  }
  int64_t new_dim = int64_t(shape.size()) - 1;
  int64_t old_dim = int64_t(old_shape.size()) - 1;
  while (old_dim >= 0 || new_dim >= 0) {
    // Skip size-1 dims: their strides do not matter.
    if (old_dim >= 0 && old_shape[size_t(old_dim)] == 1) {
      --old_dim;
      continue;
    }
    if (new_dim >= 0 && shape[size_t(new_dim)] == 1) {
      strides_out[size_t(new_dim)] = 1;
      --new_dim;
      continue;
    }
    if (old_dim < 0 || new_dim < 0) return false;
    // A group of old dims that form one run with stride `base`.
    const int64_t base = old_strides[size_t(old_dim)];
    int64_t group_numel = old_shape[size_t(old_dim)];
    int64_t group_start = old_dim;
    while (group_start > 0) {
      const int64_t above = group_start - 1;
      if (old_shape[size_t(above)] == 1) {
        --group_start;
        continue;
      }
      if (old_strides[size_t(above)] != base * group_numel) break;
      group_numel *= old_shape[size_t(above)];
      --group_start;
    }
    // New dims covering exactly group_numel elements get strides within the run.
    int64_t covered = 1;
    while (new_dim >= 0 && covered < group_numel) {
      strides_out[size_t(new_dim)] = base * covered;
      covered *= shape[size_t(new_dim)];
      --new_dim;
    }
    if (covered != group_numel) return false;
    old_dim = group_start - 1;
  }
  return true;
}

Tensor view(const Tensor& t, const Shape& shape) {
  check_defined(t, "view", "input");
  const Shape resolved = infer_shape(t, shape, "view");
  Shape strides;
  LAMINA_CHECK(view_strides(t, resolved, strides), "view: cannot view a tensor of shape ", t.shape(),
               " with strides ", t.strides(), " as ", resolved,
               " without a copy; use reshape() or contiguous() first");
  return as_strided(t, resolved, strides, t.offset());
}

Tensor transpose(const Tensor& t, int64_t dim0, int64_t dim1) {
  check_defined(t, "transpose", "input");
  dim0 = normalize_dim(dim0, t.dim(), "transpose");
  dim1 = normalize_dim(dim1, t.dim(), "transpose");
  Shape shape = t.shape(), strides = t.strides();
  std::swap(shape[size_t(dim0)], shape[size_t(dim1)]);
  std::swap(strides[size_t(dim0)], strides[size_t(dim1)]);
  return as_strided(t, shape, strides, t.offset());
}

Tensor permute(const Tensor& t, const Shape& order) {
  check_defined(t, "permute", "input");
  LAMINA_CHECK(int64_t(order.size()) == t.dim(), "permute: order ", order, " does not match ", t.dim(),
               " dims of shape ", t.shape());
  Shape shape(order.size()), strides(order.size());
  std::vector<bool> used(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t from = normalize_dim(order[i], t.dim(), "permute");
    LAMINA_CHECK(!used[size_t(from)], "permute: dim ", from, " repeated in order ", order);
    used[size_t(from)] = true;
    shape[i] = t.shape()[size_t(from)];
    strides[i] = t.strides()[size_t(from)];
  }
  return as_strided(t, shape, strides, t.offset());
}

Tensor slice(const Tensor& t, int64_t dim, int64_t start, int64_t end, int64_t step) {
  check_defined(t, "slice", "input");
  dim = normalize_dim(dim, t.dim(), "slice");
  const int64_t size = t.shape()[size_t(dim)];
  LAMINA_CHECK(step >= 1, "slice: step must be positive, got ", step);
  if (start < 0) start += size;
  if (end < 0) end += size;
  start = std::clamp<int64_t>(start, 0, size);
  end = std::clamp<int64_t>(end, start, size);
  Shape shape = t.shape(), strides = t.strides();
  shape[size_t(dim)] = (end - start + step - 1) / step;
  strides[size_t(dim)] *= step;
  return as_strided(t, shape, strides, t.offset() + start * t.strides()[size_t(dim)]);
}

Tensor select(const Tensor& t, int64_t dim, int64_t index) {
  check_defined(t, "select", "input");
  dim = normalize_dim(dim, t.dim(), "select");
  const int64_t size = t.shape()[size_t(dim)];
  const int64_t resolved = index < 0 ? index + size : index;
  LAMINA_CHECK(resolved >= 0 && resolved < size, "select: index ", index, " out of range for dim ", dim,
               " of size ", size);
  Shape shape = t.shape(), strides = t.strides();
  const int64_t offset = t.offset() + resolved * strides[size_t(dim)];
  shape.erase(shape.begin() + dim);
  strides.erase(strides.begin() + dim);
  return as_strided(t, shape, strides, offset);
}

Tensor expand(const Tensor& t, const Shape& shape) {
  check_defined(t, "expand", "input");
  LAMINA_CHECK(int64_t(shape.size()) >= t.dim(), "expand: target ", shape, " has fewer dims than ",
               t.shape());
  const size_t lead = shape.size() - size_t(t.dim());
  Shape out_shape(shape.size()), strides(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      LAMINA_CHECK(shape[i] >= 0, "expand: size -1 not allowed for new leading dim in ", shape);
      out_shape[i] = shape[i];
      continue;
    }
    const int64_t own = t.shape()[i - lead];
    const int64_t want = shape[i] == -1 ? own : shape[i];
    LAMINA_CHECK(own == want || own == 1, "expand: cannot expand shape ", t.shape(), " to ", shape);
    out_shape[i] = want;
    strides[i] = own == want ? t.strides()[i - lead] : 0;
  }
  return as_strided(t, out_shape, strides, t.offset());
}

Tensor squeeze(const Tensor& t, int64_t dim) {
  check_defined(t, "squeeze", "input");
  dim = normalize_dim(dim, t.dim(), "squeeze");
  LAMINA_CHECK(t.shape()[size_t(dim)] == 1, "squeeze: dim ", dim, " of shape ", t.shape(),
               " has size ", t.shape()[size_t(dim)], ", not 1");
  Shape shape = t.shape(), strides = t.strides();
  shape.erase(shape.begin() + dim);
  strides.erase(strides.begin() + dim);
  return as_strided(t, shape, strides, t.offset());
}

Tensor unsqueeze(const Tensor& t, int64_t dim) {
  check_defined(t, "unsqueeze", "input");
  dim = normalize_dim(dim, t.dim() + 1, "unsqueeze");
  Shape shape = t.shape(), strides = t.strides();
  const int64_t stride = dim < t.dim() ? strides[size_t(dim)] * shape[size_t(dim)] : 1;
  shape.insert(shape.begin() + dim, 1);
  strides.insert(strides.begin() + dim, stride);
  return as_strided(t, shape, strides, t.offset());
}

Tensor broadcast_to(const Tensor& t, const Shape& shape, const char* op) {
  check_defined(t, op, "input");
  LAMINA_CHECK(int64_t(shape.size()) >= t.dim(), op, ": cannot broadcast shape ", t.shape(), " to ", shape);
  const size_t lead = shape.size() - size_t(t.dim());
  Shape strides(shape.size(), 0);
  for (size_t i = lead; i < shape.size(); ++i) {
    const int64_t own = t.shape()[i - lead];
    LAMINA_CHECK(own == shape[i] || own == 1, op, ": cannot broadcast shape ", t.shape(), " to ", shape);
    strides[i] = own == shape[i] ? t.strides()[i - lead] : 0;
  }
  return as_strided(t, shape, strides, t.offset());
}

}  // namespace lamina::views
