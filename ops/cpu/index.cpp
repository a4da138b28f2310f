// Index kernels. Tensors are viewed as [outer, size_along_dim, inner] (contiguous inputs).
//   index_select: out[o, i, :] = x[o, index[i], :]
//   index_add:    out[o, index[i], :] += src[o, i, :]      (zeros first; index_select's adjoint)
//   gather:       out[p] = x[p with its dim coordinate replaced by index[p]]
//   scatter_add:  out[p with its dim coordinate replaced by index[p]] += src[p]
// index_add and scatter_add accumulate in index order on one thread per output slice, so
// repeated indices sum in a fixed order.
#include <cstring>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {
namespace {

template <typename Fn>
void visit_index_values(const Tensor& index, Fn&& fn) {
  visit_index(index.dtype(), "index", [&](auto tag) {
    using I = typename decltype(tag)::type;
    fn(static_cast<const I*>(index.raw_data()));
  });
}

}  // namespace

void index_select(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index) {
  const DimSplit in = split_around(x.shape(), dim);
  const int64_t count = index.numel();
  const size_t row_bytes = size_t(in.inner) * x.element_size();
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  visit_index_values(index, [&](const auto* idx) {
    for_each_row(in.outer * count, in.inner, [&](int64_t row) {
      const int64_t o = row / count, i = row % count;
      std::memcpy(dst + size_t(row) * row_bytes, src + size_t(o * in.size + int64_t(idx[i])) * row_bytes, row_bytes);
    });
  });
}

void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  const DimSplit o_shape = split_around(out.shape(), dim);
  const int64_t count = index.numel();
  visit_arithmetic(out.dtype(), "index_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* s = static_cast<const T*>(src.raw_data());
    T* d = static_cast<T*>(out.raw_data());
    visit_index_values(index, [&](const auto* idx) {
      // Tasks: (outer slice, block of inner columns); each walks the indices in order.
      constexpr int64_t kColumns = 256;
      const int64_t column_blocks = (o_shape.inner + kColumns - 1) / kColumns;
      parallel_for(0, o_shape.outer * column_blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t o = task / column_blocks, first = (task % column_blocks) * kColumns;
          const int64_t last = std::min(o_shape.inner, first + kColumns);
          for (int64_t i = 0; i < count; ++i) {
            T* target = d + (o * o_shape.size + int64_t(idx[i])) * o_shape.inner;
            const T* from = s + (o * count + i) * o_shape.inner;
            for (int64_t j = first; j < last; ++j) target[j] = T(compute_t<T>(load(target[j]) + load(from[j])));
          }
        }
      });
    });
  });
}

void gather(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index) {
  // x_rest: x's strides with the gathered dim zeroed, laid over index's shape.
  Shape rest_strides = x.strides();
  rest_strides[size_t(dim)] = 0;
  const int64_t dim_stride = x.stride(dim);
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* src = static_cast<const T*>(x.raw_data());
    T* dst = static_cast<T*>(out.raw_data());
    visit_index_values(index, [&](const auto* idx) {
      for_each_run<3>(index.shape(), {out.strides(), index.strides(), rest_strides},
                      [&](const auto& at, int64_t n, const auto& step) {
                        for (int64_t i = 0; i < n; ++i)
                          dst[at[0] + i * step[0]] =
                              src[at[2] + i * step[2] + int64_t(idx[at[1] + i * step[1]]) * dim_stride];
                      });
    });
  });
}

void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  Shape rest_strides = out.strides();
  rest_strides[size_t(dim)] = 0;
  const int64_t dim_stride = out.stride(dim);
  visit_arithmetic(out.dtype(), "scatter_add", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* from = static_cast<const T*>(src.raw_data());
    T* dst = static_cast<T*>(out.raw_data());
    visit_index_values(index, [&](const auto* idx) {
      // One thread: positions that differ only along dim may hit the same element.
      for_each_run<3>(index.shape(), {src.strides(), index.strides(), rest_strides},
                      [&](const auto& at, int64_t n, const auto& step) {
                        for (int64_t i = 0; i < n; ++i) {
                          T& target = dst[at[2] + i * step[2] + int64_t(idx[at[1] + i * step[1]]) * dim_stride];
                          target = T(compute_t<T>(load(target) + load(from[at[0] + i * step[0]])));
                        }
                      },
                      index.numel() + 1);
    });
  });
}

}  // namespace lamina::ops::cpu
