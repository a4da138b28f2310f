// Fused cross-entropy on the GPU, the twin of ops/cpu/cross_entropy.cpp, logits [N, V]:
//   loss_n = lse_n - x[n, t_n],  lse_n = log(sum_j exp(x[n, j]))
//   dx[n, j] = g_n (exp(x[n, j] - lse_n) - [j = t_n])
// Rows whose target is ignore_index get loss 0 and gradient 0; the softmax is never stored.
// Chunked over the vocabulary so that a few long rows (128K vocabularies) still fill the GPU:
// each block reduces one chunk of one row to (max, sum exp(x - max)); a second kernel merges a
// row's chunks, sum_i s_i exp(m_i - M) with M the largest m_i. The backward is elementwise
// over (row, chunk) blocks given the saved lse.
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"
#include "ops/cuda/vocab_chunks.cuh"

namespace lamina::ops::cuda {
namespace {


template <typename T, int V>
__global__ void __launch_bounds__(kMaxRowThreads) chunk_stats_kernel(compute_t<T>* stats, const T* logits, int64_t vocab, int64_t chunks) {
  using C = compute_t<T>;
  __shared__ C scratch[32];
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  const int64_t begin = chunk * kVocabChunk, end = min64(vocab, begin + kVocabChunk);
  const ChunkStats<C> chunk_stats = chunk_max_and_sum_exp<V>(logits + row * vocab, begin, end, C(1), scratch);
  if (threadIdx.x == 0) {
    stats[(row * chunks + chunk) * 2] = chunk_stats.peak;
    stats[(row * chunks + chunk) * 2 + 1] = chunk_stats.total;
  }
}

template <typename T, typename I>
__global__ void merge_chunks_kernel(compute_t<T>* losses, compute_t<T>* lse, const compute_t<T>* stats, const T* logits,
                                    const I* targets, int64_t rows, int64_t vocab, int64_t chunks,
                                    int64_t ignore_index) {
  using C = compute_t<T>;
  for (int64_t row = global_thread(); row < rows; row += grid_threads()) {
    const C log_total = merge_chunk_stats(stats + row * chunks * 2, chunks, C(1));
    lse[row] = log_total;
    const int64_t target = int64_t(targets[row]);
    losses[row] = target == ignore_index ? C(0) : log_total - load(logits[row * vocab + target]);
  }
}

template <typename T, typename I, int V>
__global__ void __launch_bounds__(kMaxRowThreads) cross_entropy_backward_kernel(T* grad_logits, const compute_t<T>* grad_losses, const T* logits,
                                              const I* targets, const compute_t<T>* lse, int64_t vocab,
                                              int64_t ignore_index) {
  using C = compute_t<T>;
  const int64_t row = blockIdx.x, chunk = blockIdx.y;
  const int64_t begin = chunk * kVocabChunk, end = min64(vocab, begin + kVocabChunk);
  const T* x = logits + row * vocab;
  T* dx = grad_logits + row * vocab;
  const int64_t target = int64_t(targets[row]);
  const bool ignored = target == ignore_index;
  const C scale = grad_losses[row], shift = lse[row];
  for (int64_t j = begin + int64_t(threadIdx.x) * V; j < end; j += int64_t(blockDim.x) * V) {
    Pack<T, V> result;
    if (ignored) {
#pragma unroll
      for (int v = 0; v < V; ++v) result.values[v] = convert<T>(C(0));
    } else {
      const Pack<T, V> values = load_pack<V>(x + j);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const C p = scale * dmath::exp(load(values.values[v]) - shift);
        // The CPU stores p, then subtracts g at the target from what it stored.
        result.values[v] = j + v == target ? convert<T>(round_through<T>(p) - scale) : convert<T>(p);
      }
    }
    store_pack<V>(dx + j, result);
  }
}

// One block per (row, chunk): rows on grid x (up to 2^31 - 1), chunks on grid y.
dim3 chunk_grid(int64_t rows, int64_t chunks) { return dim3(unsigned(rows), unsigned(chunks)); }

}  // namespace

