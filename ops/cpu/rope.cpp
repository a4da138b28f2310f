// Rotary position embedding, Hugging Face "rotate_half" pairing (i, i + D/2).
//   phi = p * f[i] (f32 product, as the references do)
//   forward:  y[i] = x[i] cos - x[i+D/2] sin;  y[i+D/2] = x[i+D/2] cos + x[i] sin
//   backward: the inverse rotation (sin negated), since the rotation is orthogonal.
//
// The cosines and sines depend on the position only: they are computed once per distinct
// position of the call (a table over 0 .. max position when that is no longer than the rows,
// as in training and prefill, where every sequence counts from 0), not once per (batch, token)
// row; a training step rotates q and k in every layer, forward and backward, and spent most of
// that time in cos and sin. Other positions (a large offset in decoding) fall back to per row.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {
namespace {

// cosines and sines of phi = p f[i] for i < half, the sines negated for the inverse rotation.
template <typename C>
void angles_of(int64_t position, const std::vector<float>& frequencies, bool inverse, C* cosines, C* sines) {
  for (size_t i = 0; i < frequencies.size(); ++i) {
    const float angle = float(position) * frequencies[i];
    cosines[i] = std::cos(C(angle));
    sines[i] = inverse ? -std::sin(C(angle)) : std::sin(C(angle));
  }
}

}  // namespace

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
      const auto position_of = [&](int64_t b, int64_t t) -> int64_t {
        return int64_t(
            pos[per_batch_positions ? b * positions.stride(0) + t * positions.stride(1) : t * positions.stride(0)]);
      };
      // The table, when the positions allow one no longer than the rows.
      int64_t lowest = 0, highest = -1;
      for (int64_t b = 0; b < (per_batch_positions ? batch : 1); ++b)
        for (int64_t t = 0; t < tokens; ++t) {
          const int64_t p = position_of(b, t);
          lowest = std::min(lowest, p);
          highest = std::max(highest, p);
        }
      const bool tabled = lowest >= 0 && highest + 1 <= batch * tokens;
      std::vector<C> table_cos, table_sin;
      if (tabled) {
        table_cos.resize(size_t((highest + 1) * half));
        table_sin.resize(size_t((highest + 1) * half));
        for_each_row(highest + 1, 8 * half, [&](int64_t p) {
          angles_of(p, frequencies, inverse, table_cos.data() + p * half, table_sin.data() + p * half);
        });
      }
      const T* input = static_cast<const T*>(x.raw_data());
      T* output = static_cast<T*>(out.raw_data());
      const int64_t step = x.stride(3);
      for_each_row(batch * tokens, heads * head_dim, [&](int64_t row) {
        const int64_t b = row / tokens, t = row % tokens;
        const int64_t p = position_of(b, t);
        C own_cos[256], own_sin[256];  // half <= 256 is checked below before use
        std::vector<C> long_cos, long_sin;
        const C* cosines = nullptr;
        const C* sines = nullptr;
        if (tabled) {
          cosines = table_cos.data() + p * half;
          sines = table_sin.data() + p * half;
        } else if (half <= 256) {
          angles_of(p, frequencies, inverse, own_cos, own_sin);
          cosines = own_cos;
          sines = own_sin;
        } else {
          long_cos.resize(size_t(half));
          long_sin.resize(size_t(half));
          angles_of(p, frequencies, inverse, long_cos.data(), long_sin.data());
          cosines = long_cos.data();
          sines = long_sin.data();
        }
        for (int64_t h = 0; h < heads; ++h) {
          const T* in = input + b * x.stride(0) + t * x.stride(1) + h * x.stride(2);
          T* y = output + (row * heads + h) * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            const C first = load(in[i * step]), second = load(in[(i + half) * step]);
            y[i] = T(first * cosines[i] - second * sines[i]);
            y[i + half] = T(second * cosines[i] + first * sines[i]);
          }
        }
      });
    });
  });
}

}  // namespace lamina::ops::cpu
