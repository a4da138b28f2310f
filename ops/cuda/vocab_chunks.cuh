// Row reductions over long vocabularies, shared by cross_entropy.cu and logprob.cu. A row is cut
// into chunks of kVocabChunk entries so that a few 128K-entry rows still fill the GPU: one block
// reduces a chunk to (max, sum exp((x - max) s)), then one thread per row merges its chunks into
// log sum_j exp(x_j s), with s = 1 / temperature (1 for cross-entropy, where the scaling is exact).
#pragma once

#include "ops/cuda/common.cuh"

namespace lamina::ops::cuda {

constexpr int64_t kVocabChunk = 16384;  // vocabulary entries per block (a multiple of every pack size)

template <typename C>
struct ChunkStats {
  C peak;   // max of the chunk's entries (NaN ignored)
  C total;  // sum of exp((x - peak) s)
};

// Block-wide over x[begin, end), read in packs of V from `begin + threadIdx.x * V`; every thread of
// the block must call it (two block reductions share `scratch`). -inf entries add 0 (also in an
// all -inf chunk, where -inf - -inf would be NaN); a NaN entry makes the sum NaN, as on the CPU
// (the max ignores NaN, the sum does not).
template <int V, typename T>
__device__ __forceinline__ ChunkStats<compute_t<T>> chunk_max_and_sum_exp(const T* x, int64_t begin, int64_t end,
                                                                       compute_t<T> scale, compute_t<T>* scratch) {
  using C = compute_t<T>;
  C local_max = C(-INFINITY);
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V) {
    const Pack<T, V> values = load_pack<V>(x + j);
#pragma unroll
    for (int v = 0; v < V; ++v) local_max = MaxOp{}(local_max, load(values.values[v]));
  }
  const C peak = block_reduce(local_max, MaxOp{}, C(-INFINITY), scratch);
  C local_sum = C(0);
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V) {
    const Pack<T, V> values = load_pack<V>(x + j);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const C value = load(values.values[v]);
      local_sum += value == C(-INFINITY) ? C(0) : dmath::exp((value - peak) * scale);
    }
  }
  return {peak, block_reduce(local_sum, SumOp{}, C(0), scratch)};
}

// A row's log sum_j exp(x_j s) from its chunks' (peak, total) pairs at stats[2c], stats[2c + 1]:
// M s + log sum_c total_c exp((peak_c - M) s), M the largest peak. NaN when every entry is -inf
// (or NaN): as on the CPU, such a row has no finite normaliser.
template <typename C>
__device__ __forceinline__ C merge_chunk_stats(const C* stats, int64_t chunks, C scale) {
  C peak = C(-INFINITY);
  for (int64_t c = 0; c < chunks; ++c) peak = MaxOp{}(peak, stats[2 * c]);
  if (peak == C(-INFINITY)) return C(NAN);
  C total = C(0);
  for (int64_t c = 0; c < chunks; ++c) {
    const C chunk_peak = stats[2 * c], chunk_sum = stats[2 * c + 1];
    total += chunk_peak == C(-INFINITY) ? chunk_sum : chunk_sum * dmath::exp((chunk_peak - peak) * scale);
  }
  return peak * scale + dmath::log(total);
}

}  // namespace lamina::ops::cuda
