// `lamina bench ops`: throughput of the CPU op catalogue against two baselines measured in
// the same run on the same threads: Eigen's GEMM for matmul (compute-bound; the bf16 GEMM paths
// too, and the CPU's measured peaks), and memcpy for everything else (memory-bound). Prints one
// JSON line per case to stdout, progress to stderr.
// `--device cuda` times the CUDA ops instead (see "CUDA cases" below).
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
#include <ctime>
#include <functional>
#include <memory>
#include <thread>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/gemm_f32.h"
#include "ops/cpu/kernels.h"
#include "ops/cpu/peak_throughput.h"
#include "ops/ops.h"
#include "ops/quant4.h"
#include "tensor/cuda_runtime.h"
#include "tensor/parallel.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"

#if LAMINA_WITH_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <chrono>

#include "tensor/cuda/runtime.h"
#endif

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

  // "[M,K]@[K,N]", or "[M,K]@[N,K]^T" when b is used transposed.
  std::string label() const {
    const std::string b = transpose_b ? str_cat("[", cols, ",", inner, "]^T") : str_cat("[", inner, ",", cols, "]");
    return str_cat("[", rows, ",", inner, "]@", b);
  }
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
  JsonLine()
      .add("bench", "ops")
      .add("case", shape.name)
      .add("threads", settings.threads)
      .add("shape", shape.label())
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

// What a memory-bound case is measured against: the bandwidth of a plain copy in the same run.
struct CopyBaseline {
  const char* rate_key;   // the JSON key of the baseline's GB/s
  const char* ratio_key;  // the JSON key of the case's GB/s over it
  double gbps;
  double target;          // the ratio a case should reach
};

// Appends a memory-bound case's fields to `line` (which names the bench and the device) and prints it.
void print_memory_bound_case(JsonLine line, const MemoryBoundCase& spec, const MemoryBoundRun& prepared,
                             const Timing& timing, const CopyBaseline& baseline) {
  const double gbps = double(prepared.bytes) / timing.median_seconds / 1e9;
  const double ratio = gbps / baseline.gbps;
  line.add("case", spec.name)
      .add("shape", prepared.shape)
      .add("dtype", prepared.dtype)
      .add("stat", "median")
      .add("runs", timing.runs)
      .add("seconds", timing.median_seconds)
      .add("bytes", prepared.bytes)
      .add("gbps", gbps)
      .add("best_gbps", double(prepared.bytes) / timing.best_seconds / 1e9)
      .add(baseline.rate_key, baseline.gbps)
      .add(baseline.ratio_key, ratio)
      .add("target", baseline.target)
      .add("meets_target", ratio >= baseline.target)
      .print();
}

void run_memory_bound_case(const MemoryBoundCase& spec, double memcpy_rate, const BenchSettings& settings) {
  Generator generator(7);
  const MemoryBoundRun prepared = spec.prepare(generator);
  const Timing timing = measure(prepared.run, settings.min_seconds);
  print_memory_bound_case(JsonLine().add("bench", "ops").add("threads", settings.threads), spec, prepared, timing,
                          {"memcpy_gbps", "ratio_vs_memcpy", memcpy_rate, kMemoryBoundTarget});
}

// ---- 4-bit cases: the fused NF4 product (double-quantized, blocksize 64, as QLoRA stores its
// base) on a Llama-3-8B q_proj weight and on the shapes of `lamina bench train`. Its floor is
// streaming the 4-bit weight once: gbps_4bit counts those bytes (codes and scales, 4.127 bits a
// parameter) over the time. effective_gbps counts the f32 weight the product stands in for (4
// bytes a parameter), so ratio_vs_dequantized_bound = effective_gbps / memcpy_gbps is how the
// fused product compares with the best any product reading a dequantized f32 weight could do
// (above 1 beats it). The same product through ops::matmul on the dequantized weight is timed
// beside it (speedup_vs_dense = dense seconds / fused seconds); at many rows the product is
// compute-bound and that speedup is the figure that matters.
struct Quant4Case {
  std::string name;
  int64_t rows, out_features, in_features;
  bool input_grad;  // time matmul_4bit_input_grad (grad [rows, out] @ W) instead of matmul_4bit
};

std::vector<Quant4Case> quant4_cases() {
  return {
      {"matmul_4bit_llama_m1", 1, kLlamaHidden, kLlamaHidden, false},
      {"matmul_4bit_llama_m16", 16, kLlamaHidden, kLlamaHidden, false},
      {"matmul_4bit_llama_m128", 128, kLlamaHidden, kLlamaHidden, false},
      {"matmul_4bit_input_grad_llama_m128", 128, kLlamaHidden, kLlamaHidden, true},
      // The QLoRA step of `lamina bench train` (4 x 256 tokens on its 30M model, dim 512, kv 256,
      // ffn 1536): every base projection's shape, forward and input gradient.
      {"matmul_4bit_30m_attn_m1024", 1024, 512, 512, false},
      {"matmul_4bit_30m_kv_m1024", 1024, 256, 512, false},
      {"matmul_4bit_30m_up_m1024", 1024, 1536, 512, false},
      {"matmul_4bit_30m_down_m1024", 1024, 512, 1536, false},
      {"matmul_4bit_input_grad_30m_attn_m1024", 1024, 512, 512, true},
      {"matmul_4bit_input_grad_30m_kv_m1024", 1024, 256, 512, true},
      {"matmul_4bit_input_grad_30m_up_m1024", 1024, 1536, 512, true},
      {"matmul_4bit_input_grad_30m_down_m1024", 1024, 512, 1536, true},
  };
}

