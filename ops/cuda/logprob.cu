// Per-token log-probs, distribution statistics and log1mexp on the GPU, the twins of
// ops/cpu/logprob.cpp (formulas and backward derivations there). Per row of logits x [V], with
// s = 1 / temperature, m = max x and lse = m s + log sum_j exp((x_j - m) s):
//   logprob  = x[label] s - lse                         (0, and lse 0, where the mask is false)
//   backward dx_j = -(g s) exp(x_j s - lse), plus g s at the label
//   stats    entropy = log t - w / t, log sum p^2 = log q - 2 log t, mean = sum x / V,
//            argmax match = first argmax of x == label,
//            with t = sum e_j, w = sum e_j d_j, q = sum e_j^2, e_j = exp(d_j), d_j = (x_j - m) s
//
// Rows lie at logits + row_offsets[n] (a row-strided view such as logits[:, :-1] is read in
// place); the offsets computed on the host are copied to the device once per call. Masked rows
// are skipped (their labels are never read) and get 0 / false.
//
// Chunked over the vocabulary as ops/cuda/cross_entropy.cu, so that a few 128K rows still fill
// the GPU: one block per (row, chunk of kVocabChunk entries), then one thread per row merges the
// chunks. The log-prob forward reduces each chunk to (max, sum exp((x - max) s)) in one pass and
// rescales when merging. The statistics are metrics, so they take the simpler and exact route:
// a first kernel finds each chunk's max and first argmax, a second sums e_j, e_j d_j, e_j^2 and
// x_j against the row's true max (the CPU's expressions element for element, so -inf and NaN
// entries give what the CPU gives), a third adds the chunks up.
#include <limits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"
#include "ops/cuda/map.cuh"
#include "ops/cuda/vocab_chunks.cuh"

namespace lamina::ops::cuda {
namespace {

constexpr int64_t kMaxChunks = 65535;  // grid y
constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();
constexpr int kStatSums = 4;  // t, w, q and sum x per (row, chunk)

struct MinIndexOp {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};

// ---- token_logprobs forward: per (row, chunk) (max, sum exp((x - max) s)), then per row

template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads)
    logprob_chunk_kernel(compute_t<T>* stats, const T* logits, const int64_t* row_offsets, const bool* keep,
                         int64_t vocab, int64_t chunks, compute_t<T> inv_temperature) {
  using C = compute_t<T>;
  __shared__ C scratch[32];
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  if (!keep[row]) return;  // the whole block: the merge writes 0 without reading these stats
  const int64_t begin = chunk * kVocabChunk, end = min64(vocab, begin + kVocabChunk);
  const ChunkStats<C> chunk_stats =
      chunk_max_and_sum_exp<V>(logits + row_offsets[row], begin, end, inv_temperature, scratch);
  if (threadIdx.x == 0) {
    stats[(row * chunks + chunk) * 2] = chunk_stats.peak;
    stats[(row * chunks + chunk) * 2 + 1] = chunk_stats.total;
  }
}

template <typename T, typename I>
__global__ void logprob_merge_kernel(compute_t<T>* logprobs, compute_t<T>* lse, const compute_t<T>* stats, const T* logits,
                                     const int64_t* row_offsets, const I* labels, const bool* keep, int64_t rows,
                                     int64_t chunks, compute_t<T> inv_temperature) {
  using C = compute_t<T>;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    if (!keep[row]) {
      logprobs[row] = C(0);
      lse[row] = C(0);
      continue;
    }
    const C log_total = merge_chunk_stats(stats + row * chunks * 2, chunks, inv_temperature);
    lse[row] = log_total;
    logprobs[row] = load(logits[row_offsets[row] + int64_t(labels[row])]) * inv_temperature - log_total;
  }
}

// ---- token_logprobs backward: elementwise over (row, chunk) blocks; grad_logits contiguous [rows, V]

