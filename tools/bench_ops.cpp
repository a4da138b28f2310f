// `lamina bench ops`: throughput of the CPU op catalogue against two baselines measured in
// the same run on the same threads: Eigen's GEMM for matmul (compute-bound), and memcpy for
// everything else (memory-bound). Prints one JSON line per case to stdout, progress to stderr.
//
// GB/s counts the bytes an op must read plus the bytes it must write (each once, 1e9 bytes
// per GB); the byte model of each case is written beside it. memcpy of S bytes counts 2 S.
// Op timings include allocating the op's output, since every caller pays for it; the
// baselines write into buffers allocated and touched once, before timing.

// GCC 12 flags Eigen's AVX-512 GEMM kernel with false -Wmaybe-uninitialized warnings.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "ops/ops.h"
#include "tensor/parallel.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

constexpr double kMatmulTarget = 0.9;        // lamina / Eigen GFLOP/s
constexpr double kMemoryBoundTarget = 0.5;   // op GB/s / memcpy GB/s
constexpr size_t kMemcpyBytes = size_t(256) << 20;
constexpr int64_t kElementwiseCount = int64_t(1) << 24;  // 16M elements: 64 MiB of f32
constexpr int64_t kLlamaHidden = 4096;                   // Llama-3-8B hidden size
constexpr int64_t kLlamaIntermediate = 14336;            // Llama-3-8B MLP width
constexpr int64_t kLlamaVocab = 128256;

struct BenchSettings {
  int threads = 1;
  double min_seconds = 0.3;
};

// ---- baselines

double memcpy_gbps(const BenchSettings& settings) {
  std::unique_ptr<char[]> source(new char[kMemcpyBytes]), destination(new char[kMemcpyBytes]);
  std::memset(source.get(), 1, kMemcpyBytes);  // touch every page before timing
  std::memset(destination.get(), 0, kMemcpyBytes);
  const size_t chunk = (kMemcpyBytes + size_t(settings.threads) - 1) / size_t(settings.threads);
  const Timing timing = measure(
      [&] {
        run_on_threads(settings.threads, [&](int index) {
          const size_t begin = std::min(kMemcpyBytes, size_t(index) * chunk);
          const size_t end = std::min(kMemcpyBytes, begin + chunk);
          std::memcpy(destination.get() + begin, source.get() + begin, end - begin);
        });
      },
      settings.min_seconds);
  return 2.0 * double(kMemcpyBytes) / timing.median_seconds / 1e9;
}

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// c = a * b with plain Eigen, split into one block per thread the way lamina splits it: rows
// of c when c is at least as tall as wide, columns otherwise.
template <typename MatrixB>
void eigen_product(const RowMatrix& a, const MatrixB& b, RowMatrix& c, int threads) {
  const bool split_rows = c.rows() >= c.cols();
  const int64_t extent = split_rows ? c.rows() : c.cols();
  const int64_t block = (extent + threads - 1) / threads;
  run_on_threads(threads, [&](int index) {
    const int64_t begin = std::min(extent, index * block);
    const int64_t length = std::min(extent, begin + block) - begin;
    if (length == 0) return;
    if (split_rows) {
      c.middleRows(begin, length).noalias() = a.middleRows(begin, length) * b;
    } else {
      c.middleCols(begin, length).noalias() = a * b.middleCols(begin, length);
    }
  });
}

// ---- compute-bound cases: a [M, K] @ b [K, N], or @ w^T with w [N, K] (the Linear layout)

struct MatmulCase {
  std::string name;
  int64_t rows, cols, inner;  // M, N, K
  bool transpose_b;
};