void run_quant4_case(const Quant4Case& spec, double memcpy_rate, const BenchSettings& settings) {
  Generator generator(5);
  const ops::Quantized4Bit q = ops::quantize_4bit(ops::mul(randn({spec.out_features, spec.in_features}, generator),
                                                           full({1}, 0.02)),
                                                  ops::Quant4Format::nf4, 64, true);
  const Tensor dequantized = ops::dequantize_4bit(q);
  const int64_t reduced = spec.input_grad ? spec.out_features : spec.in_features;
  const Tensor x = randn({spec.rows, reduced}, generator);
  const Timing fused = measure(
      [&] { spec.input_grad ? ops::matmul_4bit_input_grad(x, q) : ops::matmul_4bit(x, q); }, settings.min_seconds);
  const Timing dense = measure([&] { ops::matmul(x, dequantized, false, !spec.input_grad); }, settings.min_seconds);
  const int64_t parameters = spec.out_features * spec.in_features;
  const int64_t weight_bytes = int64_t(q.codes.nbytes() + q.absmax.nbytes() + q.nested_absmax.nbytes());
  const double gbps_4bit = double(weight_bytes) / fused.median_seconds / 1e9;
  const double effective_gbps = 4.0 * double(parameters) / fused.median_seconds / 1e9;
  const double flops = 2.0 * double(spec.rows) * double(parameters);
  JsonLine()
      .add("bench", "ops")
      .add("case", spec.name)
      .add("threads", settings.threads)
      .add("shape", spec.input_grad ? str_cat("[", spec.rows, ",", spec.out_features, "]@nf4[", spec.out_features, ",",
                                              spec.in_features, "]")
                                    : str_cat("[", spec.rows, ",", spec.in_features, "]@nf4[", spec.out_features, ",",
                                              spec.in_features, "]^T"))
      .add("format", "nf4_dq_b64")
      .add("stat", "median")
      .add("runs", fused.runs)
      .add("seconds", fused.median_seconds)
      .add("weight_bytes", weight_bytes)
      .add("bits_per_parameter", 8.0 * double(weight_bytes) / double(parameters))
      .add("gbps_4bit", gbps_4bit)
      .add("effective_gbps", effective_gbps)
      .add("gflops", flops / fused.median_seconds / 1e9)
      .add("memcpy_gbps", memcpy_rate)
      .add("ratio_vs_dequantized_bound", effective_gbps / memcpy_rate)
      .add("dense_seconds", dense.median_seconds)
      .add("dense_gflops", flops / dense.median_seconds / 1e9)
      .add("speedup_vs_dense", dense.median_seconds / fused.median_seconds)
      .print();
}

// ---- bf16 GEMM cases: the three products of a Linear layer at the `lamina bench train` shapes
// (1024 tokens, width 512, outputs 512 / 256 / 1536, and the 8192-token vocabulary), each timed
// on every bf16 GEMM path this CPU has (ops/cpu/gemm_bf16.cpp, f32 result) and on lamina's
// Eigen f32 GEMM with the same layouts, plus ops::matmul in bf16 (the auto path, result rounded
// to bf16) against what it cost before the bf16 kernels: widen both operands to f32, Eigen,
// round back. A last line gives the CPU's measured peaks (ops/cpu/peak_throughput.h).

constexpr int64_t kTrainTokens = 1024, kTrainWidth = 512, kTrainVocab = 8192;

enum class LinearProduct { forward, input_grad, weight_grad };

struct GemmCase {
  std::string name;
  LinearProduct product;
  int64_t outputs;     // the Linear layer's output width
  bool f32 = false;    // a gemm_f32 case (f32 GEMM paths against Eigen) rather than gemm_bf16

  // The logical product C [M, N] = A [M, K] B [K, N] and how A and B are stored.
  int64_t m() const { return product == LinearProduct::weight_grad ? outputs : kTrainTokens; }
  int64_t n() const { return product == LinearProduct::forward ? outputs : kTrainWidth; }
  int64_t k() const {
    if (product == LinearProduct::forward) return kTrainWidth;
    return product == LinearProduct::input_grad ? outputs : kTrainTokens;
  }
  std::string label() const {
    const std::string x = str_cat("x[", kTrainTokens, ",", kTrainWidth, "]");
    const std::string w = str_cat("w[", outputs, ",", kTrainWidth, "]");
    const std::string g = str_cat("g[", kTrainTokens, ",", outputs, "]");
    switch (product) {
      case LinearProduct::forward: return x + "@" + w + "^T";
      case LinearProduct::input_grad: return g + "@" + w;
      case LinearProduct::weight_grad: return g + "^T@" + x;
    }
    return "";
  }
};

std::vector<GemmCase> gemm_cases() {
  std::vector<GemmCase> cases;
  const std::pair<const char*, int64_t> widths[] = {{"attn", 512}, {"kv", 256}, {"mlp", 1536}, {"vocab", kTrainVocab}};
  for (const auto& [width_name, outputs] : widths) {
    cases.push_back({str_cat("gemm_bf16_forward_", width_name), LinearProduct::forward, outputs});
    cases.push_back({str_cat("gemm_bf16_input_grad_", width_name), LinearProduct::input_grad, outputs});
    cases.push_back({str_cat("gemm_bf16_weight_grad_", width_name), LinearProduct::weight_grad, outputs});
  }
  for (const auto& [width_name, outputs] : widths) {
    cases.push_back({str_cat("gemm_f32_forward_", width_name), LinearProduct::forward, outputs, true});
    cases.push_back({str_cat("gemm_f32_input_grad_", width_name), LinearProduct::input_grad, outputs, true});
    cases.push_back({str_cat("gemm_f32_weight_grad_", width_name), LinearProduct::weight_grad, outputs, true});
  }
  return cases;
}

// The operands of a case as the layer stores them (x [T, D], w [O, D], g [T, O]) and the
// logical A and B as views of them, in bf16 and in f32.
struct GemmOperands {
  Tensor a_stored, b_stored;
  bool transpose_a = false, transpose_b = false;
};

GemmOperands gemm_operands(const GemmCase& spec, DType dtype, Generator& generator) {
  const Tensor x = randn({kTrainTokens, kTrainWidth}, generator, dtype);
  const Tensor w = randn({spec.outputs, kTrainWidth}, generator, dtype);
  const Tensor g = randn({kTrainTokens, spec.outputs}, generator, dtype);
  switch (spec.product) {
    case LinearProduct::forward: return {x, w, false, true};
    case LinearProduct::input_grad: return {g, w, false, false};
    case LinearProduct::weight_grad: return {g, x, true, false};
  }
  return {};
}

double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return double(now.tv_sec) + 1e-9 * double(now.tv_nsec);
}

