// The bf16 GEMM (ops/cpu/gemm_bf16.cpp): every path the CPU has against an f64 oracle of the
// bf16 values on odd shapes, layouts and strides, the reference path bit-exact against a plain
// f32 sum, path selection, and ops::matmul / matmul_backward in bf16 against the f64 product
// rounded to bf16. A path this CPU lacks is skipped with a doctest MESSAGE saying so.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_bf16.h"
#include "ops/cpu/peak_throughput.h"
#include "ops/ops.h"
#include "tensor/dtype.h"
#include "tensor/parallel.h"
#include "tensor/view.h"

using namespace lamina;
using lamina::ops::cpu::GemmBf16Path;
using lamina::ops::cpu::GemmTask;
using lamina::ops::cpu::MatrixSpan;

namespace {

constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // f32

// A logical [rows, cols] bf16 matrix stored row-major or column-major, with `padding` unused
// elements after each stored line (so strides exceed the other extent).
struct Bf16Matrix {
  int64_t rows = 0, cols = 0;
  bool column_major = false;
  std::vector<uint16_t> storage;
  int64_t line_stride = 0;

  Bf16Matrix(int64_t rows_in, int64_t cols_in, bool column_major_in, int64_t padding, std::mt19937& random)
      : rows(rows_in), cols(cols_in), column_major(column_major_in) {
    line_stride = (column_major ? rows : cols) + padding;
    storage.assign(size_t(line_stride * (column_major ? cols : rows)), bf16(12345.0f).bits);  // padding: junk
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) storage[size_t(index(i, j))] = bf16(uniform(random)).bits;
  }
  int64_t index(int64_t i, int64_t j) const { return column_major ? j * line_stride + i : i * line_stride + j; }
  float at(int64_t i, int64_t j) const { return bf16::from_bits(storage[size_t(index(i, j))]); }
  MatrixSpan span() {
    MatrixSpan span;
    span.data = storage.data();
    span.rows = rows;
    span.cols = cols;
    span.row_stride = column_major ? 1 : line_stride;
    span.col_stride = column_major ? line_stride : 1;
    return span;
  }
};

// C as f32 rows of `row_stride` floats (past cols: sentinels that must survive).
struct F32Output {
  int64_t rows, cols, row_stride;
  std::vector<float> storage;
  F32Output(int64_t rows_in, int64_t cols_in, int64_t padding, std::mt19937& random)
      : rows(rows_in), cols(cols_in), row_stride(cols_in + padding) {
    storage.assign(size_t(rows * row_stride), -777.0f);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) storage[size_t(i * row_stride + j)] = uniform(random);
  }
  float& at(int64_t i, int64_t j) { return storage[size_t(i * row_stride + j)]; }
  MatrixSpan span() { return {storage.data(), rows, cols, row_stride, 1}; }
  bool sentinels_intact() const {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = cols; j < row_stride; ++j)
        if (storage[size_t(i * row_stride + j)] != -777.0f) return false;
    return true;
  }
};

std::vector<GemmBf16Path> all_paths() {
  return {GemmBf16Path::amx, GemmBf16Path::avx512bf16, GemmBf16Path::reference};
}

// True when the path runs here; otherwise says so in the test output.
bool runs_here(GemmBf16Path path) {
  if (ops::cpu::gemm_bf16_path_available(path)) return true;
  MESSAGE("skipped the bf16 GEMM path '", ops::cpu::gemm_bf16_path_name(path), "': this CPU lacks it");
  return false;
}

struct Shape3 {
  int64_t m, n, k;
};

// {1, 17, 255, 1000} combinations, with at most one 1000 so that the reference stays fast.
const Shape3 kShapes[] = {{1, 1, 1},      {17, 17, 17},    {1, 255, 17},   {17, 1, 255},   {255, 17, 1},
                          {255, 255, 255}, {1000, 17, 17},  {17, 1000, 17}, {17, 17, 1000}, {255, 1, 1000},
                          {1, 1000, 255}, {1000, 255, 1},   {255, 255, 17}, {17, 255, 255}, {1000, 17, 255}};

}  // namespace

