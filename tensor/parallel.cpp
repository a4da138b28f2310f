#include "tensor/parallel.h"

#include <algorithm>
#include <atomic>
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

// Workers sleep on a condition variable; each job is a list of chunks taken by index.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) { resize(threads); }
  ~ThreadPool() { stop_workers(); }

  int size() const { return int(workers_.size()) + 1; }  // the caller counts as a thread

  void resize(int threads) {
    LAMINA_CHECK(threads >= 1, "set_num_threads: need at least 1 thread, got ", threads);
    if (threads == size()) return;
    stop_workers();
    stopping_ = false;
    for (int i = 0; i < threads - 1; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void run(int64_t chunks, const std::function<void(int64_t)>& chunk_body) {
    std::unique_lock<std::mutex> job_lock(job_mutex_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &chunk_body;
      chunk_count_ = chunks;
      next_chunk_ = 0;
      unfinished_ = chunks;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    work_on_chunks();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return unfinished_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void worker_loop() {
    uint64_t seen_generation = 0;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
        if (stopping_) return;
        seen_generation = generation_;
      }
      work_on_chunks();
    }
  }

  void work_on_chunks() {
    t_inside_parallel_region = true;
    while (true) {
      int64_t chunk;
      const std::function<void(int64_t)>* body;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (body_ == nullptr || next_chunk_ >= chunk_count_) break;
        chunk = next_chunk_++;
        body = body_;
      }
      try {
        (*body)(chunk);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (--unfinished_ == 0) done_.notify_all();
    }
    t_inside_parallel_region = false;
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t chunk_count_ = 0;
  int64_t next_chunk_ = 0;
  int64_t unfinished_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
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