ops::cpu::MatrixSpan span_of_stored(const Tensor& stored, bool transpose) {
  ops::cpu::MatrixSpan span;
  span.data = stored.raw_data();
  span.rows = stored.size(transpose ? 1 : 0);
  span.cols = stored.size(transpose ? 0 : 1);
  span.row_stride = stored.stride(transpose ? 1 : 0);
  span.col_stride = stored.stride(transpose ? 0 : 1);
  return span;
}

void run_gemm_case(const GemmCase& spec, const BenchSettings& settings) {
  Generator generator(7);
  const GemmOperands low = gemm_operands(spec, DType::bf16, generator);
  const GemmOperands wide = gemm_operands(spec, DType::f32, generator);
  Tensor c = Tensor::empty({spec.m(), spec.n()}, DType::f32);
  const ops::cpu::GemmTask low_task{span_of_stored(low.a_stored, low.transpose_a),
                                    span_of_stored(low.b_stored, low.transpose_b), span_of_stored(c, false)};
  const ops::cpu::GemmTask wide_task{span_of_stored(wide.a_stored, wide.transpose_a),
                                     span_of_stored(wide.b_stored, wide.transpose_b), span_of_stored(c, false)};
  const double flops = 2.0 * double(spec.m()) * double(spec.n()) * double(spec.k());
  const auto gflops = [&](const Timing& timing) { return flops / timing.median_seconds / 1e9; };

  const double eigen_gflops =
      gflops(measure([&] { ops::cpu::gemm_batch_eigen(DType::f32, {wide_task}); }, settings.min_seconds));
  const Timing op_timing = measure(
      [&] { ops::matmul(low.a_stored, low.b_stored, low.transpose_a, low.transpose_b); }, settings.min_seconds);
  const Timing widened_timing = measure(
      [&] {
        const Tensor product = ops::matmul(ops::cast(low.a_stored, DType::f32), ops::cast(low.b_stored, DType::f32),
                                           low.transpose_a, low.transpose_b);
        ops::cast(product, DType::bf16);
      },
      settings.min_seconds);
  for (ops::cpu::GemmBf16Path path :
       {ops::cpu::GemmBf16Path::amx, ops::cpu::GemmBf16Path::avx512bf16, ops::cpu::GemmBf16Path::reference}) {
    JsonLine line;
    line.add("bench", "ops")
        .add("case", spec.name)
        .add("threads", settings.threads)
        .add("shape", spec.label())
        .add("m", spec.m())
        .add("n", spec.n())
        .add("k", spec.k())
        .add("path", ops::cpu::gemm_bf16_path_name(path));
    if (!ops::cpu::gemm_bf16_path_available(path)) {
      line.add("available", false).print();
      continue;
    }
    // CPU seconds of the whole process per call as well: on a loaded machine the wall time of
    // a long product includes the time other processes held the core, its CPU time does not.
    int64_t calls = 0;
    const double cpu_start = process_cpu_seconds();
    const Timing timing = measure(
        [&] {
          ops::cpu::gemm_bf16_batch({low_task}, path);
          ++calls;
        },
        settings.min_seconds);
    const double cpu_seconds_per_call = (process_cpu_seconds() - cpu_start) / double(calls);
    line.add("available", true)
        .add("stat", "median")
        .add("runs", timing.runs)
        .add("seconds", timing.median_seconds)
        .add("gflops", gflops(timing))
        .add("best_gflops", flops / timing.best_seconds / 1e9)
        .add("cpu_seconds", cpu_seconds_per_call)
        .add("gflops_per_cpu_second", flops / cpu_seconds_per_call / 1e9)
        .add("eigen_f32_gflops", eigen_gflops)
        .add("ratio_vs_eigen_f32", gflops(timing) / eigen_gflops)
        .print();
  }
  JsonLine()
      .add("bench", "ops")
      .add("case", spec.name)
      .add("threads", settings.threads)
      .add("shape", spec.label())
      .add("path", ops::cpu::gemm_bf16_has_fast_path()
                       ? str_cat("matmul_op_", ops::cpu::gemm_bf16_path_name(ops::cpu::gemm_bf16_resolve()))
                       : std::string("matmul_op_widened_eigen"))
      .add("dtype", "bf16")
      .add("gflops", gflops(op_timing))
      .add("widened_eigen_gflops", gflops(widened_timing))
      .add("speedup_vs_widened_eigen", widened_timing.median_seconds / op_timing.median_seconds)
      .print();
}

// ---- f32 GEMM cases: the same Linear products in f32 on each f32 GEMM path this CPU has
// (ops/cpu/gemm_f32.cpp: avx512, avx2) against Eigen (gemm_batch_eigen) in the same run, each
// also as a fraction of the CPU's measured f32 FMA peak on the bench's threads, plus
// ops::matmul in f32 (whatever path its dispatch picks, with the output's allocation).

// The f32 FMA peak on `threads` threads, measured on first use (~0.2 s) and kept for the run.
double f32_fma_peak_gflops(int threads) {
  static const double peak = ops::cpu::measure_peak_throughput(threads).f32_fma_gflops;
  return peak;
}

// A timing with the process CPU seconds per call beside it: on a loaded machine the wall time
// includes the time other processes held the cores, the CPU time does not.
struct TimingWithCpu {
  Timing timing;
  double cpu_seconds = 0;
};

template <typename Body>
TimingWithCpu measure_with_cpu(const Body& body, double min_seconds) {
  int64_t calls = 0;
  const double cpu_start = process_cpu_seconds();
  TimingWithCpu result;
  result.timing = measure(
      [&] {
        body();
        ++calls;
      },
      min_seconds);
  result.cpu_seconds = (process_cpu_seconds() - cpu_start) / double(calls);
  return result;
}