TEST_CASE("bf16 GEMM: every path against the f64 product of the bf16 values") {
  std::mt19937 random(1234);
  for (GemmBf16Path path : all_paths()) {
    if (!runs_here(path)) continue;
    for (const Shape3& shape : kShapes) {
      for (int layout = 0; layout < 4; ++layout) {
        const bool a_column_major = layout & 1, b_column_major = layout & 2;
        const bool accumulate = (layout + shape.m) % 2 == 1;
        Bf16Matrix a(shape.m, shape.k, a_column_major, layout == 3 ? 5 : 0, random);
        Bf16Matrix b(shape.k, shape.n, b_column_major, layout == 1 ? 3 : 0, random);
        F32Output c(shape.m, shape.n, layout == 2 ? 7 : 0, random);
        const std::vector<float> c_before = c.storage;
        ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), c.span(), accumulate}}, path);
        double worst_ratio = 0;
        int64_t worst_i = 0, worst_j = 0;
        for (int64_t i = 0; i < shape.m; ++i) {
          for (int64_t j = 0; j < shape.n; ++j) {
            const double start = accumulate ? double(c_before[size_t(i * c.row_stride + j)]) : 0.0;
            double exact = start, magnitude = std::abs(start);
            for (int64_t k = 0; k < shape.k; ++k) {
              exact += double(a.at(i, k)) * double(b.at(k, j));
              magnitude += std::abs(double(a.at(i, k)) * double(b.at(k, j)));
            }
            // A sum of K + 1 terms in f32, in any order: |error| <= (K + 1) u sum |term|. The
            // fast paths round once per product pair and add, within the same bound.
            const double bound = double(shape.k + 1) * kUnitRoundoff * magnitude + 1e-30;
            const double ratio = std::abs(double(c.at(i, j)) - exact) / bound;
            if (!(ratio <= worst_ratio)) {
              worst_ratio = std::isnan(ratio) ? 1e30 : ratio;
              worst_i = i;
              worst_j = j;
            }
          }
        }
        INFO("path ", ops::cpu::gemm_bf16_path_name(path), " M=", shape.m, " N=", shape.n, " K=", shape.k,
             " a ", a_column_major ? "column" : "row", "-major, b ", b_column_major ? "column" : "row",
             "-major, accumulate ", accumulate, ": worst error / bound ", worst_ratio, " at C[", worst_i, ", ",
             worst_j, "]");
        CHECK(worst_ratio <= 1.0);
        CHECK(c.sentinels_intact());
      }
    }
  }
}

TEST_CASE("bf16 GEMM: the reference path is exactly the f32 sum over k in order") {
  std::mt19937 random(99);
  const Shape3 shapes[] = {{17, 255, 1000}, {255, 17, 17}, {1, 1000, 255}};
  for (const Shape3& shape : shapes) {
    for (bool accumulate : {false, true}) {
      Bf16Matrix a(shape.m, shape.k, accumulate, 0, random);
      Bf16Matrix b(shape.k, shape.n, !accumulate, 2, random);
      F32Output c(shape.m, shape.n, 1, random);
      std::vector<float> expected(size_t(shape.m * shape.n));
      for (int64_t i = 0; i < shape.m; ++i) {
        for (int64_t j = 0; j < shape.n; ++j) {
          float sum = accumulate ? c.at(i, j) : 0.0f;
          for (int64_t k = 0; k < shape.k; ++k) sum += a.at(i, k) * b.at(k, j);
          expected[size_t(i * shape.n + j)] = sum;
        }
      }
      ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), c.span(), accumulate}}, GemmBf16Path::reference);
      int64_t mismatches = 0;
      for (int64_t i = 0; i < shape.m; ++i)
        for (int64_t j = 0; j < shape.n; ++j) mismatches += c.at(i, j) != expected[size_t(i * shape.n + j)];
      INFO("M=", shape.m, " N=", shape.n, " K=", shape.k, " accumulate ", accumulate);
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("bf16 GEMM: results do not depend on the thread count, and a batch equals its tasks") {
  std::mt19937 random(7);
  for (GemmBf16Path path : all_paths()) {
    if (!runs_here(path)) continue;
    Bf16Matrix a(300, 200, false, 0, random), b(200, 300, true, 0, random);
    Bf16Matrix small_a(20, 30, true, 1, random), small_b(30, 40, false, 0, random);
    F32Output one(300, 300, 0, random), two(300, 300, 0, random), small_one(20, 40, 0, random);
    F32Output small_batched(20, 40, 0, random);
    {
      ThreadCountGuard guard(1);
      ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), one.span(), false}}, path);
      ops::cpu::gemm_bf16_batch({GemmTask{small_a.span(), small_b.span(), small_one.span(), false}}, path);
    }
    {
      ThreadCountGuard guard(2);
      // Two tasks on two threads: one task per thread.
      ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), two.span(), false},
                                 GemmTask{small_a.span(), small_b.span(), small_batched.span(), false}},
                                path);
    }
    INFO("path ", ops::cpu::gemm_bf16_path_name(path));
    CHECK(one.storage == two.storage);
    CHECK(small_one.storage == small_batched.storage);
  }
}