template <typename T, typename I, int V>
__global__ void __launch_bounds__(kMaxRowThreads)
    logprob_backward_kernel(T* grad_logits, const compute_t<T>* grad_logprobs, const T* logits,
                            const int64_t* row_offsets, const I* labels, const bool* keep, const compute_t<T>* lse,
                            int64_t vocab, compute_t<T> inv_temperature) {
  using C = compute_t<T>;
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  const int64_t begin = chunk * kVocabChunk, end = min64(vocab, begin + kVocabChunk);
  T* dx = grad_logits + row * vocab;
  if (!keep[row]) {
    Pack<T, V> zeros;
#pragma unroll
    for (int v = 0; v < V; ++v) zeros.values[v] = convert<T>(C(0));
    for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V)
      store_pack<V>(dx + j, zeros);
    return;
  }
  const T* x = logits + row_offsets[row];
  const int64_t label = int64_t(labels[row]);
  const C scale = grad_logprobs[row] * inv_temperature, shift = lse[row];
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V) {
    const Pack<T, V> values = load_pack<V>(x + j);
    Pack<T, V> result;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const C minus_p = -scale * dmath::exp(load(values.values[v]) * inv_temperature - shift);
      // The CPU stores -g s p, then adds g s at the label to what it stored.
      result.values[v] = j + v == label ? convert<T>(round_through<T>(minus_p) + scale) : convert<T>(minus_p);
    }
    store_pack<V>(dx + j, result);
  }
}

// ---- token_distribution_stats: chunk max and first argmax, chunk sums against the row max, merge

template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads)
    chunk_argmax_kernel(compute_t<T>* maxima, int64_t* first_index, const T* logits, const int64_t* row_offsets,
                        const bool* keep, int64_t vocab, int64_t chunks) {
  using C = compute_t<T>;
  __shared__ C scratch[32];
  __shared__ int64_t index_scratch[32];
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  if (!keep[row]) return;
  const int64_t begin = chunk * kVocabChunk, end = min64(vocab, begin + kVocabChunk);
  const T* x = logits + row_offsets[row];
  C local_max = C(-INFINITY);
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V) {
    const Pack<T, V> values = load_pack<V>(x + j);
#pragma unroll
    for (int v = 0; v < V; ++v) local_max = MaxOp{}(local_max, load(values.values[v]));
  }
  const C peak = block_reduce(local_max, MaxOp{}, C(-INFINITY), scratch);
  // NaN never equals the peak: an all-NaN chunk has no index (kNoIndex).
  int64_t local_index = kNoIndex;
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end && local_index == kNoIndex; j += int64_t(blockDim.x) * V) {
    const Pack<T, V> values = load_pack<V>(x + j);
#pragma unroll
    for (int v = 0; v < V; ++v)
      if (local_index == kNoIndex && load(values.values[v]) == peak) local_index = j + v;
  }
  const int64_t index = block_reduce(local_index, MinIndexOp{}, kNoIndex, index_scratch);
  if (threadIdx.x == 0) {
    maxima[row * chunks + chunk] = peak;
    first_index[row * chunks + chunk] = index;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads)
    stats_chunk_kernel(compute_t<T>* sums, const compute_t<T>* maxima, const T* logits, const int64_t* row_offsets,
                       const bool* keep, int64_t vocab, int64_t chunks, compute_t<T> inv_temperature) {
  using C = compute_t<T>;
  __shared__ C scratch[32];
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  if (!keep[row]) return;
  C local_peak = C(-INFINITY);
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) local_peak = MaxOp{}(local_peak, maxima[row * chunks + c]);
  const C peak = block_reduce(local_peak, MaxOp{}, C(-INFINITY), scratch);
  const int64_t begin = chunk * kVocabChunk, end = min64(vocab, begin + kVocabChunk);
  const T* x = logits + row_offsets[row];
  C total = C(0), weighted = C(0), squares = C(0), raw_sum = C(0);
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V) {
    const Pack<T, V> values = load_pack<V>(x + j);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const C value = load(values.values[v]);
      const C shifted = (value - peak) * inv_temperature;
      const C e = dmath::exp(shifted);
      total += e;
      weighted += e == C(0) ? C(0) : e * shifted;  // p log p -> 0 as p -> 0 (a -inf logit: not 0 * -inf)
      squares += e * e;
      raw_sum += value;
    }
  }
  total = block_reduce(total, SumOp{}, C(0), scratch);
  weighted = block_reduce(weighted, SumOp{}, C(0), scratch);
  squares = block_reduce(squares, SumOp{}, C(0), scratch);
  raw_sum = block_reduce(raw_sum, SumOp{}, C(0), scratch);
  if (threadIdx.x == 0) {
    C* out = sums + (row * chunks + chunk) * kStatSums;
    out[0] = total;
    out[1] = weighted;
    out[2] = squares;
    out[3] = raw_sum;
  }
}

