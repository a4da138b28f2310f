// CPU kernels that compare or choose elementwise: comparisons, logical ops, where, masked_fill.
#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"

namespace lamina::ops::cpu {

void compare(CompareOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    switch (op) {
      case CompareOp::eq: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x == y; });
      case CompareOp::ne: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x != y; });
      case CompareOp::lt: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x < y; });
      case CompareOp::le: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x <= y; });
      case CompareOp::gt: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x > y; });
      case CompareOp::ge: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x >= y; });
    }
  });
}

void logical(LogicalOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  switch (op) {
    case LogicalOp::logical_not: return map1<bool, bool>(out, a, [](bool x) { return !x; });
    case LogicalOp::logical_and: return map2<bool, bool, bool>(out, a, b, [](bool x, bool y) { return x && y; });
    case LogicalOp::logical_or: return map2<bool, bool, bool>(out, a, b, [](bool x, bool y) { return x || y; });
  }
}

void where(const Tensor& out, const Tensor& condition, const Tensor& a, const Tensor& b) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map3<T, bool, T, T>(out, condition, a, b, [](bool c, C x, C y) { return c ? x : y; });
  });
}

void masked_fill(const Tensor& out, const Tensor& x, const Tensor& mask, double value) {
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C fill = convert<C>(value);
    map2<T, T, bool>(out, x, mask, [fill](C v, bool m) { return m ? fill : v; });
  });
}

}  // namespace lamina::ops::cpu