TEST_CASE("bf16 GEMM: a bf16 C is the f32 result rounded once, with and without accumulation") {
  // ops::matmul asks for a bf16 C: each block is summed in f32 and rounded into C at its end.
  // It must equal the f32 C (from the same path, in the same order) rounded to nearest even,
  // bit for bit, on edge blocks too, and leave the elements past each row of C alone.
  std::mt19937 random(11);
  const Shape3 shapes[] = {{1, 1, 1}, {17, 255, 17}, {255, 17, 1000}, {100, 600, 600}, {70, 530, 33}};
  for (GemmBf16Path path : all_paths()) {
    if (!runs_here(path)) continue;
    for (const Shape3& shape : shapes) {
      for (bool accumulate : {false, true}) {
        Bf16Matrix a(shape.m, shape.k, false, 0, random), b(shape.k, shape.n, true, 3, random);
        const int64_t row_stride = shape.n + 5;
        std::vector<uint16_t> c_bits(size_t(shape.m * row_stride), bf16(-777.0f).bits);
        std::vector<float> c_wide(size_t(shape.m * shape.n));
        std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
        for (int64_t i = 0; i < shape.m; ++i)
          for (int64_t j = 0; j < shape.n; ++j) {
            const uint16_t start = bf16(uniform(random)).bits;
            c_bits[size_t(i * row_stride + j)] = start;
            c_wide[size_t(i * shape.n + j)] = bf16::from_bits(start);
          }
        ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), MatrixSpan{c_wide.data(), shape.m, shape.n, shape.n, 1},
                                            accumulate}},
                                  path);
        ops::cpu::gemm_bf16_batch(
            {GemmTask{a.span(), b.span(), MatrixSpan{c_bits.data(), shape.m, shape.n, row_stride, 1}, accumulate}},
            path, DType::bf16);
        int64_t mismatches = 0, sentinels_lost = 0;
        for (int64_t i = 0; i < shape.m; ++i) {
          for (int64_t j = 0; j < shape.n; ++j)
            mismatches += c_bits[size_t(i * row_stride + j)] != bf16(c_wide[size_t(i * shape.n + j)]).bits;
          for (int64_t j = shape.n; j < row_stride; ++j)
            sentinels_lost += c_bits[size_t(i * row_stride + j)] != bf16(-777.0f).bits;
        }
        INFO("path ", ops::cpu::gemm_bf16_path_name(path), ", ", shape.m, "x", shape.n, "x", shape.k,
             accumulate ? ", accumulating" : "");
        CHECK(mismatches == 0);
        CHECK(sentinels_lost == 0);
      }
    }
  }
  CHECK_THROWS_WITH_AS(ops::cpu::gemm_bf16_batch({}, GemmBf16Path::automatic, DType::f16),
                       doctest::Contains("c must be f32 or bf16, got f16"), Error);
}

