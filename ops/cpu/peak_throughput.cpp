// Micro-benchmarks of the CPU's arithmetic peak. Each runs chains of independent multiply-adds
// on values that never leave the registers (or tiles), enough chains to cover the latency, on
// every thread at once; the rate is total flops over the wall time of the slowest thread.
#include "ops/cpu/peak_throughput.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_bf16_kernels.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

#if defined(__x86_64__)

// 12 independent chains: more than latency x throughput (4 x 2) of FMA on current cores.
constexpr int kChains = 12;

// Two lanes of a sum of chains: enough for the result to depend on the work. (GCC 12's
// _mm512_reduce_add_ps trips -Wuninitialized inside its own header.)
__attribute__((target("avx512f"))) float lane_sum(__m512 sum) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  return lanes[0] + lanes[15];
}

// Returns a value that depends on every chain, so the compiler cannot drop the work.
__attribute__((target("avx512f"))) float fma512_loop(int64_t iterations) {
  __m512 chains[kChains];
  for (int i = 0; i < kChains; ++i) chains[i] = _mm512_set1_ps(0.001f * float(i));
  const __m512 scale = _mm512_set1_ps(0.999999f), offset = _mm512_set1_ps(1e-7f);
  for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) chains[i] = _mm512_fmadd_ps(chains[i], scale, offset);
  }
  __m512 sum = chains[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, chains[i]);
  return lane_sum(sum);
}

__attribute__((target("avx2,fma"))) float fma256_loop(int64_t iterations) {
  __m256 chains[kChains];
  for (int i = 0; i < kChains; ++i) chains[i] = _mm256_set1_ps(0.001f * float(i));
  const __m256 scale = _mm256_set1_ps(0.999999f), offset = _mm256_set1_ps(1e-7f);
  for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) chains[i] = _mm256_fmadd_ps(chains[i], scale, offset);
  }
  __m256 sum = chains[0];
  for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, chains[i]);
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  return lanes[0] + lanes[7];
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) float dpbf16_loop(int64_t iterations) {
  __m512 chains[kChains];
  for (int i = 0; i < kChains; ++i) chains[i] = _mm512_set1_ps(0.001f * float(i));
  const __m512bh left = (__m512bh)_mm512_set1_epi16(0x3f80);   // bf16 1.0
  const __m512bh right = (__m512bh)_mm512_set1_epi16(0x3380);  // bf16 2^-24
  for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) chains[i] = _mm512_dpbf16_ps(chains[i], left, right);
  }
  __m512 sum = chains[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, chains[i]);
  return lane_sum(sum);
}

// Six accumulator tiles fed by one A and one B tile, without loads: six independent chains
// cover tdpbf16ps's latency (about 3x its issue interval of 16 cycles on Sapphire Rapids).
constexpr int kAmxChains = 6;
__attribute__((target("amx-tile,amx-bf16"))) float amx_loop(int64_t iterations) {
  gemm_bf16_detail::amx_configure();  // the GEMM's tile shapes: 8 tiles of 16 rows x 64 bytes
  alignas(64) uint16_t operand[16 * 32];
  std::fill(operand, operand + 16 * 32, uint16_t(0x3380));  // bf16 2^-24: sums stay finite
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  _tile_loadd(6, operand, 64);
  _tile_loadd(7, operand, 64);
  for (int64_t n = 0; n < iterations; ++n) {
    _tile_dpbf16ps(0, 6, 7);
    _tile_dpbf16ps(1, 6, 7);
    _tile_dpbf16ps(2, 6, 7);
    _tile_dpbf16ps(3, 6, 7);
    _tile_dpbf16ps(4, 6, 7);
    _tile_dpbf16ps(5, 6, 7);
  }
  alignas(64) float result[16 * 16];
  _tile_stored(0, result, 64);
  gemm_bf16_detail::amx_release();
  return result[0];
}

#endif

// Runs loop(iterations) on `threads` threads at once; GFLOP/s over all of them. The count is
// calibrated on one thread first so the timed run takes about target_seconds.
template <typename Loop>
double measure(int threads, double flops_per_iteration, double target_seconds, const Loop& loop) {
  using Clock = std::chrono::steady_clock;
  std::atomic<float> sink{0};
  int64_t iterations = 1000;
  for (;;) {
    const auto start = Clock::now();
    sink = sink + loop(iterations);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (seconds > target_seconds / 20 || iterations > (int64_t(1) << 40)) {
      iterations = std::max<int64_t>(1, int64_t(double(iterations) * target_seconds / std::max(seconds, 1e-9)));
      break;
    }
    iterations *= 4;
  }
  if (threads == 1) {
    const auto start = Clock::now();
    sink = sink + loop(iterations);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return flops_per_iteration * double(iterations) / seconds / 1e9;
  }
  const ThreadCountGuard thread_scope(threads);
  const auto start = Clock::now();
  parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) sink = sink + loop(iterations);
  });
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return flops_per_iteration * double(iterations) * double(threads) / seconds / 1e9;
}

}  // namespace

PeakThroughput measure_peak_throughput(int threads) {
  return measure_peak_throughput(threads, 0.05);  // three timed runs plus calibration: ~0.2 s
}

PeakThroughput measure_peak_throughput(int threads, double seconds_each) {
  threads = std::max(threads, 1);
  PeakThroughput peak;
#if defined(__x86_64__)
  const CpuFeatures& features = cpu_features();
  const double seconds = std::max(seconds_each, 1e-4);
  if (features.avx512f) {
    peak.f32_fma_gflops = measure(threads, 2.0 * 16 * kChains, seconds, fma512_loop);
  } else if (features.avx2_fma) {
    peak.f32_fma_gflops = measure(threads, 2.0 * 8 * kChains, seconds, fma256_loop);
  }
  // vdpbf16ps: 16 lanes, each two multiply-adds.
  if (features.avx512bf16) peak.bf16_dot_gflops = measure(threads, 2.0 * 32 * kChains, seconds, dpbf16_loop);
  // tdpbf16ps: a 16x16 tile += 16x32 by 32x16, kAmxChains per iteration.
  if (features.amx_bf16) {
    peak.amx_bf16_gflops = measure(threads, kAmxChains * 2.0 * 16 * 16 * 32, seconds, amx_loop);
  }
#endif
  return peak;
}

}  // namespace lamina::ops::cpu