void run_gemm_f32_case(const GemmCase& spec, const BenchSettings& settings) {
  Generator generator(7);
  const GemmOperands operands = gemm_operands(spec, DType::f32, generator);
  Tensor c = Tensor::empty({spec.m(), spec.n()}, DType::f32);
  const ops::cpu::GemmTask task{span_of_stored(operands.a_stored, operands.transpose_a),
                                span_of_stored(operands.b_stored, operands.transpose_b), span_of_stored(c, false)};
  const double flops = 2.0 * double(spec.m()) * double(spec.n()) * double(spec.k());
  const auto gflops = [&](const Timing& timing) { return flops / timing.median_seconds / 1e9; };
  const double peak = f32_fma_peak_gflops(settings.threads);
  const TimingWithCpu eigen =
      measure_with_cpu([&] { ops::cpu::gemm_batch_eigen(DType::f32, {task}); }, settings.min_seconds);
  const double eigen_gflops = gflops(eigen.timing);
  const double eigen_cpu_gflops = flops / eigen.cpu_seconds / 1e9;
  const auto line = [&](const std::string& path) {
    JsonLine json;
    json.add("bench", "ops")
        .add("case", spec.name)
        .add("threads", settings.threads)
        .add("shape", spec.label())
        .add("m", spec.m())
        .add("n", spec.n())
        .add("k", spec.k())
        .add("path", path);
    return json;
  };
  line("eigen")
      .add("available", true)
      .add("stat", "median")
      .add("runs", eigen.timing.runs)
      .add("seconds", eigen.timing.median_seconds)
      .add("gflops", eigen_gflops)
      .add("best_gflops", flops / eigen.timing.best_seconds / 1e9)
      .add("cpu_seconds", eigen.cpu_seconds)
      .add("gflops_per_cpu_second", eigen_cpu_gflops)
      .add("f32_fma_peak_gflops", peak)
      .add("fraction_of_peak", eigen_gflops / peak)
      .print();
  for (ops::cpu::GemmF32Path path : {ops::cpu::GemmF32Path::avx512, ops::cpu::GemmF32Path::avx2}) {
    JsonLine json = line(ops::cpu::gemm_f32_path_name(path));
    if (!ops::cpu::gemm_f32_path_available(path)) {
      json.add("available", false).print();
      continue;
    }
    const TimingWithCpu run = measure_with_cpu([&] { ops::cpu::gemm_f32_batch({task}, path); }, settings.min_seconds);
    const Timing& timing = run.timing;
    json.add("available", true)
        .add("stat", "median")
        .add("runs", timing.runs)
        .add("seconds", timing.median_seconds)
        .add("gflops", gflops(timing))
        .add("best_gflops", flops / timing.best_seconds / 1e9)
        .add("f32_fma_peak_gflops", peak)
        .add("fraction_of_peak", gflops(timing) / peak)
        .add("cpu_seconds", run.cpu_seconds)
        .add("gflops_per_cpu_second", flops / run.cpu_seconds / 1e9)
        .add("eigen_f32_gflops", eigen_gflops)
        .add("ratio_vs_eigen_f32", gflops(timing) / eigen_gflops)
        .add("cpu_ratio_vs_eigen_f32", eigen.cpu_seconds / run.cpu_seconds)
        .print();
  }
  const Timing op_timing =
      measure([&] { ops::matmul(operands.a_stored, operands.b_stored, operands.transpose_a, operands.transpose_b); },
              settings.min_seconds);
  line(ops::cpu::gemm_f32_prefers_kernels(task)
           ? str_cat("matmul_op_", ops::cpu::gemm_f32_path_name(ops::cpu::gemm_f32_resolve()))
           : std::string("matmul_op_eigen"))
      .add("dtype", "f32")
      .add("gflops", gflops(op_timing))
      .add("eigen_f32_gflops", eigen_gflops)
      .add("ratio_vs_eigen_f32", gflops(op_timing) / eigen_gflops)
      .print();
}