TEST_CASE("bf16 GEMM: K = 0 gives zeros or leaves C, and bad tasks are refused") {
  std::mt19937 random(3);
  for (GemmBf16Path path : all_paths()) {
    if (!runs_here(path)) continue;
    Bf16Matrix a(4, 0, false, 0, random), b(0, 5, false, 0, random);
    F32Output c(4, 5, 0, random);
    const std::vector<float> before = c.storage;
    ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), c.span(), true}}, path);
    CHECK(c.storage == before);
    ops::cpu::gemm_bf16_batch({GemmTask{a.span(), b.span(), c.span(), false}}, path);
    CHECK(c.storage == std::vector<float>(20, 0.0f));
    Bf16Matrix wrong_b(3, 5, false, 0, random), a3(4, 4, false, 0, random);
    CHECK_THROWS_WITH_AS(ops::cpu::gemm_bf16_batch({GemmTask{a3.span(), wrong_b.span(), c.span(), false}}, path),
                         doctest::Contains("shapes do not chain"), Error);
  }
}

TEST_CASE("bf16 GEMM: path names, LAMINA_CPU_GEMM and paths the CPU lacks") {
  using ops::cpu::gemm_bf16_resolve;
  for (GemmBf16Path path : {GemmBf16Path::automatic, GemmBf16Path::amx, GemmBf16Path::avx512bf16,
                            GemmBf16Path::reference}) {
    CHECK(ops::cpu::gemm_bf16_path_from_name(ops::cpu::gemm_bf16_path_name(path), "test") == path);
  }
  CHECK_THROWS_WITH_AS(ops::cpu::gemm_bf16_path_from_name("amx2", "LAMINA_CPU_GEMM"),
                       doctest::Contains("LAMINA_CPU_GEMM: unknown bf16 GEMM path 'amx2'"), Error);
  const auto& features = ops::cpu::cpu_features();
  const GemmBf16Path best = features.amx_bf16     ? GemmBf16Path::amx
                            : features.avx512bf16 ? GemmBf16Path::avx512bf16
                                                  : GemmBf16Path::reference;
  const char* saved = std::getenv("LAMINA_CPU_GEMM");
  const std::string saved_value = saved ? saved : "";
  unsetenv("LAMINA_CPU_GEMM");
  CHECK(gemm_bf16_resolve() == best);
  CHECK(gemm_bf16_resolve(GemmBf16Path::reference) == GemmBf16Path::reference);
  // ops::matmul sends bf16 here with AMX, never with only the reference, and with only AVX-512
  // BF16 on AMD's cores (which issue it at the f32 FMA's rate); always when the variable names a
  // path. The rule is cpuid's alone: the same on every call and in every process.
  const bool fast = best == GemmBf16Path::amx || (best == GemmBf16Path::avx512bf16 && features.amd);
  CHECK(ops::cpu::gemm_bf16_has_fast_path() == fast);
  setenv("LAMINA_CPU_GEMM", "reference", 1);
  CHECK(gemm_bf16_resolve() == GemmBf16Path::reference);
  CHECK(ops::cpu::gemm_bf16_has_fast_path());
  setenv("LAMINA_CPU_GEMM", "auto", 1);
  CHECK(gemm_bf16_resolve() == best);
  CHECK(ops::cpu::gemm_bf16_has_fast_path() == fast);
  setenv("LAMINA_CPU_GEMM", "fastest", 1);
  CHECK_THROWS_WITH_AS(gemm_bf16_resolve(), doctest::Contains("LAMINA_CPU_GEMM: unknown bf16 GEMM path"), Error);
  for (GemmBf16Path path : {GemmBf16Path::amx, GemmBf16Path::avx512bf16}) {
    setenv("LAMINA_CPU_GEMM", ops::cpu::gemm_bf16_path_name(path), 1);
    if (ops::cpu::gemm_bf16_path_available(path)) {
      CHECK(gemm_bf16_resolve() == path);
    } else {
      CHECK_THROWS_WITH_AS(gemm_bf16_resolve(), doctest::Contains("which this CPU lacks"), Error);
      CHECK_THROWS_WITH_AS(gemm_bf16_resolve(path), doctest::Contains("which this CPU lacks"), Error);
    }
  }
  if (saved) {
    setenv("LAMINA_CPU_GEMM", saved_value.c_str(), 1);
  } else {
    unsetenv("LAMINA_CPU_GEMM");
  }
  // AMX needs AVX-512 here, and each feature implies the one it builds on.
  if (features.avx512bf16) CHECK(features.avx512f);
  if (features.avx512f) CHECK(features.avx2_fma);
}

