// A small fork-join thread pool for CPU kernels.
//
// parallel_for splits [begin, end) into at most num_threads() contiguous chunks of at least
// `grain` elements and runs them concurrently; the calling thread runs one chunk itself.
// Calls made from inside a chunk run inline, so kernels may nest without oversubscribing.
// Kernels stay deterministic by never letting the chunking decide an accumulation order.
#pragma once

#include <cstdint>
#include <functional>

namespace lamina {

// Default: $LAMINA_NUM_THREADS when set, else the number of hardware threads.
int num_threads();
void set_num_threads(int threads);

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t chunk_begin, int64_t chunk_end)>& body);

// Sets the thread count for a scope, restoring the previous count on exit.
class ThreadCountGuard {
 public:
  explicit ThreadCountGuard(int threads) : previous_(num_threads()) { set_num_threads(threads); }
  ~ThreadCountGuard() { set_num_threads(previous_); }
  ThreadCountGuard(const ThreadCountGuard&) = delete;
  ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;

 private:
  int previous_;
};

}  // namespace lamina
