// Random fills. Value i of a draw reads Philox words [i*w, i*w + w) of the stream that starts
// at `first_counter` (see tensor/rng.h), so any split across threads gives the same numbers.
#include <cmath>

#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"

namespace lamina::ops::cpu {
namespace {

constexpr int64_t kRandomGrain = 8192;

// Calls fill_range(begin, end, out_pointer) over the contiguous output in parallel chunks.
template <typename T, typename Fill>
void fill_contiguous(const Tensor& out, Fill fill_range) {
  T* base = static_cast<T*>(out.raw_data());
  parallel_for(0, out.numel(), kRandomGrain, [&](int64_t begin, int64_t end) { fill_range(begin, end, base); });
}

}  // namespace

// f64 values take two words (53 random bits); every other dtype takes one (24 bits).
void uniform(const Tensor& out, double low, double high, uint64_t seed, uint64_t first_counter) {
  visit_floating(out.dtype(), "uniform", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_contiguous<T>(out, [&](int64_t begin, int64_t end, T* data) {
      for (int64_t i = begin; i < end; ++i) {
        double unit;
        if constexpr (std::is_same_v<T, double>) {
          unit = uniform53_from_words(philox_word(seed, first_counter, uint64_t(2 * i)),
                                      philox_word(seed, first_counter, uint64_t(2 * i + 1)));
        } else {
          unit = uniform_from_word(philox_word(seed, first_counter, uint64_t(i)));
        }
        data[i] = T(compute_t<T>(low + (high - low) * unit));
      }
    });
  });
}

// Box-Muller on value pairs (2j, 2j+1), which read words 2j and 2j+1 (f64: words 4j..4j+3).
// Computed in f64 so that CPU and GPU round to the same f32.
void normal(const Tensor& out, uint64_t seed, uint64_t first_counter) {
  visit_floating(out.dtype(), "randn", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr bool wide = std::is_same_v<T, double>;
    auto unit_pair = [&](int64_t pair, double& u1, double& u2) {
      if constexpr (wide) {
        const uint64_t w = uint64_t(4 * pair);
        u1 = uniform53_from_words(philox_word(seed, first_counter, w), philox_word(seed, first_counter, w + 1));
        u2 = uniform53_from_words(philox_word(seed, first_counter, w + 2), philox_word(seed, first_counter, w + 3));
      } else {
        u1 = uniform_from_word(philox_word(seed, first_counter, uint64_t(2 * pair)));
        u2 = uniform_from_word(philox_word(seed, first_counter, uint64_t(2 * pair + 1)));
      }
    };
    fill_contiguous<T>(out, [&](int64_t begin, int64_t end, T* data) {
      for (int64_t i = begin; i < end; ++i) {
        double u1, u2;
        unit_pair(i / 2, u1, u2);
        const double radius = std::sqrt(-2.0 * std::log(1.0 - u1));  // 1 - u1 is in (0, 1]
        const double angle = 6.283185307179586476925 * u2;
        data[i] = T(compute_t<T>(radius * (i % 2 == 0 ? std::cos(angle) : std::sin(angle))));
      }
    });
  });
}

// Two words make a 64-bit integer, reduced modulo the range (bias below 2^-32 for any range
// under 2^32).
void randint(const Tensor& out, int64_t low, int64_t high, uint64_t seed, uint64_t first_counter) {
  const uint64_t range = uint64_t(high - low);
  visit_arithmetic(out.dtype(), "randint", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_contiguous<T>(out, [&](int64_t begin, int64_t end, T* data) {
      for (int64_t i = begin; i < end; ++i) {
        const uint64_t bits = (uint64_t(philox_word(seed, first_counter, uint64_t(2 * i))) << 32) |
                              philox_word(seed, first_counter, uint64_t(2 * i + 1));
        data[i] = T(compute_t<T>(low + int64_t(bits % range)));
      }
    });
  });
}

void arange(const Tensor& out, int64_t start, int64_t step) {
  visit_arithmetic(out.dtype(), "arange", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_contiguous<T>(out, [&](int64_t begin, int64_t end, T* data) {
      for (int64_t i = begin; i < end; ++i) data[i] = T(compute_t<T>(start + i * step));
    });
  });
}

}  // namespace lamina::ops::cpu