template <typename T, typename I>
__global__ void stats_merge_kernel(compute_t<T>* entropy, compute_t<T>* logit_mean, compute_t<T>* log_sum_sq, bool* matches,
                                   const compute_t<T>* sums, const compute_t<T>* maxima, const int64_t* first_index,
                                   const T* logits, const int64_t* row_offsets, const I* labels, const bool* keep,
                                   int64_t rows, int64_t vocab, int64_t chunks) {
  using C = compute_t<T>;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    if (!keep[row]) {
      entropy[row] = logit_mean[row] = log_sum_sq[row] = C(0);
      matches[row] = false;
      continue;
    }
    C total = C(0), weighted = C(0), squares = C(0), raw_sum = C(0), peak = C(-INFINITY);
    for (int64_t c = 0; c < chunks; ++c) {
      const C* chunk_sums = sums + (row * chunks + c) * kStatSums;
      total += chunk_sums[0];
      weighted += chunk_sums[1];
      squares += chunk_sums[2];
      raw_sum += chunk_sums[3];
      peak = MaxOp{}(peak, maxima[row * chunks + c]);
    }
    // The CPU keeps the first x_j > x[best], starting from best = 0: the first maximum of the
    // non-NaN entries, or 0 when x[0] is NaN (nothing compares greater than it).
    int64_t best = kNoIndex;
    for (int64_t c = 0; c < chunks; ++c)
      if (maxima[row * chunks + c] == peak) best = min64(best, first_index[row * chunks + c]);
    const C first = load(logits[row_offsets[row]]);
    if (first != first) best = 0;
    const C log_total = dmath::log(total);
    entropy[row] = log_total - weighted / total;
    log_sum_sq[row] = dmath::log(squares) - C(2) * log_total;
    logit_mean[row] = raw_sum / C(vocab);
    matches[row] = best == int64_t(labels[row]);
  }
}

// ---- log1mexp: elementwise maps

// log(1 - e^x), switching at -ln 2 between log1p(-e^x) and log(-expm1(x)) (Maechler 2012).
struct Log1mexpMath {
  template <typename C>
  __device__ C operator()(C v) const {
    return v < C(-0.693147180559945309) ? dmath::log1p(-dmath::exp(v)) : dmath::log(-dmath::expm1(v));
  }
};

struct Log1mexpBackwardMath {
  template <typename C>
  __device__ C operator()(C g, C v) const {
    return -g / dmath::expm1(-v);
  }
};

// ---- host side

struct RowLaunch {
  int64_t rows = 0, vocab = 0, chunks = 0;
  Tensor offsets;  // i64 [rows] on the logits' device
};

RowLaunch prepare_rows(const char* op, const Tensor& logits, const std::vector<int64_t>& row_offsets) {
  RowLaunch launch;
  launch.rows = int64_t(row_offsets.size());
  launch.vocab = logits.size(-1);
  launch.chunks = (launch.vocab + kVocabChunk - 1) / kVocabChunk;
  if (launch.rows == 0) return launch;
  LAMINA_CHECK(launch.vocab > 0, op, ": empty vocabulary");
  LAMINA_CHECK(launch.rows < (int64_t(1) << 31), op, ": ", launch.rows, " rows exceed the CUDA grid");
  LAMINA_CHECK(launch.chunks <= kMaxChunks, op, ": a vocabulary of ", launch.vocab, " exceeds the CUDA grid (",
               kMaxChunks, " chunks of ", kVocabChunk, ")");
  launch.offsets = to_device(Tensor::from_vector(row_offsets, {launch.rows}, DType::i64), logits.device());
  return launch;
}