// The CPU's arithmetic peaks on the bench's threads, for reading the GEMM rates against.
void print_peak_line(const BenchSettings& settings) {
  const ops::cpu::CpuFeatures& features = ops::cpu::cpu_features();
  const ops::cpu::PeakThroughput peak = ops::cpu::measure_peak_throughput(settings.threads);
  JsonLine()
      .add("bench", "ops")
      .add("case", "cpu_peak")
      .add("threads", settings.threads)
      .add("avx512f", features.avx512f)
      .add("avx512bf16", features.avx512bf16)
      .add("amx_bf16", features.amx_bf16)
      .add("f32_fma_gflops", peak.f32_fma_gflops)
      .add("bf16_dot_gflops", peak.bf16_dot_gflops)
      .add("amx_bf16_gflops", peak.amx_bf16_gflops)
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

#if LAMINA_WITH_CUDA
// ---- CUDA cases (`--device cuda`)
//
// Each case runs on device 0 with inputs drawn there (random, never zeros). Runs are timed with
// CUDA events in batches long enough (~2 ms) to hide launch gaps; the median batch gives the
// time per run. Baselines measured in the same run: a bare cuBLASLt call for GEMM (the same
// layouts, the heuristic's first algorithm, a 32 MiB workspace) and a device-to-device
// cudaMemcpyAsync of 1 GiB for the memory-bound ops (counting bytes read plus written).

constexpr double kGpuGemmTarget = 0.9;     // lamina / bare cuBLASLt TFLOP/s
constexpr double kGpuMemoryTarget = 0.7;   // op GB/s / device copy GB/s
constexpr size_t kGpuCopyBytes = size_t(1) << 30;
constexpr int64_t kGpuTokens = 8192;       // rows of the Llama-3-8B projection and activation cases

// The GPU the cases run on: --device cuda:N sets it before any case runs.
Device gpu_under_test = Device::cuda(0);

// Seconds per run of `body` (median over event-timed batches, after a warm-up).
Timing time_on_gpu(const std::function<void()>& body, double min_seconds) {
  const cudaStream_t stream = cuda::use_device(gpu_under_test.index);
  cuda::Event start(gpu_under_test.index), stop(gpu_under_test.index);
  auto batch_seconds = [&](int runs) {
    start.record(stream);
    for (int i = 0; i < runs; ++i) body();
    stop.record(stream);
    stop.synchronize();
    return double(cuda::Event::elapsed_ms(start, stop)) / 1e3;
  };
  batch_seconds(2);  // warm-up: allocator, cuBLASLt heuristics, module load
  const double single = batch_seconds(1);
  const int runs = int(std::clamp(2e-3 / std::max(single, 1e-7), 1.0, 1000.0));
  std::vector<double> samples;
  double total = 0;
  while (samples.size() < 5 || (total < min_seconds && samples.size() < 500)) {
    samples.push_back(batch_seconds(runs) / runs);
    total += samples.back() * runs;
  }
  std::sort(samples.begin(), samples.end());
  Timing timing;
  timing.runs = int64_t(samples.size()) * runs;
  timing.best_seconds = samples.front();
  timing.median_seconds = samples[samples.size() / 2];
  return timing;
}

double device_copy_gbps(const BenchSettings& settings) {
  Generator generator(1);
  const Tensor source = randn({int64_t(kGpuCopyBytes / 4)}, generator, DType::f32, gpu_under_test);
  const Tensor target = Tensor::empty(source.shape(), DType::f32, gpu_under_test);
  const cudaStream_t stream = cuda::use_device(gpu_under_test.index);
  const Timing timing = time_on_gpu(
      [&] {
        LAMINA_CUDA_CHECK(cudaMemcpyAsync(target.raw_data(), source.raw_data(), kGpuCopyBytes,
                                          cudaMemcpyDeviceToDevice, stream));
      },
      settings.min_seconds);
  return 2.0 * double(kGpuCopyBytes) / timing.median_seconds / 1e9;
}

// A plain cuBLASLt bf16 product c [M, N] = a [M, K] b, with b [K, N] row-major or, for the
// Linear layout, b = w^T with w [N, K] row-major: what a program calling cuBLASLt directly writes.
class BareCublasLt {
 public:
  BareCublasLt(const Tensor& a, const Tensor& b_source, bool transpose_b, const Tensor& c)
      : a_(a.raw_data()), b_(b_source.raw_data()), c_(c.raw_data()) {
    const uint64_t m = uint64_t(c.size(0)), n = uint64_t(c.size(1)), k = uint64_t(a.size(1));
    LAMINA_CUBLAS_CHECK(cublasLtCreate(&handle_));
    // Column-major: c^T [N, M] = op(b') [N, K] a^T [K, M], b' being b's buffer.
    const cublasOperation_t op_b = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = CUBLAS_OP_N;
    LAMINA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LAMINA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)));
    LAMINA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)));
    if (transpose_b) {
      LAMINA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_layout_, CUDA_R_16BF, k, n, int64_t(k)));
    } else {
      LAMINA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_layout_, CUDA_R_16BF, n, k, int64_t(n)));
    }
    LAMINA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_layout_, CUDA_R_16BF, k, m, int64_t(k)));
    LAMINA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c_layout_, CUDA_R_16BF, n, m, int64_t(n)));
    LAMINA_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspace));
    cublasLtMatmulPreference_t preference;
    LAMINA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t workspace = kWorkspace;
    LAMINA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace, sizeof(workspace)));
    int count = 0;
    LAMINA_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, desc_, b_layout_, a_layout_, c_layout_, c_layout_,
                                                       preference, 1, &heuristic_, &count));
    cublasLtMatmulPreferenceDestroy(preference);
    LAMINA_CHECK(count > 0, "bench ops: cuBLASLt found no bf16 algorithm for the baseline");
  }
  ~BareCublasLt() {
    cudaFree(workspace_);
    cublasLtMatrixLayoutDestroy(a_layout_);
    cublasLtMatrixLayoutDestroy(b_layout_);
    cublasLtMatrixLayoutDestroy(c_layout_);
    cublasLtMatmulDescDestroy(desc_);
    cublasLtDestroy(handle_);
  }
  BareCublasLt(const BareCublasLt&) = delete;
  BareCublasLt& operator=(const BareCublasLt&) = delete;

  void run(cudaStream_t stream) {
    const float alpha = 1.0f, beta = 0.0f;
    LAMINA_CUBLAS_CHECK(cublasLtMatmul(handle_, desc_, &alpha, b_, b_layout_, a_, a_layout_, &beta, c_, c_layout_, c_,
                                       c_layout_, &heuristic_.algo, workspace_, kWorkspace, stream));
  }

 private:
  static constexpr size_t kWorkspace = size_t(32) << 20;
  const void* a_;
  const void* b_;
  void* c_;
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_layout_ = nullptr, b_layout_ = nullptr, c_layout_ = nullptr;
  cublasLtMatmulHeuristicResult_t heuristic_{};
  void* workspace_ = nullptr;
};

std::vector<MatmulCase> gpu_matmul_cases() {
  return {
      {"gemm_bf16_4096", 4096, 4096, 4096, false},
      // x [8192 tokens, K] @ W^T, W [N, K]: the Llama-3-8B projections of one layer
      {"gemm_bf16_llama_qo_proj", kGpuTokens, kLlamaHidden, kLlamaHidden, true},
      {"gemm_bf16_llama_kv_proj", kGpuTokens, 1024, kLlamaHidden, true},
      {"gemm_bf16_llama_gate_up_proj", kGpuTokens, kLlamaIntermediate, kLlamaHidden, true},
      {"gemm_bf16_llama_down_proj", kGpuTokens, kLlamaHidden, kLlamaIntermediate, true},
  };
}