namespace {

// Random bf16-exact values as an f32 vector (the bf16 tensor holds them exactly).
std::vector<float> bf16_values(int64_t count, std::mt19937& random) {
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::vector<float> values(static_cast<size_t>(count));
  for (float& value : values) value = bf16(uniform(random));
  return values;
}

// |out - exact| <= half a bf16 ulp of the exact value (the final rounding, at most 2^-8 |exact|)
// plus the f32 summation error (K + 1) u sum |a b|, itself inflated by the rounding.
void check_against_f64(const Tensor& out, const std::vector<double>& exact, const std::vector<double>& magnitude,
                       int64_t depth, const std::string& what) {
  const std::vector<double> got = out.to_vector<double>();
  REQUIRE(got.size() == exact.size());
  double worst = 0;
  size_t worst_index = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = std::ldexp(std::abs(exact[i]), -8) +
                         (1 + std::ldexp(1.0, -8)) * double(depth + 1) * kUnitRoundoff * magnitude[i] + 1e-30;
    const double ratio = std::abs(got[i] - exact[i]) / bound;
    if (!(ratio <= worst)) {
      worst = std::isnan(ratio) ? 1e30 : ratio;
      worst_index = i;
    }
  }
  INFO(what, ": worst error / bound ", worst, " at flat index ", worst_index, " (got ", got[worst_index],
       ", exact ", exact[worst_index], ")");
  CHECK(worst <= 1.0);
}

}  // namespace

TEST_CASE("ops::matmul in bf16 is the f64 product of the bf16 values rounded once to bf16") {
  std::mt19937 random(11);
  for (GemmBf16Path path : all_paths()) {
    if (!runs_here(path)) continue;
    setenv("LAMINA_CPU_GEMM", ops::cpu::gemm_bf16_path_name(path), 1);
    // x [2, 60, 40] against a Linear weight w [50, 40] (x w^T), and a transposed batch product.
    const int64_t batch = 2, rows = 60, depth = 40, outputs = 50;
    const std::vector<float> x_values = bf16_values(batch * rows * depth, random);
    const std::vector<float> w_values = bf16_values(outputs * depth, random);
    const Tensor x = Tensor::from_vector(x_values, {batch, rows, depth}, DType::bf16);
    const Tensor w = Tensor::from_vector(w_values, {outputs, depth}, DType::bf16);
    const Tensor y = ops::matmul(x, w, false, true);
    CHECK(y.dtype() == DType::bf16);
    CHECK(y.shape() == Shape{batch, rows, outputs});
    std::vector<double> exact(size_t(batch * rows * outputs)), magnitude(exact.size());
    for (int64_t r = 0; r < batch * rows; ++r) {
      for (int64_t o = 0; o < outputs; ++o) {
        double sum = 0, absolute = 0;
        for (int64_t k = 0; k < depth; ++k) {
          const double term = double(x_values[size_t(r * depth + k)]) * double(w_values[size_t(o * depth + k)]);
          sum += term;
          absolute += std::abs(term);
        }
        exact[size_t(r * outputs + o)] = sum;
        magnitude[size_t(r * outputs + o)] = absolute;
      }
    }
    INFO("path ", ops::cpu::gemm_bf16_path_name(path));
    check_against_f64(y, exact, magnitude, depth, "x w^T");

    // The weight gradient of that layer: g^T x over all rows, g [2, 60, 50] (matmul_backward).
    const std::vector<float> g_values = bf16_values(batch * rows * outputs, random);
    const Tensor g = Tensor::from_vector(g_values, {batch, rows, outputs}, DType::bf16);
    const auto [grad_x, grad_w] = ops::matmul_backward(g, x, w, false, true);
    CHECK(grad_w.dtype() == DType::bf16);
    std::vector<double> exact_w(size_t(outputs * depth)), magnitude_w(exact_w.size());
    for (int64_t o = 0; o < outputs; ++o) {
      for (int64_t k = 0; k < depth; ++k) {
        double sum = 0, absolute = 0;
        for (int64_t r = 0; r < batch * rows; ++r) {
          const double term = double(g_values[size_t(r * outputs + o)]) * double(x_values[size_t(r * depth + k)]);
          sum += term;
          absolute += std::abs(term);
        }
        exact_w[size_t(o * depth + k)] = sum;
        magnitude_w[size_t(o * depth + k)] = absolute;
      }
    }
    check_against_f64(grad_w, exact_w, magnitude_w, batch * rows, "grad w = g^T x");
    std::vector<double> exact_x(size_t(batch * rows * depth)), magnitude_x(exact_x.size());
    for (int64_t r = 0; r < batch * rows; ++r) {
      for (int64_t k = 0; k < depth; ++k) {
        double sum = 0, absolute = 0;
        for (int64_t o = 0; o < outputs; ++o) {
          const double term = double(g_values[size_t(r * outputs + o)]) * double(w_values[size_t(o * depth + k)]);
          sum += term;
          absolute += std::abs(term);
        }
        exact_x[size_t(r * depth + k)] = sum;
        magnitude_x[size_t(r * depth + k)] = absolute;
      }
    }
    check_against_f64(grad_x, exact_x, magnitude_x, outputs, "grad x = g w");
  }
  unsetenv("LAMINA_CPU_GEMM");
}

