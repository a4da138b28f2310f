// Shared pieces of the benchmark suites: timing, baselines on plain threads, JSON lines.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "models/llama/config.h"

namespace lamina::cli {

// The model of `lamina bench train` (and of the suites that measure other training steps on
// it, `bench preference`): a ~30M-parameter Llama-3 shape, dim 512, 8 layers, 8 heads / 4 kv
// heads, ffn 1536, vocab 8192, f32.
llama::LlamaConfig bench_train_config();

struct Timing {
  double median_seconds = 0;
  double best_seconds = 0;
  int64_t runs = 0;
};

// Runs `body` once to warm up (caches, allocator, thread pool), then repeatedly until at
// least `min_seconds` have passed and at least three runs were made.
Timing measure(const std::function<void()>& body, double min_seconds);
// The same, but each run first calls `setup` untimed (what the timed part needs, such as a
// prefilled KV cache) and times only `body`: a part of a run measured directly, not as the
// difference of two noisy medians.
Timing measure_after(const std::function<void()>& setup, const std::function<void()>& body, double min_seconds);

// Runs body(0) ... body(threads - 1) concurrently on lamina's thread pool, which must have at
// least `threads` threads. Baselines split their work with it so that they and the ops pay the
// same fork-join cost: the ratios then measure the ops, not the threading. (Spawning threads
// per call instead made the 256^3 Eigen baseline 20x slower on a loaded two-core machine.)
void run_on_threads(int threads, const std::function<void(int index)>& body);

// memcpy bandwidth in GB/s (bytes read + bytes written, as the op byte models count), split
// over `threads` threads, buffers touched before timing.
double memcpy_bandwidth_gbps(int threads, double min_seconds, size_t bytes = size_t(256) << 20);

// Runs `step` with the op profiler on (tensor/profiler.h), at least three times and for at least
// `min_seconds`, each run inside a scope "step:other" (whose self time is then what no other
// scope covers), and prints one line per scope, largest self time first: {"bench": suite,
// "case": case_name, "op", seconds and share of the step, inclusive seconds (the outermost scope
// of the name), calls per step}. Returns the profiled step's seconds (wall time per step,
// profiler overhead included).
double print_step_profile(const std::string& suite, const std::function<void()>& step, double min_seconds,
                          const std::string& case_name);

// One flat JSON object, built field by field, printed as one line.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, const std::string& value);
  JsonLine& add(const std::string& key, const char* value) { return add(key, std::string(value)); }
  JsonLine& add(const std::string& key, double value);  // 4 significant digits
  JsonLine& add(const std::string& key, int64_t value);
  JsonLine& add(const std::string& key, int value) { return add(key, int64_t(value)); }
  JsonLine& add(const std::string& key, bool value);
  void print() const;  // to stdout, flushed, so a pipe sees each case as it finishes

 private:
  void add_raw(const std::string& key, const std::string& json_value);
  std::string body_;
};

}  // namespace lamina::cli