void cross_entropy(const Tensor& losses, const Tensor& lse, const Tensor& logits, const Tensor& targets,
                   int64_t ignore_index) {
  const int64_t vocab = logits.size(-1), rows = logits.numel() / std::max<int64_t>(1, vocab);
  if (rows == 0) return;
  LAMINA_CHECK(vocab > 0, "cross_entropy: empty vocabulary");
  LAMINA_CHECK(rows < (int64_t(1) << 31), "cross_entropy: ", rows, " rows exceed the CUDA grid");
  const int64_t chunks = (vocab + kVocabChunk - 1) / kVocabChunk;
  const int device = logits.device().index;
  visit_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    const Tensor stats = Tensor::empty({rows, chunks, 2}, lse.dtype(), logits.device());
    if (rows_packable<T>(vocab, {logits.raw_data()})) {
      constexpr int V = kPack<T>;
      chunk_stats_kernel<T, V>
          <<<chunk_grid(rows, chunks), row_threads(std::min(vocab, kVocabChunk) / V), 0, stream_of(logits)>>>(
              data_of<C>(stats), data_of<const T>(logits), vocab, chunks);
    } else {
      chunk_stats_kernel<T, 1>
          <<<chunk_grid(rows, chunks), row_threads(std::min(vocab, kVocabChunk)), 0, stream_of(logits)>>>(
              data_of<C>(stats), data_of<const T>(logits), vocab, chunks);
    }
    LAMINA_CUDA_CHECK_LAUNCH("cross_entropy (chunks)");
    visit_index(targets.dtype(), "cross_entropy", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      merge_chunks_kernel<T, I><<<grid_for(rows, device), kThreads, 0, stream_of(logits)>>>(
          data_of<C>(losses), data_of<C>(lse), data_of<const C>(stats), data_of<const T>(logits),
          data_of<const I>(targets), rows, vocab, chunks, ignore_index);
      LAMINA_CUDA_CHECK_LAUNCH("cross_entropy (rows)");
    });
  });
}

void cross_entropy_backward(const Tensor& grad_logits, const Tensor& grad_losses, const Tensor& logits,
                            const Tensor& targets, const Tensor& lse, int64_t ignore_index) {
  const int64_t vocab = logits.size(-1), rows = logits.numel() / std::max<int64_t>(1, vocab);
  if (rows == 0 || vocab == 0) return;
  LAMINA_CHECK(rows < (int64_t(1) << 31), "cross_entropy_backward: ", rows, " rows exceed the CUDA grid");
  const int64_t chunks = (vocab + kVocabChunk - 1) / kVocabChunk;
  visit_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    visit_index(targets.dtype(), "cross_entropy_backward", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      if (rows_packable<T>(vocab, {logits.raw_data(), grad_logits.raw_data()})) {
        constexpr int V = kPack<T>;
        cross_entropy_backward_kernel<T, I, V>
            <<<chunk_grid(rows, chunks), row_threads(std::min(vocab, kVocabChunk) / V), 0, stream_of(logits)>>>(
                data_of<T>(grad_logits), data_of<const C>(grad_losses), data_of<const T>(logits),
                data_of<const I>(targets), data_of<const C>(lse), vocab, ignore_index);
      } else {
        cross_entropy_backward_kernel<T, I, 1>
            <<<chunk_grid(rows, chunks), row_threads(std::min(vocab, kVocabChunk)), 0, stream_of(logits)>>>(
                data_of<T>(grad_logits), data_of<const C>(grad_losses), data_of<const T>(logits),
                data_of<const I>(targets), data_of<const C>(lse), vocab, ignore_index);
      }
      LAMINA_CUDA_CHECK_LAUNCH("cross_entropy_backward");
    });
  });
}

}  // namespace lamina::ops::cuda
