// Rotary position embedding, Hugging Face "rotate_half" pairing (i, i + D/2).
//   phi = p * f[i] (f32 product, as the references do)
//   forward:  y[i] = x[i] cos - x[i+D/2] sin;  y[i+D/2] = x[i+D/2] cos + x[i] sin
//   backward: the inverse rotation (sin negated), since the rotation is orthogonal.
#include <vector>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void rope_rotate(const Tensor& out, const Tensor& x, const Tensor& positions, const std::vector<float>& frequencies,
                 bool inverse) {
  const int64_t batch = x.size(0), tokens = x.size(1), heads = x.size(2), head_dim = x.size(3);
  const int64_t half = head_dim / 2;
  const bool per_batch_positions = positions.dim() == 2;
  visit_floating(x.dtype(), "rope", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(positions.dtype(), "rope", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* pos = static_cast<const I*>(positions.raw_data());
      const T* input = static_cast<const T*>(x.raw_data());
      T* output = static_cast<T*>(out.raw_data());
      for_each_row(batch * tokens, heads * head_dim, [&](int64_t row) {
        const int64_t b = row / tokens, t = row % tokens;
        const I p = pos[per_batch_positions ? b * positions.stride(0) + t * positions.stride(1) : t * positions.stride(0)];
        std::vector<C> cosines(static_cast<size_t>(half)), sines(static_cast<size_t>(half));
        for (int64_t i = 0; i < half; ++i) {
          const float angle = float(p) * frequencies[size_t(i)];
          cosines[size_t(i)] = std::cos(C(angle));
          sines[size_t(i)] = inverse ? -std::sin(C(angle)) : std::sin(C(angle));
        }
        for (int64_t h = 0; h < heads; ++h) {
          const T* in = input + b * x.stride(0) + t * x.stride(1) + h * x.stride(2);
          T* y = output + (row * heads + h) * head_dim;
          const int64_t step = x.stride(3);
          for (int64_t i = 0; i < half; ++i) {
            const C first = load(in[i * step]), second = load(in[(i + half) * step]);
            y[i] = T(first * cosines[size_t(i)] - second * sines[size_t(i)]);
            y[i + half] = T(second * cosines[size_t(i)] + first * sines[size_t(i)]);
          }
        }
      });
    });
  });
}

}  // namespace lamina::ops::cpu
