// The thread pool (tensor/parallel.h): every index runs exactly once, on many short jobs in a
// row (the decode pattern, where workers spin between jobs and a late worker must not take a
// chunk of the next job), nested calls run inline, an exception in a chunk reaches the caller
// and the pool keeps working, and resizing between jobs.
#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tensor/parallel.h"

using namespace lamina;

TEST_CASE("parallel_for: every index once, over thousands of short jobs and thread counts") {
  for (int threads : {1, 2, 3, 5}) {
    CAPTURE(threads);
    ThreadCountGuard guard(threads);
    CHECK(num_threads() == threads);
    std::vector<std::atomic<int>> hits(257);
    for (int job = 0; job < 3000; ++job) {
      const int64_t end = 1 + job % 257;
      parallel_for(0, end, 1 + job % 5, [&](int64_t begin, int64_t chunk_end) {
        for (int64_t i = begin; i < chunk_end; ++i) hits[size_t(i)].fetch_add(1, std::memory_order_relaxed);
      });
    }
    // Index i is inside jobs whose end exceeds it: those with job % 257 >= i.
    for (int64_t i = 0; i < 257; ++i) {
      int expected = 0;
      for (int job = 0; job < 3000; ++job) expected += (job % 257 >= i) ? 1 : 0;
      CHECK(hits[size_t(i)].load() == expected);
    }
  }
}

TEST_CASE("parallel_for: nested calls run inline, chunks cover the range, errors reach the caller") {
  ThreadCountGuard guard(4);
  std::atomic<int64_t> sum{0};
  parallel_for(0, 64, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      parallel_for(0, 10, 1, [&](int64_t inner_begin, int64_t inner_end) {
        // Inline: one chunk, the whole inner range.
        CHECK(inner_begin == 0);
        CHECK(inner_end == 10);
        sum.fetch_add(i * (inner_end - inner_begin));
      });
  });
  CHECK(sum.load() == 10 * (63 * 64 / 2));

  CHECK_THROWS_WITH(parallel_for(0, 100, 1,
                                 [&](int64_t begin, int64_t) {
                                   if (begin > 0) throw std::runtime_error("chunk failed");
                                 }),
                    "chunk failed");
  // The pool still runs jobs after an error.
  std::atomic<int> count{0};
  parallel_for(0, 1000, 10, [&](int64_t begin, int64_t end) { count.fetch_add(int(end - begin)); });
  CHECK(count.load() == 1000);
}

TEST_CASE("parallel_for: callers on several threads take turns with the pool") {
  ThreadCountGuard guard(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int caller = 0; caller < 3; ++caller)
    callers.emplace_back([&] {
      for (int job = 0; job < 500; ++job)
        parallel_for(0, 40, 1, [&](int64_t begin, int64_t end) { total.fetch_add(end - begin); });
    });
  for (std::thread& caller : callers) caller.join();
  CHECK(total.load() == 3 * 500 * 40);
}
