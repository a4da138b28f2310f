// Softmax and log-softmax over the last dim of contiguous rows.
//   softmax:      y = exp(x - m) / s            m = max(x), s = sum(exp(x - m))
//   log_softmax:  y = x - m - log(s)
//   backward:     softmax dx = y * (g - sum(g * y));  log_softmax dx = g - exp(y) * sum(g)
#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void softmax_rows(const Tensor& out, const Tensor& x, bool log_space) {
  const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
  visit_floating(x.dtype(), "softmax", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* input = static_cast<const T*>(x.raw_data());
    T* output = static_cast<T*>(out.raw_data());
    for_each_row(rows, width, [&](int64_t row) {
      const T* in = input + row * width;
      T* y = output + row * width;
      C peak = row_max(in, width);
      if (peak == -INFINITY) peak = 0;  // an all -inf row: avoid inf - inf
      if (log_space) {
        const C shift = peak + std::log(row_sum_exp(in, width, peak));
        for (int64_t i = 0; i < width; ++i) y[i] = T(load(in[i]) - shift);
        return;
      }
      // One exp per element: write exp(x - m) while summing it (kLanes lanes), then rescale
      // the row in place (still in L1 for rows up to ~8K floats).
      C lanes[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= width; i += kLanes) {
        for (int lane = 0; lane < kLanes; ++lane) {
          const C e = fast_exp(load(in[i + lane]) - peak);
          y[i + lane] = T(e);
          lanes[lane] += e;
        }
      }
      C total = 0;
      for (; i < width; ++i) {
        const C e = fast_exp(load(in[i]) - peak);
        y[i] = T(e);
        total += e;
      }
      for (C lane : lanes) total += lane;
      const C scale = C(1) / total;
      for (int64_t j = 0; j < width; ++j) y[j] = T(load(y[j]) * scale);
    });
  });
}

void softmax_backward_rows(const Tensor& grad_in, const Tensor& grad_out, const Tensor& y, bool log_space) {
  const int64_t width = y.size(-1), rows = y.numel() / std::max<int64_t>(1, width);
  visit_floating(y.dtype(), "softmax_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* g = static_cast<const T*>(grad_out.raw_data());
    const T* out = static_cast<const T*>(y.raw_data());
    T* dx = static_cast<T*>(grad_in.raw_data());
    for_each_row(rows, width, [&](int64_t row) {
      const T* g_row = g + row * width;
      const T* y_row = out + row * width;
      T* dx_row = dx + row * width;
      if (log_space) {
        C total = 0;
        for (int64_t i = 0; i < width; ++i) total += load(g_row[i]);
        for (int64_t i = 0; i < width; ++i) dx_row[i] = T(load(g_row[i]) - fast_exp(load(y_row[i])) * total);
      } else {
        const C dot = row_dot(g_row, y_row, width);
        for (int64_t i = 0; i < width; ++i) dx_row[i] = T(load(y_row[i]) * (load(g_row[i]) - dot));
      }
    });
  });
}

}  // namespace lamina::ops::cpu
