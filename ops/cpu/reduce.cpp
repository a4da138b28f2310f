// Reductions over any set of dims. Each output element is reduced by one thread in a fixed
// order, so results do not depend on the thread count.
#include <cmath>
#include <limits>

#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"
#include "ops/cpu/vec_math.h"

namespace lamina::ops::cpu {
namespace {

// The input split into kept dims (one output each) and reduced dims (coalesced).
struct ReduceLayout {
  Shape kept_shape, kept_strides;
  Shape reduced_shape, reduced_strides;
  int64_t outputs = 1;
  int64_t reduced_count = 1;
};

ReduceLayout make_layout(const Tensor& x, const std::vector<bool>& reduce_dim) {
  ReduceLayout layout;
  Shape reduced_shape, reduced_strides;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (reduce_dim[size_t(d)]) {
      reduced_shape.push_back(x.size(d));
      reduced_strides.push_back(x.stride(d));
    } else {
      layout.kept_shape.push_back(x.size(d));
      layout.kept_strides.push_back(x.stride(d));
    }
  }
  const Runs<1> runs = coalesce<1>(reduced_shape, {reduced_strides});
  layout.reduced_shape = runs.shape;
  layout.reduced_strides = runs.strides[0];
  layout.outputs = shape_numel(layout.kept_shape);
  layout.reduced_count = shape_numel(reduced_shape);
  return layout;
}

int64_t output_offset(const ReduceLayout& layout, int64_t output) {
  int64_t offset = 0;
  for (size_t d = layout.kept_shape.size(); d-- > 0;) {
    offset += (output % layout.kept_shape[d]) * layout.kept_strides[d];
    output /= layout.kept_shape[d];
  }
  return offset;
}

// Calls run(pointer, count, stride) for each innermost run of the reduced subspace of one output.
template <typename T, typename Run>
void visit_reduced(const T* base, const ReduceLayout& layout, Run&& run) {
  if (layout.reduced_count == 0) return;
  const size_t ndim = layout.reduced_shape.size();
  const int64_t inner = layout.reduced_shape[ndim - 1];
  const int64_t inner_stride = layout.reduced_strides[ndim - 1];
  const int64_t runs = layout.reduced_count / inner;
  Shape index(ndim, 0);
  int64_t offset = 0;
  for (int64_t r = 0; r < runs; ++r) {
    run(base + offset, inner, inner_stride);
    for (size_t d = ndim - 1; d-- > 0;) {
      if (++index[d] < layout.reduced_shape[d]) {
        offset += layout.reduced_strides[d];
        break;
      }
      offset -= layout.reduced_strides[d] * (layout.reduced_shape[d] - 1);
      index[d] = 0;
    }
  }
}

template <typename T>
using accumulate_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;

// Sum of a run in kLanes independent lanes (vectorisable, and a fixed order).
template <typename T>
accumulate_t<T> run_sum(const T* p, int64_t n, int64_t stride) {
  using Acc = accumulate_t<T>;
  if (stride != 1) {
    Acc acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += Acc(load(p[i * stride]));
    return acc;
  }
  Acc lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += Acc(load(p[i + lane]));
  Acc acc = 0;
  for (; i < n; ++i) acc += Acc(load(p[i]));
  for (int lane = 0; lane < kLanes; ++lane) acc += lanes[lane];
  return acc;
}

template <typename Body>
void for_each_output(const ReduceLayout& layout, Body&& body) {
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / std::max<int64_t>(1, layout.reduced_count));
  parallel_for(0, layout.outputs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) body(o, output_offset(layout, o));
  });
}

}  // namespace

void reduce(ReduceKind kind, const Tensor& out, const Tensor& x, const std::vector<bool>& reduce_dim,
            int64_t correction) {
  const ReduceLayout layout = make_layout(x, reduce_dim);
  const auto n = double(layout.reduced_count);
  visit_arithmetic(x.dtype(), "reduce", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* base = static_cast<const T*>(x.raw_data());
    switch (kind) {
      case ReduceKind::sum:
      case ReduceKind::mean: {
        T* result = static_cast<T*>(out.raw_data());
        for_each_output(layout, [&](int64_t o, int64_t at) {
          accumulate_t<T> acc = 0;
          visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
            acc += run_sum(p, count, stride);
          });
          if (kind == ReduceKind::mean) {
            result[o] = convert<T>(double(acc) / n);
          } else {
            result[o] = convert<T>(acc);
          }
        });
        return;
      }
      case ReduceKind::max:
      case ReduceKind::min: {
        const bool is_max = kind == ReduceKind::max;
        T* result = static_cast<T*>(out.raw_data());
        for_each_output(layout, [&](int64_t o, int64_t at) {
          C best = is_max ? std::numeric_limits<C>::lowest() : std::numeric_limits<C>::max();
          if constexpr (std::is_floating_point_v<C>) best = is_max ? -INFINITY : INFINITY;
          bool seen_nan = false;
          visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
            for (int64_t i = 0; i < count; ++i) {
              const C v = load(p[i * stride]);
              seen_nan |= v != v;
              best = is_max ? (v > best ? v : best) : (v < best ? v : best);
            }
          });
          result[o] = seen_nan ? convert<T>(NAN) : convert<T>(best);
        });
        return;
      }
      case ReduceKind::argmax: {
        int64_t* result = static_cast<int64_t*>(out.raw_data());
        for_each_output(layout, [&](int64_t o, int64_t at) {
          C best = load(base[at]);
          int64_t best_index = 0, position = 0;
          visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
            for (int64_t i = 0; i < count; ++i, ++position) {
              const C v = load(p[i * stride]);
              if (best != best) continue;  // a NaN is the maximum
              if (v > best || v != v) {
                best = v;
                best_index = position;
              }
            }
          });
          result[o] = best_index;
        });
        return;
      }
      case ReduceKind::logsumexp:
      case ReduceKind::var: {
        if constexpr (std::is_integral_v<T>) {
          throw Error("logsumexp/var: integer tensors are not supported");
        } else {
          T* result = static_cast<T*>(out.raw_data());
          for_each_output(layout, [&](int64_t o, int64_t at) {
            if (kind == ReduceKind::logsumexp) {
              double peak = -INFINITY;
              visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
                for (int64_t i = 0; i < count; ++i) peak = std::max(peak, double(load(p[i * stride])));
              });
              if (!std::isfinite(peak)) {
                result[o] = convert<T>(peak);
                return;
              }
              double total = 0;
              visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
                for (int64_t i = 0; i < count; ++i) total += std::exp(double(load(p[i * stride])) - peak);
              });
              result[o] = convert<T>(peak + std::log(total));
            } else {
              double total = 0;
              visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
                total += double(run_sum(p, count, stride));
              });
              const double average = total / n;
              double squares = 0;
              visit_reduced(base + at, layout, [&](const T* p, int64_t count, int64_t stride) {
                for (int64_t i = 0; i < count; ++i) {
                  const double deviation = double(load(p[i * stride])) - average;
                  squares += deviation * deviation;
                }
              });
              result[o] = convert<T>(squares / std::max(0.0, n - double(correction)));
            }
          });
        }
        return;
      }
    }
  });
}

}  // namespace lamina::ops::cpu