void run_gpu_matmul_case(const MatmulCase& shape, const BenchSettings& settings) {
  const int64_t m = shape.rows, n = shape.cols, k = shape.inner;
  Generator generator(42);
  const Tensor a = randn({m, k}, generator, DType::bf16, gpu_under_test);
  const Tensor b = randn(shape.transpose_b ? Shape{n, k} : Shape{k, n}, generator, DType::bf16, gpu_under_test);
  Tensor lamina_out;
  const Timing lamina_timing =
      time_on_gpu([&] { lamina_out = ops::matmul(a, b, false, shape.transpose_b); }, settings.min_seconds);

  const Tensor bare_out = Tensor::empty({m, n}, DType::bf16, gpu_under_test);
  BareCublasLt bare(a, b, shape.transpose_b, bare_out);
  const cudaStream_t stream = cuda::use_device(gpu_under_test.index);
  const Timing bare_timing = time_on_gpu([&] { bare.run(stream); }, settings.min_seconds);
  // The two results should agree (the same library, possibly the same algorithm).
  const Tensor gap = ops::sub(ops::cast(lamina_out, DType::f32), ops::cast(bare_out, DType::f32));
  const double difference = ops::max(ops::unary(ops::UnaryOp::abs, gap)).item<double>();

  const double flops = 2.0 * double(m) * double(n) * double(k);
  const double lamina_tflops = flops / lamina_timing.median_seconds / 1e12;
  const double bare_tflops = flops / bare_timing.median_seconds / 1e12;
  const double ratio = lamina_tflops / bare_tflops;
  JsonLine()
      .add("bench", "ops")
      .add("device", "cuda")
      .add("case", shape.name)
      .add("shape", shape.label())
      .add("dtype", "bf16")
      .add("stat", "median")
      .add("runs", lamina_timing.runs)
      .add("seconds", lamina_timing.median_seconds)
      .add("tflops", lamina_tflops)
      .add("best_tflops", flops / lamina_timing.best_seconds / 1e12)
      .add("cublaslt_tflops", bare_tflops)
      .add("ratio_vs_cublaslt", ratio)
      .add("max_abs_diff_vs_cublaslt", difference)
      .add("target", kGpuGemmTarget)
      .add("meets_target", ratio >= kGpuGemmTarget)
      .print();
}

int64_t bf16_bytes(int64_t count) { return 2 * count; }

std::vector<MemoryBoundCase> gpu_memory_bound_cases() {
  return {
      {"matmul_4bit_m1",
       [](Generator& generator) {
         // Decoding through a 4-bit Llama-3-8B gate_proj: read the NF4 weight (codes, 8-bit scales
         // and their nested scales: 4.127 bits a parameter) and x [1, H] in f32; write y [1, F].
         const int64_t out = kLlamaIntermediate, in = kLlamaHidden;
         const ops::Quantized4Bit q =
             ops::quantize_4bit(randn({out, in}, generator), ops::Quant4Format::nf4, 64, true).to(gpu_under_test);
         const Tensor x = randn({1, in}, generator, DType::f32, gpu_under_test);
         const int64_t weight_bytes = int64_t(q.codes.nbytes() + q.absmax.nbytes() + q.nested_absmax.nbytes());
         return MemoryBoundRun{str_cat("[1,", in, "]@nf4[", out, ",", in, "]^T"), weight_bytes + f32_bytes(in + out),
                               [=] { ops::matmul_4bit(x, q); }, "nf4"};
       }},
      {"rms_norm",
       [](Generator& generator) {
         // read x [R, D] and w [D]; write y [R, D] (bf16) and rstd [R] (f32)
         const int64_t rows = 2 * kGpuTokens, dim = kLlamaHidden;
         const Tensor x = randn({rows, dim}, generator, DType::bf16, gpu_under_test);
         const Tensor weight = randn({dim}, generator, DType::bf16, gpu_under_test);
         return MemoryBoundRun{str_cat("[", rows, ",", dim, "]"), bf16_bytes(2 * rows * dim + dim) + 4 * rows,
                               [=] { ops::rms_norm(x, weight, 1e-5); }, "bf16"};
       }},
      {"rope",
       [](Generator& generator) {
         // read x [B, T, H, D] and positions [T] (i64); write y [B, T, H, D]
         const int64_t batch = 4, tokens = 4096, heads = 32, head_dim = 128;
         const Tensor x = randn({batch, tokens, heads, head_dim}, generator, DType::bf16, gpu_under_test);
         const Tensor positions = arange(0, tokens, 1, DType::i64, gpu_under_test);
         const RopeConfig config{head_dim, 500000.0, Llama3RopeScaling{}};
         return MemoryBoundRun{str_cat("[", batch, ",", tokens, ",", heads, ",", head_dim, "]"),
                               bf16_bytes(2 * x.numel()) + 8 * tokens, [=] { ops::rope(x, positions, config); },
                               "bf16"};
       }},
      {"swiglu",
       [](Generator& generator) {
         // read gate and up [R, F]; write out [R, F]
         const int64_t rows = kGpuTokens, width = kLlamaIntermediate;
         const Tensor gate = randn({rows, width}, generator, DType::bf16, gpu_under_test);
         const Tensor up = randn({rows, width}, generator, DType::bf16, gpu_under_test);
         return MemoryBoundRun{str_cat("[", rows, ",", width, "]"), bf16_bytes(3 * rows * width),
                               [=] { ops::swiglu(gate, up); }, "bf16"};
       }},
      {"softmax",
       [](Generator& generator) {
         // read x [R, D]; write y [R, D]
         const int64_t rows = 2 * kGpuTokens, dim = kLlamaHidden;
         const Tensor x = randn({rows, dim}, generator, DType::bf16, gpu_under_test);
         return MemoryBoundRun{str_cat("[", rows, ",", dim, "]"), bf16_bytes(2 * rows * dim),
                               [=] { ops::softmax(x, -1); }, "bf16"};
       }},
      {"cross_entropy",
       [](Generator& generator) {
         // read logits [R, V] and targets [R] (i64); write losses [R] and lse [R] (f32)
         const int64_t rows = 4096, vocab = kLlamaVocab;
         const Tensor logits = randn({rows, vocab}, generator, DType::bf16, gpu_under_test);
         const Tensor targets = randint(0, vocab, {rows}, generator, DType::i64, gpu_under_test);
         return MemoryBoundRun{str_cat("[", rows, ",", vocab, "]"), bf16_bytes(rows * vocab) + 16 * rows,
                               [=] { ops::cross_entropy(logits, targets); }, "bf16"};
       }},
      {"cross_entropy_backward",
       [](Generator& generator) {
         // read logits [R, V], targets [R] (i64), lse and grad_losses [R] (f32); write dlogits [R, V]
         const int64_t rows = 4096, vocab = kLlamaVocab;
         const Tensor logits = randn({rows, vocab}, generator, DType::bf16, gpu_under_test);
         const Tensor targets = randint(0, vocab, {rows}, generator, DType::i64, gpu_under_test);
         const Tensor lse = ops::cross_entropy(logits, targets).lse;
         const Tensor grad_losses = ones({rows}, DType::f32, gpu_under_test);
         return MemoryBoundRun{str_cat("[", rows, ",", vocab, "]"), bf16_bytes(2 * rows * vocab) + 16 * rows,
                               [=] { ops::cross_entropy_backward(grad_losses, logits, targets, lse); }, "bf16"};
       }},
      {"adamw_step",
       [](Generator& generator) {
         // read param, grad, exp_avg, exp_avg_sq [N] (f32); write param, exp_avg, exp_avg_sq
         const int64_t count = int64_t(1) << 26;
         const Tensor param = randn({count}, generator, DType::f32, gpu_under_test);
         const Tensor grad = randn({count}, generator, DType::f32, gpu_under_test);
         const Tensor exp_avg = zeros({count}, DType::f32, gpu_under_test), exp_avg_sq = zeros({count}, DType::f32, gpu_under_test);
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
         const int64_t count = int64_t(1) << 28;
         const Tensor x = randn({count}, generator, DType::f32, gpu_under_test);
         return MemoryBoundRun{str_cat("[", count, "]"), 6 * count, [=] { ops::cast(x, DType::bf16); }, "f32->bf16"};
       }},
  };
}

