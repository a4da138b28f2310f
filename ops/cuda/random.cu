// Random fills on the GPU: the Philox4x32-10 streams of tensor/rng.h, value for value, the twin
// of ops/cpu/random.cpp. One thread per 128-bit counter produces every value that reads the
// counter's four words, so each block of Philox rounds runs once.
//
// Exactness: Philox words and uniform_from_word are integer and power-of-two arithmetic, so the
// words and the unit values match the CPU bit for bit. The affine map low + (high - low) u is
// computed as one fused multiply-add in f64, which is what GCC emits for the CPU kernel when it
// may contract (x86-64 with FMA, lamina's default -march=native); for f32/bf16/f16 outputs the
// rounding to the output type hides the difference anyway. Box-Muller's log/sqrt/cos/sin come
// from CUDA's f64 library (within 1-2 ulp of glibc), so normal values agree to f64 rounding.
#include <cmath>

#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

// The four words of counter `counter` under `key` (tensor/rng.h's philox4x32_10).
__device__ __forceinline__ void philox_block(uint64_t counter, uint64_t key, uint32_t (&words)[4]) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0u, c3 = 0u;
  uint32_t key0 = uint32_t(key), key1 = uint32_t(key >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = __umulhi(kMul1, c2), lo1 = kMul1 * c2;
    const uint32_t next0 = hi1 ^ c1 ^ key0, next2 = hi0 ^ c3 ^ key1;
    c0 = next0;
    c1 = lo1;
    c2 = next2;
    c3 = lo0;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}

__device__ __forceinline__ double unit24(uint32_t word) { return double(float(word >> 8) * 5.9604644775390625e-08f); }
__device__ __forceinline__ double unit53(uint32_t high, uint32_t low) {
  return double((uint64_t(high) << 21) ^ (low >> 11)) * 1.1102230246251565e-16;
}

// Value i of the draw reads words [i * w, i * w + w): values per counter = 4 / w.
template <typename T>
__global__ void uniform_kernel(T* out, int64_t count, double low, double span, uint64_t seed, uint64_t first) {
  constexpr int kWords = std::is_same_v<T, double> ? 2 : 1;
  constexpr int kValues = 4 / kWords;
  const int64_t counters = (count + kValues - 1) / kValues;
  for (int64_t c = global_thread(); c < counters; c += grid_threads()) {
    uint32_t words[4];
    philox_block(first + uint64_t(c), seed, words);
#pragma unroll
    for (int v = 0; v < kValues; ++v) {
      const int64_t i = c * kValues + v;
      if (i >= count) break;
      double unit;
      if constexpr (kWords == 2) {
        unit = unit53(words[2 * v], words[2 * v + 1]);
      } else {
        unit = unit24(words[v]);
      }
      out[i] = convert<T>(__fma_rn(span, unit, low));
    }
  }
}

// Box-Muller on pairs (2j, 2j+1): f32-like types read words 2j, 2j+1 (two pairs per counter),
// f64 reads words 4j..4j+3 (one pair per counter).
template <typename T>
__global__ void normal_kernel(T* out, int64_t count, uint64_t seed, uint64_t first) {
  constexpr bool kWide = std::is_same_v<T, double>;
  constexpr int kPairs = kWide ? 1 : 2;
  const int64_t counters = (count + 2 * kPairs - 1) / (2 * kPairs);
  for (int64_t c = global_thread(); c < counters; c += grid_threads()) {
    uint32_t words[4];
    philox_block(first + uint64_t(c), seed, words);
#pragma unroll
    for (int p = 0; p < kPairs; ++p) {
      double u1, u2;
      if constexpr (kWide) {
        u1 = unit53(words[0], words[1]);
        u2 = unit53(words[2], words[3]);
      } else {
        u1 = unit24(words[2 * p]);
        u2 = unit24(words[2 * p + 1]);
      }
      const double radius = dmath::sqrt(-2.0 * dmath::log(1.0 - u1));  // 1 - u1 is in (0, 1]
      const double angle = 6.283185307179586476925 * u2;
      const int64_t i = (c * kPairs + p) * 2;
      if (i < count) out[i] = convert<T>(radius * dmath::cos(angle));
      if (i + 1 < count) out[i + 1] = convert<T>(radius * dmath::sin(angle));
    }
  }
}

// Two words make a 64-bit integer reduced modulo the range: two values per counter.
template <typename T>
__global__ void randint_kernel(T* out, int64_t count, int64_t low, uint64_t range, uint64_t seed, uint64_t first) {
  const int64_t counters = (count + 1) / 2;
  for (int64_t c = global_thread(); c < counters; c += grid_threads()) {
    uint32_t words[4];
    philox_block(first + uint64_t(c), seed, words);
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int64_t i = c * 2 + v;
      if (i >= count) break;
      const uint64_t bits = (uint64_t(words[2 * v]) << 32) | words[2 * v + 1];
      out[i] = convert<T>(low + int64_t(bits % range));
    }
  }
}

template <typename T>
__global__ void arange_kernel(T* out, int64_t count, int64_t start, int64_t step) {
  for (int64_t i = global_thread(); i < count; i += grid_threads()) out[i] = convert<T>(start + i * step);
}

}  // namespace

void uniform(const Tensor& out, double low, double high, uint64_t seed, uint64_t first_counter) {
  const int64_t count = out.numel();
  if (count == 0) return;
  visit_floating(out.dtype(), "uniform", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    const int64_t counters = (count + 3) / 4 * (std::is_same_v<T, double> ? 2 : 1);
    uniform_kernel<T><<<grid_for(counters, out.device().index), kThreads, 0, stream_of(out)>>>(
        data_of<T>(out), count, low, high - low, seed, first_counter);
    LAMINA_CUDA_CHECK_LAUNCH("uniform");
  });
}

void normal(const Tensor& out, uint64_t seed, uint64_t first_counter) {
  const int64_t count = out.numel();
  if (count == 0) return;
  visit_floating(out.dtype(), "randn", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    const int64_t counters = (count + 3) / 4 * (std::is_same_v<T, double> ? 2 : 1);
    normal_kernel<T><<<grid_for(counters, out.device().index), kThreads, 0, stream_of(out)>>>(data_of<T>(out), count,
                                                                                              seed, first_counter);
    LAMINA_CUDA_CHECK_LAUNCH("randn");
  });
}

void randint(const Tensor& out, int64_t low, int64_t high, uint64_t seed, uint64_t first_counter) {
  const int64_t count = out.numel();
  if (count == 0) return;
  visit_arithmetic(out.dtype(), "randint", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    randint_kernel<T><<<grid_for((count + 1) / 2, out.device().index), kThreads, 0, stream_of(out)>>>(
        data_of<T>(out), count, low, uint64_t(high - low), seed, first_counter);
    LAMINA_CUDA_CHECK_LAUNCH("randint");
  });
}

void arange(const Tensor& out, int64_t start, int64_t step) {
  const int64_t count = out.numel();
  if (count == 0) return;
  visit_arithmetic(out.dtype(), "arange", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    arange_kernel<T>
        <<<grid_for(count, out.device().index), kThreads, 0, stream_of(out)>>>(data_of<T>(out), count, start, step);
    LAMINA_CUDA_CHECK_LAUNCH("arange");
  });
}

}  // namespace lamina::ops::cuda
