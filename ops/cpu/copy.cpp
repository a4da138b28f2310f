// CPU copy between any two dtypes (the cast) and fill. Every pair of dtypes is its own loop,
// so this file holds the most instantiations of map1.
#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"

namespace lamina::ops::cpu {

void copy(const Tensor& dst, const Tensor& src) {
  visit_dtype(dst.dtype(), [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    visit_dtype(src.dtype(), [&](auto in_tag) {
      using In = typename decltype(in_tag)::type;
      map1<Out, In>(dst, src, [](compute_t<In> v) { return v; });
    });
  });
}

void fill(const Tensor& dst, double value) {
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T element = convert<T>(value);
    T* base = static_cast<T*>(dst.raw_data());
    for_each_run<1>(dst.shape(), {dst.strides()}, [&](const auto& at, int64_t n, const auto& step) {
      for (int64_t i = 0; i < n; ++i) base[at[0] + i * step[0]] = element;
    });
  });
}

}  // namespace lamina::ops::cpu