void run_gpu_memory_bound_case(const MemoryBoundCase& spec, double copy_rate, const BenchSettings& settings) {
  Generator generator(7);
  const MemoryBoundRun prepared = spec.prepare(generator);
  const Timing timing = time_on_gpu(prepared.run, settings.min_seconds);
  print_memory_bound_case(JsonLine().add("bench", "ops").add("device", "cuda"), spec, prepared, timing,
                          {"device_copy_gbps", "ratio_vs_device_copy", copy_rate, kGpuMemoryTarget});
}

// Host time of one Storage::allocate + release of a cached block, against cudaMalloc + cudaFree.
void run_allocator_case() {
  constexpr size_t kBytes = size_t(4) << 20;
  constexpr int kPairs = 100000, kRawPairs = 200;
  { const auto warm = Storage::allocate(kBytes, gpu_under_test); }
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kPairs; ++i) {
    const auto block = Storage::allocate(kBytes, gpu_under_test);
  }
  const double cached_ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / kPairs;
  cuda::use_device(gpu_under_test.index);
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < kRawPairs; ++i) {
    void* block = nullptr;
    LAMINA_CUDA_CHECK(cudaMalloc(&block, kBytes));
    LAMINA_CUDA_CHECK(cudaFree(block));
  }
  const double raw_ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / kRawPairs;
  JsonLine()
      .add("bench", "ops")
      .add("device", "cuda")
      .add("case", "allocator_pair")
      .add("bytes", int64_t(kBytes))
      .add("pairs", int64_t(kPairs))
      .add("ns_per_pair", cached_ns)
      .add("cudamalloc_free_ns_per_pair", raw_ns)
      .print();
}

int run_gpu_cases(Device gpu, const BenchSettings& settings, const std::function<bool(const std::string&)>& selected) {
  const CudaAvailability availability = cuda_availability();
  if (availability.device_count == 0) throw Error("lamina bench ops --device " + gpu.str() + ": " + availability.reason);
  if (gpu.index >= availability.device_count) {
    throw Error(str_cat("lamina bench ops --device ", gpu.str(), ": this machine has ", availability.device_count, " GPU(s)"));
  }
  gpu_under_test = gpu;
  const cuda::DeviceInfo& info = cuda::device_info(gpu_under_test.index);
  std::vector<MatmulCase> matmuls;
  for (const MatmulCase& c : gpu_matmul_cases())
    if (selected(c.name)) matmuls.push_back(c);
  std::vector<MemoryBoundCase> memory_bound;
  for (const MemoryBoundCase& c : gpu_memory_bound_cases())
    if (selected(c.name)) memory_bound.push_back(c);
  const bool allocator = selected("allocator_pair");
  if (matmuls.empty() && memory_bound.empty() && !allocator) {
    throw UsageError("lamina bench ops: --filter matches no CUDA case",
                     "run 'lamina bench ops --help' to list the cases");
  }
  for (const MatmulCase& c : matmuls) {
    std::fprintf(stderr, "bench ops (cuda): %s\n", c.name.c_str());
    run_gpu_matmul_case(c, settings);
    empty_cache(gpu_under_test);  // keep the next case's inputs from competing with this one's cached blocks
  }
  double copy_rate = 0;
  if (!memory_bound.empty()) {
    std::fprintf(stderr, "bench ops (cuda): device copy baseline (%zu MiB)\n", kGpuCopyBytes >> 20);
    copy_rate = device_copy_gbps(settings);
    empty_cache(gpu_under_test);
  }
  for (const MemoryBoundCase& c : memory_bound) {
    std::fprintf(stderr, "bench ops (cuda): %s\n", c.name.c_str());
    run_gpu_memory_bound_case(c, copy_rate, settings);
    empty_cache(gpu_under_test);
  }
  if (allocator) {
    std::fprintf(stderr, "bench ops (cuda): allocator_pair\n");
    run_allocator_case();
  }
  JsonLine machine;
  machine.add("bench", "ops")
      .add("device", "cuda")
      .add("case", "machine")
      .add("gpu", info.name)
      .add("compute_capability", str_cat(info.compute_major, ".", info.compute_minor))
      .add("multiprocessors", int64_t(info.multiprocessors))
      .add("memory_mib", int64_t(info.total_memory >> 20))
      .add("cases", int64_t(matmuls.size() + memory_bound.size() + (allocator ? 1 : 0)));
  if (copy_rate > 0) machine.add("device_copy_gbps", copy_rate).add("device_copy_bytes", int64_t(kGpuCopyBytes));
  machine.print();
  return 0;
}
#endif  // LAMINA_WITH_CUDA

}  // namespace