void run_matmul_case(const MatmulCase& shape, const BenchSettings& settings) {
  const int64_t m = shape.rows, n = shape.cols, k = shape.inner;
  Generator generator(42);
  const Tensor a = randn({m, k}, generator);
  const Tensor b = shape.transpose_b ? randn({n, k}, generator) : randn({k, n}, generator);
  const Timing lamina_timing = measure([&] { ops::matmul(a, b, false, shape.transpose_b); }, settings.min_seconds);

  const RowMatrix eigen_a = RowMatrix::Random(m, k);
  const RowMatrix eigen_b = shape.transpose_b ? RowMatrix::Random(n, k) : RowMatrix::Random(k, n);
  RowMatrix eigen_c(m, n);
  const Timing eigen_timing = measure(
      [&] {
        if (shape.transpose_b) {
          eigen_product(eigen_a, eigen_b.transpose(), eigen_c, settings.threads);
        } else {
          eigen_product(eigen_a, eigen_b, eigen_c, settings.threads);
        }
      },
      settings.min_seconds);

  const double flops = 2.0 * double(m) * double(n) * double(k);
  const double lamina_gflops = flops / lamina_timing.median_seconds / 1e9;
  const double eigen_gflops = flops / eigen_timing.median_seconds / 1e9;
  const double ratio = lamina_gflops / eigen_gflops;
  const std::string b_shape = shape.transpose_b ? str_cat("[", n, ",", k, "]^T") : str_cat("[", k, ",", n, "]");
  JsonLine()
      .add("bench", "ops")
      .add("case", shape.name)
      .add("threads", settings.threads)
      .add("shape", str_cat("[", m, ",", k, "]@", b_shape))
      .add("dtype", "f32")
      .add("stat", "median")
      .add("runs", lamina_timing.runs)
      .add("seconds", lamina_timing.median_seconds)
      .add("gflops", lamina_gflops)
      .add("best_gflops", flops / lamina_timing.best_seconds / 1e9)
      .add("eigen_gflops", eigen_gflops)
      .add("eigen_threads", settings.threads)
      .add("ratio_vs_eigen", ratio)
      .add("target", kMatmulTarget)
      .add("meets_target", ratio >= kMatmulTarget)
      .print();
}

// ---- memory-bound cases. Each factory allocates its inputs and returns the op to time and
// the bytes that op must move; inputs are only built for the cases that were selected.

struct MemoryBoundRun {
  std::string shape;
  int64_t bytes;
  std::function<void()> run;
  std::string dtype = "f32";
};

struct MemoryBoundCase {
  std::string name;
  std::function<MemoryBoundRun(Generator&)> prepare;
};

int64_t f32_bytes(int64_t count) { return 4 * count; }