// Whether every logits row (at base + offset) and the other row-major rows can be read in packs.
template <typename T>
bool rows_at_offsets_packable(const Tensor& logits, const std::vector<int64_t>& row_offsets,
                              std::initializer_list<const void*> others) {
  const int64_t vocab = logits.size(-1);
  if (!rows_packable<T>(vocab, {logits.raw_data()}) || !rows_packable<T>(vocab, others)) return false;
  for (int64_t offset : row_offsets)
    if (offset % kPack<T> != 0) return false;
  return true;
}

// One block per (row, chunk): rows on grid x (up to 2^31 - 1), chunks on grid y.
dim3 chunk_grid(const RowLaunch& launch) { return dim3(unsigned(launch.rows), unsigned(launch.chunks)); }

template <int V>
int chunk_threads(const RowLaunch& launch) {
  return row_threads(std::min(launch.vocab, kVocabChunk) / V);
}

}  // namespace

void token_logprobs(const Tensor& logprobs, const Tensor& lse, const Tensor& logits,
                    const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                    double temperature) {
  const RowLaunch launch = prepare_rows("token_logprobs", logits, row_offsets);
  if (launch.rows == 0) return;
  const int device = logits.device().index;
  const cudaStream_t stream = stream_of(logits);
  visit_floating(logits.dtype(), "token_logprobs", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    const C inv_temperature = C(1.0 / temperature);
    const Tensor stats = Tensor::empty({launch.rows, launch.chunks, 2}, lse.dtype(), logits.device());
    const auto chunk_kernel = [&](auto width) {
      constexpr int V = decltype(width)::value;
      logprob_chunk_kernel<T, V><<<chunk_grid(launch), chunk_threads<V>(launch), 0, stream>>>(
          data_of<C>(stats), data_of<const T>(logits), data_of<const int64_t>(launch.offsets),
          data_of<const bool>(mask), launch.vocab, launch.chunks, inv_temperature);
    };
    if (rows_at_offsets_packable<T>(logits, row_offsets, {})) {
      chunk_kernel(std::integral_constant<int, kPack<T>>{});
    } else {
      chunk_kernel(std::integral_constant<int, 1>{});
    }
    LAMINA_CUDA_CHECK_LAUNCH("token_logprobs (chunks)");
    visit_index(labels.dtype(), "token_logprobs", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      logprob_merge_kernel<T, I><<<grid_for(launch.rows, device), kThreads, 0, stream>>>(
          data_of<C>(logprobs), data_of<C>(lse), data_of<const C>(stats), data_of<const T>(logits),
          data_of<const int64_t>(launch.offsets), data_of<const I>(labels), data_of<const bool>(mask), launch.rows,
          launch.chunks, inv_temperature);
      LAMINA_CUDA_CHECK_LAUNCH("token_logprobs (rows)");
    });
  });
}

void token_logprobs_backward(const Tensor& grad_logits, const Tensor& grad_logprobs, const Tensor& logits,
                             const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                             const Tensor& lse, double temperature) {
  const RowLaunch launch = prepare_rows("token_logprobs_backward", logits, row_offsets);
  if (launch.rows == 0) return;
  const cudaStream_t stream = stream_of(logits);
  visit_floating(logits.dtype(), "token_logprobs_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    const C inv_temperature = C(1.0 / temperature);
    visit_index(labels.dtype(), "token_logprobs_backward", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      const auto backward_kernel = [&](auto width) {
        constexpr int V = decltype(width)::value;
        logprob_backward_kernel<T, I, V><<<chunk_grid(launch), chunk_threads<V>(launch), 0, stream>>>(
            data_of<T>(grad_logits), data_of<const C>(grad_logprobs), data_of<const T>(logits),
            data_of<const int64_t>(launch.offsets), data_of<const I>(labels), data_of<const bool>(mask),
            data_of<const C>(lse), launch.vocab, inv_temperature);
      };
      if (rows_at_offsets_packable<T>(logits, row_offsets, {grad_logits.raw_data()})) {
        backward_kernel(std::integral_constant<int, kPack<T>>{});
      } else {
        backward_kernel(std::integral_constant<int, 1>{});
      }
      LAMINA_CUDA_CHECK_LAUNCH("token_logprobs_backward");
    });
  });
}

