#include "tools/bench_support.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "tensor/error.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"

namespace lamina::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string json_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

llama::LlamaConfig bench_train_config() {
  llama::LlamaConfig config;
  config.vocab_size = 8192;
  config.hidden_size = 512;
  config.intermediate_size = 1536;
  config.num_hidden_layers = 8;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  config.head_dim = 64;
  config.max_position_embeddings = 1024;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  return config;
}

Timing measure_after(const std::function<void()>& setup, const std::function<void()>& body, double min_seconds) {
  setup();
  body();
  std::vector<double> samples;
  const auto start = std::chrono::steady_clock::now();
  while (samples.size() < 3 || seconds_since(start) < min_seconds) {
    setup();
    const auto run_start = std::chrono::steady_clock::now();
    body();
    samples.push_back(seconds_since(run_start));
  }
  std::sort(samples.begin(), samples.end());
  Timing timing;
  timing.runs = int64_t(samples.size());
  timing.best_seconds = samples.front();
  const size_t middle = samples.size() / 2;
  timing.median_seconds = samples.size() % 2 == 1 ? samples[middle] : 0.5 * (samples[middle - 1] + samples[middle]);
  return timing;
}

Timing measure(const std::function<void()>& body, double min_seconds) {
  return measure_after([] {}, body, min_seconds);
}

void run_on_threads(int threads, const std::function<void(int index)>& body) {
  LAMINA_CHECK(threads <= num_threads(), "run_on_threads: ", threads, " threads asked, the pool has ", num_threads());
  // A grain of one index per chunk: with at most `threads` indices, each runs on its own thread.
  parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) body(int(index));
  });
}

double memcpy_bandwidth_gbps(int threads, double min_seconds, size_t bytes) {
  std::unique_ptr<char[]> source(new char[bytes]), destination(new char[bytes]);
  std::memset(source.get(), 1, bytes);  // touch every page before timing
  std::memset(destination.get(), 0, bytes);
  const size_t chunk = (bytes + size_t(threads) - 1) / size_t(threads);
  const Timing timing = measure(
      [&] {
        run_on_threads(threads, [&](int index) {
          const size_t begin = std::min(bytes, size_t(index) * chunk);
          const size_t end = std::min(bytes, begin + chunk);
          std::memcpy(destination.get() + begin, source.get() + begin, end - begin);
        });
      },
      min_seconds);
  return 2.0 * double(bytes) / timing.median_seconds / 1e9;
}

JsonLine& JsonLine::add(const std::string& key, const std::string& value) {
  std::string quoted = "\"";  // appended piece by piece: GCC 12 misreads "x" + s + "x" (-Wrestrict)
  quoted.append(json_escape(value)).append("\"");
  add_raw(key, quoted);
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, double value) {
  if (!std::isfinite(value)) {
    add_raw(key, "null");  // JSON has no inf or nan
    return *this;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.4g", value);
  add_raw(key, text);
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, int64_t value) {
  add_raw(key, std::to_string(value));
  return *this;
}

JsonLine& JsonLine::add(const std::string& key, bool value) {
  add_raw(key, value ? "true" : "false");
  return *this;
}

void JsonLine::add_raw(const std::string& key, const std::string& json_value) {
  if (!body_.empty()) body_ += ',';
  body_.append("\"").append(json_escape(key)).append("\":").append(json_value);
}

void JsonLine::print() const {
  std::printf("{%s}\n", body_.c_str());
  std::fflush(stdout);
}

// Runs `step` with the profiler on, at least three times and for at least `min_seconds`, each
// run inside a scope "step:other" (whose self time is then what no other scope covers), and
// prints one line per scope, largest self time first: seconds and share of the step, inclusive
// seconds (the outermost scope of the name), calls per step. Returns the profiled step's
// seconds (the wall time per step, profiler overhead included).
double print_step_profile(const std::string& suite, const std::function<void()>& step, double min_seconds,
                          const std::string& case_name) {
  profiler::reset();
  profiler::set_enabled(true);
  int64_t steps = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (steps < 3 || elapsed < min_seconds) {
    {
      const profiler::Scope scope("step:other");
      step();
    }
    ++steps;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  profiler::set_enabled(false);
  const std::vector<profiler::ScopeStats> scopes = profiler::snapshot();
  profiler::reset();
  const double per_step = elapsed / double(steps);
  for (const profiler::ScopeStats& scope : scopes) {
    JsonLine line;
    line.add("bench", suite)
        .add("case", case_name)
        .add("op", scope.name)
        .add("seconds_per_step", scope.self_seconds / double(steps))
        .add("share", scope.self_seconds / elapsed)
        .add("inclusive_seconds_per_step", scope.total_seconds / double(steps))
        .add("calls_per_step", double(scope.calls) / double(steps))
        .print();
  }
  return per_step;
}

}  // namespace lamina::cli