std::vector<MemoryBoundCase> memory_bound_cases() {
  return {
      {"rms_norm",
       [](Generator& generator) {
         // read x [R, D] and w [D]; write y [R, D] and rstd [R]
         const int64_t rows = 2048, dim = kLlamaHidden;
         const Tensor x = randn({rows, dim}, generator), weight = randn({dim}, generator);
         return MemoryBoundRun{str_cat("[", rows, ",", dim, "]"), f32_bytes(2 * rows * dim + dim + rows),
                               [=] { ops::rms_norm(x, weight, 1e-5); }};
       }},
      {"softmax",
       [](Generator& generator) {
         // read x [R, D]; write y [R, D]
         const int64_t rows = 2048, dim = kLlamaHidden;
         const Tensor x = randn({rows, dim}, generator);
         return MemoryBoundRun{str_cat("[", rows, ",", dim, "]"), f32_bytes(2 * rows * dim),
                               [=] { ops::softmax(x, -1); }};
       }},
      {"swiglu",
       [](Generator& generator) {
         // read gate and up [R, F]; write out [R, F]
         const int64_t rows = 1024, width = kLlamaIntermediate;
         const Tensor gate = randn({rows, width}, generator), up = randn({rows, width}, generator);
         return MemoryBoundRun{str_cat("[", rows, ",", width, "]"), f32_bytes(3 * rows * width),
                               [=] { ops::swiglu(gate, up); }};
       }},
      {"cross_entropy",
       [](Generator& generator) {
         // read logits [R, V] and targets [R] (i64); write losses [R] and lse [R]
         const int64_t rows = 32, vocab = kLlamaVocab;
         const Tensor logits = randn({rows, vocab}, generator);
         const Tensor targets = randint(0, vocab, {rows}, generator);
         return MemoryBoundRun{str_cat("[", rows, ",", vocab, "]"), f32_bytes(rows * vocab + 2 * rows) + 8 * rows,
                               [=] { ops::cross_entropy(logits, targets); }};
       }},
      {"cross_entropy_backward",
       [](Generator& generator) {
         // read logits [R, V], targets [R] (i64), lse [R], grad_losses [R]; write dlogits [R, V]
         const int64_t rows = 32, vocab = kLlamaVocab;
         const Tensor logits = randn({rows, vocab}, generator);
         const Tensor targets = randint(0, vocab, {rows}, generator);
         const Tensor lse = ops::cross_entropy(logits, targets).lse;
         const Tensor grad_losses = ones({rows});
         return MemoryBoundRun{str_cat("[", rows, ",", vocab, "]"), f32_bytes(2 * rows * vocab + 2 * rows) + 8 * rows,
                               [=] { ops::cross_entropy_backward(grad_losses, logits, targets, lse); }};
       }},
      {"adamw_step",
       [](Generator& generator) {
         // read param, grad, exp_avg, exp_avg_sq [N]; write param, exp_avg, exp_avg_sq [N]
         const int64_t count = kElementwiseCount;
         const Tensor param = randn({count}, generator), grad = randn({count}, generator);
         const Tensor exp_avg = zeros({count}), exp_avg_sq = zeros({count});
         ops::AdamWStep hyper;
         hyper.lr = 1e-4;
         hyper.weight_decay = 0.1;
         hyper.step = 10;
         return MemoryBoundRun{str_cat("[", count, "]"), f32_bytes(7 * count),
                               [=] { ops::adamw_step_(param, grad, exp_avg, exp_avg_sq, hyper); }};
       }},
      {"cast_f32_bf16",
       [](Generator& generator) {
         // read x [N] f32 (4 bytes each); write y [N] bf16 (2 bytes each)
         const int64_t count = kElementwiseCount;
         const Tensor x = randn({count}, generator);
         return MemoryBoundRun{str_cat("[", count, "]"), 6 * count, [=] { ops::cast(x, DType::bf16); }, "f32->bf16"};
       }},
      {"exp",
       [](Generator& generator) {
         // read x [N]; write y [N]
         const int64_t count = kElementwiseCount;
         const Tensor x = randn({count}, generator);
         return MemoryBoundRun{str_cat("[", count, "]"), f32_bytes(2 * count), [=] { ops::exp(x); }};
       }},
      {"add_broadcast",
       [](Generator& generator) {
         // read a [R, D] and b [D] (broadcast over rows, read once); write out [R, D]
         const int64_t rows = kLlamaHidden, dim = kLlamaHidden;
         const Tensor a = randn({rows, dim}, generator), b = randn({dim}, generator);
         return MemoryBoundRun{str_cat("[", rows, ",", dim, "]+[", dim, "]"), f32_bytes(2 * rows * dim + dim),
                               [=] { ops::add(a, b); }};
       }},
  };
}

void run_memory_bound_case(const MemoryBoundCase& spec, double memcpy_rate, const BenchSettings& settings) {
  Generator generator(7);
  const MemoryBoundRun prepared = spec.prepare(generator);
  const Timing timing = measure(prepared.run, settings.min_seconds);
  const double gbps = double(prepared.bytes) / timing.median_seconds / 1e9;
  const double ratio = gbps / memcpy_rate;
  JsonLine()
      .add("bench", "ops")
      .add("case", spec.name)
      .add("threads", settings.threads)
      .add("shape", prepared.shape)
      .add("dtype", prepared.dtype)
      .add("stat", "median")
      .add("runs", timing.runs)
      .add("seconds", timing.median_seconds)
      .add("bytes", prepared.bytes)
      .add("gbps", gbps)
      .add("best_gbps", double(prepared.bytes) / timing.best_seconds / 1e9)
      .add("memcpy_gbps", memcpy_rate)
      .add("ratio_vs_memcpy", ratio)
      .add("target", kMemoryBoundTarget)
      .add("meets_target", ratio >= kMemoryBoundTarget)
      .print();
}