void token_distribution_stats(const TokenDistributionStats& stats, const Tensor& logits,
                              const std::vector<int64_t>& row_offsets, const Tensor& labels, const Tensor& mask,
                              double temperature) {
  const RowLaunch launch = prepare_rows("token_distribution_stats", logits, row_offsets);
  if (launch.rows == 0) return;
  const int device = logits.device().index;
  const cudaStream_t stream = stream_of(logits);
  visit_floating(logits.dtype(), "token_distribution_stats", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    const C inv_temperature = C(1.0 / temperature);
    const DType math_dtype = stats.entropy.dtype();
    const Tensor maxima = Tensor::empty({launch.rows, launch.chunks}, math_dtype, logits.device());
    const Tensor first_index = Tensor::empty({launch.rows, launch.chunks}, DType::i64, logits.device());
    const Tensor sums = Tensor::empty({launch.rows, launch.chunks, kStatSums}, math_dtype, logits.device());
    const auto chunk_kernels = [&](auto width) {
      constexpr int V = decltype(width)::value;
      chunk_argmax_kernel<T, V><<<chunk_grid(launch), chunk_threads<V>(launch), 0, stream>>>(
          data_of<C>(maxima), data_of<int64_t>(first_index), data_of<const T>(logits),
          data_of<const int64_t>(launch.offsets), data_of<const bool>(mask), launch.vocab, launch.chunks);
      LAMINA_CUDA_CHECK_LAUNCH("token_distribution_stats (chunk max)");
      stats_chunk_kernel<T, V><<<chunk_grid(launch), chunk_threads<V>(launch), 0, stream>>>(
          data_of<C>(sums), data_of<const C>(maxima), data_of<const T>(logits), data_of<const int64_t>(launch.offsets),
          data_of<const bool>(mask), launch.vocab, launch.chunks, inv_temperature);
      LAMINA_CUDA_CHECK_LAUNCH("token_distribution_stats (chunk sums)");
    };
    if (rows_at_offsets_packable<T>(logits, row_offsets, {})) {
      chunk_kernels(std::integral_constant<int, kPack<T>>{});
    } else {
      chunk_kernels(std::integral_constant<int, 1>{});
    }
    visit_index(labels.dtype(), "token_distribution_stats", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      stats_merge_kernel<T, I><<<grid_for(launch.rows, device), kThreads, 0, stream>>>(
          data_of<C>(stats.entropy), data_of<C>(stats.logit_mean), data_of<C>(stats.log_sum_sq_probs),
          data_of<bool>(stats.argmax_matches), data_of<const C>(sums), data_of<const C>(maxima),
          data_of<const int64_t>(first_index), data_of<const T>(logits), data_of<const int64_t>(launch.offsets),
          data_of<const I>(labels), data_of<const bool>(mask), launch.rows, launch.vocab, launch.chunks);
      LAMINA_CUDA_CHECK_LAUNCH("token_distribution_stats (rows)");
    });
  });
}

void log1mexp(const Tensor& out, const Tensor& x) {
  visit_floating(x.dtype(), "log1mexp", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map1<T, T>("log1mexp", out, x, Log1mexpMath{});
  });
}

void log1mexp_backward(const Tensor& grad_in, const Tensor& grad_out, const Tensor& x) {
  visit_floating(x.dtype(), "log1mexp_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map2<T, T, T>("log1mexp_backward", grad_in, grad_out, x, Log1mexpBackwardMath{});
  });
}

}  // namespace lamina::ops::cuda