int run_bench_ops(const Arguments& args) {
  const std::vector<MatmulCase> matmuls = matmul_cases();
  const std::vector<MemoryBoundCase> memory_bound = memory_bound_cases();
  std::string case_list;
  for (const MatmulCase& c : matmuls) case_list += "\n  " + c.name;
  for (const MemoryBoundCase& c : memory_bound) case_list += "\n  " + c.name;
  const std::vector<Quant4Case> quant4 = quant4_cases();
  for (const Quant4Case& c : quant4) case_list += "\n  " + c.name;
  const std::vector<GemmCase> gemms = gemm_cases();
  for (const GemmCase& c : gemms) case_list += "\n  " + c.name;
  case_list += "\n  cpu_peak";
#if LAMINA_WITH_CUDA
  case_list += "\n\ncases with --device cuda (bf16 GEMM vs bare cuBLASLt, target >= 0.9; memory-bound ops vs a\n"
               "device-to-device copy, target >= 0.7; allocator cost per allocate/free pair):";
  for (const MatmulCase& c : gpu_matmul_cases()) case_list += "\n  " + c.name;
  for (const MemoryBoundCase& c : gpu_memory_bound_cases()) case_list += "\n  " + c.name;
  case_list += "\n  allocator_pair";
#endif

  FlagParser parser("lamina bench ops",
                    "Times the CPU ops and prints one JSON line per case to stdout (median of repeated runs\n"
                    "after a warm-up), then one line describing the machine. Matmul is compared with plain\n"
                    "Eigen (target: ratio >= 0.9), memory-bound ops with memcpy (target: ratio >= 0.5), both\n"
                    "measured in the same run on the same number of threads. The gemm_bf16 cases time each\n"
                    "bf16 GEMM path the CPU has (amx, avx512bf16, reference; one line each, and one for\n"
                    "ops::matmul in bf16 against widening to f32 for Eigen) beside Eigen in f32. The gemm_f32\n"
                    "cases time the same products in f32 on each f32 GEMM path the CPU has (avx512, avx2) and\n"
                    "ops::matmul against Eigen, each also as a fraction of the f32 FMA peak; cpu_peak\n"
                    "measures the f32 FMA, bf16 dot and AMX peaks. --device cuda[:N] times the\n"
                    "CUDA ops on that GPU instead.\n\ncases:" +
                        case_list);
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N (needs the CUDA backend and a GPU)", "cpu");
  parser.add_option("threads", "N", "CPU threads for lamina and the baselines", "lamina's thread count");
  parser.add_switch("quick", "time each case for ~0.05 s instead of ~0.3 s");
  parser.add_option("filter", "SUBSTRING", "run only the cases whose name contains SUBSTRING");
  if (!parser.parse(args)) return 0;

  BenchSettings settings;
  settings.threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  settings.min_seconds = parser.is_set("quick") ? 0.05 : 0.3;
  const std::string filter = parser.value("filter").value_or("");
  const auto selected = [&](const std::string& name) { return name.find(filter) != std::string::npos; };
  const Device device = Device::parse(parser.value("device").value_or("cpu"));
  if (device.is_cuda()) {
#if LAMINA_WITH_CUDA
    return run_gpu_cases(device, settings, selected);
#else
    throw Error("lamina bench ops --device " + device.str() + ": this build has no CUDA backend (configure with -DLAMINA_CUDA=ON)");
#endif
  }

  std::vector<const MatmulCase*> chosen_matmuls;
  std::vector<const MemoryBoundCase*> chosen_memory_bound;
  for (const MatmulCase& c : matmuls)
    if (selected(c.name)) chosen_matmuls.push_back(&c);
  for (const MemoryBoundCase& c : memory_bound)
    if (selected(c.name)) chosen_memory_bound.push_back(&c);
  std::vector<const Quant4Case*> chosen_quant4;
  for (const Quant4Case& c : quant4)
    if (selected(c.name)) chosen_quant4.push_back(&c);
  std::vector<const GemmCase*> chosen_gemms;
  for (const GemmCase& c : gemms)
    if (selected(c.name)) chosen_gemms.push_back(&c);
  const bool peak_chosen = selected("cpu_peak");
  if (chosen_matmuls.empty() && chosen_memory_bound.empty() && chosen_quant4.empty() && chosen_gemms.empty() &&
      !peak_chosen) {
    throw UsageError("lamina bench ops: --filter '" + filter + "' matches no case",
                     "run 'lamina bench ops --help' to list the cases");
  }

  const ThreadCountGuard thread_scope(settings.threads);
  for (const MatmulCase* c : chosen_matmuls) {
    std::fprintf(stderr, "bench ops: %s\n", c->name.c_str());
    run_matmul_case(*c, settings);
  }
  double memcpy_rate = 0;
  if (!chosen_memory_bound.empty() || !chosen_quant4.empty()) {
    std::fprintf(stderr, "bench ops: memcpy baseline (%zu MiB)\n", kMemcpyBytes >> 20);
    memcpy_rate = memcpy_bandwidth_gbps(settings.threads, settings.min_seconds, kMemcpyBytes);
  }
  for (const MemoryBoundCase* c : chosen_memory_bound) {
    std::fprintf(stderr, "bench ops: %s\n", c->name.c_str());
    run_memory_bound_case(*c, memcpy_rate, settings);
  }
  for (const Quant4Case* c : chosen_quant4) {
    std::fprintf(stderr, "bench ops: %s\n", c->name.c_str());
    run_quant4_case(*c, memcpy_rate, settings);
  }

  for (const GemmCase* c : chosen_gemms) {
    std::fprintf(stderr, "bench ops: %s\n", c->name.c_str());
    if (c->f32) {
      run_gemm_f32_case(*c, settings);
    } else {
      run_gemm_case(*c, settings);
    }
  }
  if (peak_chosen) {
    std::fprintf(stderr, "bench ops: cpu_peak\n");
    print_peak_line(settings);
  }

  JsonLine machine;
  machine.add("bench", "ops")
      .add("case", "machine")
      .add("threads", settings.threads)
      .add("hardware_threads", int64_t(std::thread::hardware_concurrency()))
      .add("quick", parser.is_set("quick"))
      .add("cases", int64_t(chosen_matmuls.size() + chosen_memory_bound.size() + chosen_quant4.size() +
                            chosen_gemms.size() + (peak_chosen ? 1 : 0)));
  if (memcpy_rate > 0) machine.add("memcpy_gbps", memcpy_rate).add("memcpy_bytes", int64_t(kMemcpyBytes));
  machine.print();
  return 0;
}

}  // namespace lamina::cli