std::vector<MatmulCase> matmul_cases() {
  return {
      {"matmul_square_256", 256, 256, 256, false},
      {"matmul_square_1024", 1024, 1024, 1024, false},
      {"matmul_square_2048", 2048, 2048, 2048, false},
      // x [M, 4096] @ W^T with W [4096, 4096]: a Llama-3-8B attention projection at M tokens
      {"matmul_llama_m1", 1, kLlamaHidden, kLlamaHidden, true},
      {"matmul_llama_m16", 16, kLlamaHidden, kLlamaHidden, true},
      {"matmul_llama_m128", 128, kLlamaHidden, kLlamaHidden, true},
  };
}

}  // namespace

int run_bench_ops(const Arguments& args) {
  const std::vector<MatmulCase> matmuls = matmul_cases();
  const std::vector<MemoryBoundCase> memory_bound = memory_bound_cases();
  std::string case_list;
  for (const MatmulCase& c : matmuls) case_list += "\n  " + c.name;
  for (const MemoryBoundCase& c : memory_bound) case_list += "\n  " + c.name;

  FlagParser parser("lamina bench ops",
                    "Times the CPU ops and prints one JSON line per case to stdout (median of repeated runs\n"
                    "after a warm-up), then one line describing the machine. Matmul is compared with plain\n"
                    "Eigen (target: ratio >= 0.9), memory-bound ops with memcpy (target: ratio >= 0.5), both\n"
                    "measured in the same run on the same number of threads.\n\ncases:" +
                        case_list);
  parser.add_option("threads", "N", "CPU threads for lamina and the baselines", "lamina's thread count");
  parser.add_switch("quick", "time each case for ~0.05 s instead of ~0.3 s");
  parser.add_option("filter", "SUBSTRING", "run only the cases whose name contains SUBSTRING");
  if (!parser.parse(args)) return 0;

  BenchSettings settings;
  settings.threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  settings.min_seconds = parser.is_set("quick") ? 0.05 : 0.3;
  const std::string filter = parser.value("filter").value_or("");
  const auto selected = [&](const std::string& name) { return name.find(filter) != std::string::npos; };

  std::vector<const MatmulCase*> chosen_matmuls;
  std::vector<const MemoryBoundCase*> chosen_memory_bound;
  for (const MatmulCase& c : matmuls)
    if (selected(c.name)) chosen_matmuls.push_back(&c);
  for (const MemoryBoundCase& c : memory_bound)
    if (selected(c.name)) chosen_memory_bound.push_back(&c);
  if (chosen_matmuls.empty() && chosen_memory_bound.empty()) {
    throw UsageError("lamina bench ops: --filter '" + filter + "' matches no case",
                     "run 'lamina bench ops --help' to list the cases");
  }

  const ThreadCountGuard thread_scope(settings.threads);
  for (const MatmulCase* c : chosen_matmuls) {
    std::fprintf(stderr, "bench ops: %s\n", c->name.c_str());
    run_matmul_case(*c, settings);
  }
  double memcpy_rate = 0;
  if (!chosen_memory_bound.empty()) {
    std::fprintf(stderr, "bench ops: memcpy baseline (%zu MiB)\n", kMemcpyBytes >> 20);
    memcpy_rate = memcpy_gbps(settings);
  }
  for (const MemoryBoundCase* c : chosen_memory_bound) {
    std::fprintf(stderr, "bench ops: %s\n", c->name.c_str());
    run_memory_bound_case(*c, memcpy_rate, settings);
  }

  JsonLine machine;
  machine.add("bench", "ops")
      .add("case", "machine")
      .add("threads", settings.threads)
      .add("hardware_threads", int64_t(std::thread::hardware_concurrency()))
      .add("quick", parser.is_set("quick"))
      .add("cases", int64_t(chosen_matmuls.size() + chosen_memory_bound.size()));
  if (memcpy_rate > 0) machine.add("memcpy_gbps", memcpy_rate).add("memcpy_bytes", int64_t(kMemcpyBytes));
  machine.print();
  return 0;
}

}  // namespace lamina::cli
