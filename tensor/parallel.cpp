#include "tensor/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "tensor/error.h"

namespace lamina {
namespace {

thread_local bool t_inside_parallel_region = false;

int default_thread_count() {
  if (const char* env = std::getenv("LAMINA_NUM_THREADS")) {
    const int requested = std::atoi(env);
    if (requested > 0) return requested;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// How long an idle worker (and a caller waiting for the last chunks) spins before sleeping:
// $LAMINA_SPIN_US microseconds, default 200. A decode step runs a few hundred parallel loops of
// tens of microseconds each with a little serial work between them; waking a sleeping thread
// through the kernel costs about as much as one such loop, so workers stay hot across the gaps.
// 0 sleeps at once (the behaviour to want when more threads than cores compete).
std::chrono::nanoseconds spin_duration() {
  static const std::chrono::nanoseconds duration = [] {
    if (const char* env = std::getenv("LAMINA_SPIN_US")) {
      const long microseconds = std::atol(env);
      if (microseconds >= 0) return std::chrono::nanoseconds(int64_t(microseconds) * 1000);
    }
    return std::chrono::nanoseconds(200 * 1000);
  }();
  return duration;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until `done()` or the spin duration passes; returns whether done() became true.
template <typename Predicate>
bool spin_until(const Predicate& done) {
  const auto limit = spin_duration();
  if (limit.count() == 0) return done();
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start > limit) return done();
  }
}

// A job is a list of chunks taken by index. The job's generation and the next chunk index share
// one atomic word (generation in the high 32 bits), so a worker that wakes late cannot take a
// chunk of a later job believing it belongs to the one it saw: its claim fails when the
// generation moved on. Workers spin a while for the next job, then sleep on a condition variable.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) { resize(threads); }
  ~ThreadPool() { stop_workers(); }

  int size() const { return int(workers_.size()) + 1; }  // the caller counts as a thread

  void resize(int threads) {
    LAMINA_CHECK(threads >= 1, "set_num_threads: need at least 1 thread, got ", threads);
    if (threads == size()) return;
    std::lock_guard<std::mutex> job_lock(job_mutex_);
    stop_workers();
    stopping_.store(false);
    for (int i = 0; i < threads - 1; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void run(int64_t chunks, const std::function<void(int64_t)>& chunk_body) {
    LAMINA_CHECK(chunks < (int64_t(1) << 31), "parallel_for: too many chunks");
    std::lock_guard<std::mutex> job_lock(job_mutex_);  // one job at a time
    body_.store(&chunk_body, std::memory_order_relaxed);
    chunk_count_.store(chunks, std::memory_order_relaxed);
    error_ = nullptr;
    unfinished_.store(chunks, std::memory_order_relaxed);
    generation_ = (generation_ + 1) & 0xffffffffu;
    ticket_.store(generation_ << 32, std::memory_order_seq_cst);  // publishes the fields above
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      wake_.notify_all();
    }
    work_on_chunks(generation_);
    if (!spin_until([this] { return unfinished_.load(std::memory_order_acquire) == 0; }))
      while (unfinished_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  uint64_t published_generation() const { return ticket_.load(std::memory_order_acquire) >> 32; }

  void worker_loop() {
    uint64_t seen = published_generation();
    while (true) {
      const auto job_or_stop = [&] { return stopping_.load(std::memory_order_acquire) || published_generation() != seen; };
      if (!spin_until(job_or_stop)) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        {
          std::unique_lock<std::mutex> lock(sleep_mutex_);
          wake_.wait(lock, job_or_stop);
        }
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      }
      if (stopping_.load(std::memory_order_acquire)) return;
      seen = published_generation();
      work_on_chunks(seen);
    }
  }

  // Takes chunks of job `generation` until none is left or a later job replaced it.
  void work_on_chunks(uint64_t generation) {
    t_inside_parallel_region = true;
    uint64_t ticket = ticket_.load(std::memory_order_acquire);
    while (true) {
      if ((ticket >> 32) != generation) break;
      const int64_t chunk = int64_t(ticket & 0xffffffffu);
      if (chunk >= chunk_count_.load(std::memory_order_relaxed)) break;
      if (!ticket_.compare_exchange_weak(ticket, ticket + 1, std::memory_order_acq_rel, std::memory_order_acquire))
        continue;  // `ticket` now holds the current value
      try {
        (*body_.load(std::memory_order_relaxed))(chunk);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      unfinished_.fetch_sub(1, std::memory_order_acq_rel);
      ticket = ticket_.load(std::memory_order_acquire);
    }
    t_inside_parallel_region = false;
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(sleep_mutex_);
      stopping_.store(true);
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_;    // one job (or resize) at a time
  std::mutex sleep_mutex_;  // guards sleeping; the job itself is lock-free
  std::mutex error_mutex_;
  std::condition_variable wake_;
  // The job: stored by run() before ticket_, read by workers after they load it (atomic because a
  // late worker may read them while the next job is being set up; its claim then fails).
  std::atomic<const std::function<void(int64_t)>*> body_{nullptr};
  std::atomic<int64_t> chunk_count_{0};
  uint64_t generation_ = 0;  // run()'s own copy (only run() and resize() write the ticket)
  std::atomic<uint64_t> ticket_{0};  // generation << 32 | next chunk
  std::atomic<int64_t> unfinished_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;
};

ThreadPool& pool() {
  static ThreadPool instance(default_thread_count());
  return instance;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int threads) { pool().resize(threads); }

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& body) {
  if (end <= begin) return;
  const int64_t total = end - begin;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = std::min<int64_t>(num_threads(), (total + grain - 1) / grain);
  if (chunks <= 1 || t_inside_parallel_region) {
    body(begin, end);
    return;
  }
  pool().run(chunks, [&](int64_t chunk) {
    const int64_t chunk_begin = begin + total * chunk / chunks;
    const int64_t chunk_end = begin + total * (chunk + 1) / chunks;
    if (chunk_begin < chunk_end) body(chunk_begin, chunk_end);
  });
}

}  // namespace lamina
