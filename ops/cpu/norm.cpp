// RMSNorm over the last dim, x: [rows, D], weight: [D].
//   forward:  r = 1 / sqrt(mean(x^2) + eps) (in f32, or f64 for f64), n = x r, y = n w
//             (n rounded to the activation dtype before the weight multiply, as Llama does)
//   backward: dn = dy w;  dx = r (dn - n mean(dn n));  dw = sum over rows of dy n
#include <vector>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {
namespace {

// Rows per block of partial weight gradients; blocks are summed in order, so the result
// does not depend on the thread count.
constexpr int64_t kRowsPerBlock = 32;

}  // namespace

void rms_norm(const Tensor& y, const Tensor& rstd, const Tensor& x, const Tensor& weight, double eps) {
  const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
  visit_floating(x.dtype(), "rms_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* input = static_cast<const T*>(x.raw_data());
    const T* w = static_cast<const T*>(weight.raw_data());
    T* output = static_cast<T*>(y.raw_data());
    C* inverse_rms = static_cast<C*>(rstd.raw_data());
    for_each_row(rows, width, [&](int64_t row) {
      const T* in = input + row * width;
      T* out = output + row * width;
      const C mean_square = row_dot(in, in, width) / C(width);
      const C r = C(1) / std::sqrt(mean_square + C(eps));
      inverse_rms[row] = r;
      for (int64_t i = 0; i < width; ++i) out[i] = T(load(T(load(in[i]) * r)) * load(w[i]));
    });
  });
}

void rms_norm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dy, const Tensor& x,
                       const Tensor& weight, const Tensor& rstd) {
  const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
  visit_floating(x.dtype(), "rms_norm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const T* input = static_cast<const T*>(x.raw_data());
    const T* grad = static_cast<const T*>(dy.raw_data());
    const T* w = static_cast<const T*>(weight.raw_data());
    const C* inverse_rms = static_cast<const C*>(rstd.raw_data());
    T* grad_in = static_cast<T*>(dx.raw_data());
    const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
    std::vector<C> partial(static_cast<size_t>(blocks * width), C(0));
    parallel_for(0, blocks, std::max<int64_t>(1, kElementwiseGrain / (kRowsPerBlock * std::max<int64_t>(1, width))),
                 [&](int64_t block_begin, int64_t block_end) {
      for (int64_t block = block_begin; block < block_end; ++block) {
        C* dw = partial.data() + block * width;
        const int64_t row_end = std::min(rows, (block + 1) * kRowsPerBlock);
        for (int64_t row = block * kRowsPerBlock; row < row_end; ++row) {
          const T* in = input + row * width;
          const T* g = grad + row * width;
          T* out = grad_in + row * width;
          const C r = inverse_rms[row];
          // mean(dn * n) = r * mean(g * w * x), summed in kLanes lanes.
          C lanes[kLanes] = {};
          int64_t i = 0;
          for (; i + kLanes <= width; i += kLanes)
            for (int lane = 0; lane < kLanes; ++lane)
              lanes[lane] += load(g[i + lane]) * load(w[i + lane]) * load(in[i + lane]);
          C dot = 0;
          for (; i < width; ++i) dot += load(g[i]) * load(w[i]) * load(in[i]);
          for (C lane : lanes) dot += lane;
          const C mean_dot = r * dot / C(width);
          for (int64_t j = 0; j < width; ++j) {
            const C n = load(in[j]) * r;
            out[j] = T(r * (load(g[j]) * load(w[j]) - n * mean_dot));
            dw[j] += load(g[j]) * n;
          }
        }
      }
    });
    // Sum block partials in block order, in f64.
    T* dw_out = static_cast<T*>(dweight.raw_data());
    parallel_for(0, width, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double total = 0;
        for (int64_t block = 0; block < blocks; ++block) total += double(partial[size_t(block * width + i)]);
        dw_out[i] = T(C(total));
      }
    });
  });
}

}  // namespace lamina::ops::cpu