TEST_CASE("ops::matmul in bf16 rounds ties to even and carries Inf and NaN") {
  const float tie_down = 1.0f + std::ldexp(1.0f, -8);                               // between 1 and 1 + 2^-7
  const float tie_up = 1.0f + std::ldexp(1.0f, -7) + std::ldexp(1.0f, -8);          // between 1 + 2^-7 and 1 + 2^-6
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (GemmBf16Path path : all_paths()) {
    if (!runs_here(path)) continue;
    setenv("LAMINA_CPU_GEMM", ops::cpu::gemm_bf16_path_name(path), 1);
    // Row i of a times b = [1, 1]^T sums the row in f32 (exactly here); rounding to bf16 is the
    // only inexact step.
    const Tensor a = Tensor::from_vector(std::vector<float>{1.0f, std::ldexp(1.0f, -8),                   //
                                                            1.0f + std::ldexp(1.0f, -7), std::ldexp(1.0f, -8),  //
                                                            -1.0f, -std::ldexp(1.0f, -8),                 //
                                                            inf, 1.0f,                                    //
                                                            nan, 1.0f,                                    //
                                                            inf, -inf},
                                         {6, 2}, DType::bf16);
    const Tensor b = Tensor::from_vector(std::vector<float>{1.0f, 1.0f}, {2, 1}, DType::bf16);
    const std::vector<float> out = ops::matmul(a, b).to_vector<float>();
    INFO("path ", ops::cpu::gemm_bf16_path_name(path), " (exact sums ", tie_down, " and ", tie_up, ")");
    CHECK(out[0] == 1.0f);                               // tie, to the even neighbour below
    CHECK(out[1] == 1.0f + std::ldexp(1.0f, -6));        // tie, to the even neighbour above
    CHECK(out[2] == -1.0f);
    CHECK(out[3] == inf);
    CHECK(std::isnan(out[4]));
    CHECK(std::isnan(out[5]));  // inf - inf
  }
  unsetenv("LAMINA_CPU_GEMM");
}

TEST_CASE("measure_peak_throughput reports a rate for each feature present and 0 for the others") {
  const auto& features = ops::cpu::cpu_features();
  const ops::cpu::PeakThroughput peak = ops::cpu::measure_peak_throughput(1);
  MESSAGE("peak on one thread: f32 FMA ", peak.f32_fma_gflops, " GFLOP/s, bf16 dot ", peak.bf16_dot_gflops,
          " GFLOP/s, AMX bf16 ", peak.amx_bf16_gflops, " GFLOP/s");
  CHECK((peak.f32_fma_gflops > 0) == (features.avx512f || features.avx2_fma));
  CHECK((peak.bf16_dot_gflops > 0) == features.avx512bf16);
  CHECK((peak.amx_bf16_gflops > 0) == features.amx_bf16);
  // A tile multiply does 16 times the work of a 512-bit dot product per instruction. (vdpbf16ps
  // itself need not beat f32 FMA: on Sapphire Rapids it issues on one port, FMA on two.)
  if (features.amx_bf16 && features.avx512bf16) CHECK(peak.amx_bf16_gflops > 2 * peak.bf16_dot_gflops);
}
