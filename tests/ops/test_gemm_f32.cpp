// The f32 GEMM (ops/cpu/gemm_f32.cpp): every path this CPU has (avx512, avx2, and the eigen
// fallback) against an f64 product on odd shapes, layouts, strides and accumulation; the kernel
// paths bit-exact against a scalar emulation of their documented summation order (so also
// against each other), thread counts 1 and 2 giving the same bits, path selection through
// $LAMINA_CPU_GEMM_F32, and ops::matmul in f32 with each path forced. A path this CPU lacks is
// skipped with a doctest MESSAGE saying so.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gemm_f32.h"
#include "ops/cpu/gemm_f32_kernels.h"
#include "ops/ops.h"
#include "tensor/parallel.h"

using namespace lamina;
using lamina::ops::cpu::GemmF32Path;
using lamina::ops::cpu::GemmTask;
using lamina::ops::cpu::MatrixSpan;

namespace {

constexpr double kUnitRoundoff = 1.0 / (1 << 24);  // f32
constexpr float kSentinel = 12345.0f;

// How a logical [rows, cols] matrix is stored: row- or column-major with `padding` unused
// elements after each stored line, or (strided) row-major with every other element used, so
// that neither stride is 1.
enum class Layout { row_major, column_major, strided };

struct F32Matrix {
  int64_t rows = 0, cols = 0;
  int64_t row_stride = 0, col_stride = 0;
  std::vector<float> storage;

  F32Matrix(int64_t rows_in, int64_t cols_in, Layout layout, int64_t padding, std::mt19937& random)
      : rows(rows_in), cols(cols_in) {
    if (layout == Layout::row_major) {
      row_stride = cols + padding;
      col_stride = 1;
    } else if (layout == Layout::column_major) {
      row_stride = 1;
      col_stride = rows + padding;
    } else {
      row_stride = 2 * cols + padding;
      col_stride = 2;
    }
    storage.assign(size_t(std::max<int64_t>(1, rows * row_stride + cols * col_stride)), kSentinel);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) storage[size_t(i * row_stride + j * col_stride)] = uniform(random);
  }
  float at(int64_t i, int64_t j) const { return storage[size_t(i * row_stride + j * col_stride)]; }
  MatrixSpan span() { return MatrixSpan{storage.data(), rows, cols, row_stride, col_stride}; }
};

// C: rows of `row_stride` floats, the part past cols holding sentinels that must survive.
struct OutputMatrix {
  int64_t rows = 0, cols = 0, row_stride = 0;
  std::vector<float> storage;
  OutputMatrix(int64_t rows_in, int64_t cols_in, int64_t padding, std::mt19937& random)
      : rows(rows_in), cols(cols_in), row_stride(cols_in + padding) {
    storage.assign(size_t(std::max<int64_t>(1, rows * row_stride)), kSentinel);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) storage[size_t(i * row_stride + j)] = uniform(random);
  }
  float at(int64_t i, int64_t j) const { return storage[size_t(i * row_stride + j)]; }
  MatrixSpan span() { return MatrixSpan{storage.data(), rows, cols, row_stride, 1}; }
  bool sentinels_intact() const {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = cols; j < row_stride; ++j)
        if (storage[size_t(i * row_stride + j)] != kSentinel) return false;
    return true;
  }
};

std::vector<GemmF32Path> every_path() { return {GemmF32Path::avx512, GemmF32Path::avx2, GemmF32Path::eigen}; }

bool skip_unavailable(GemmF32Path path) {
  if (ops::cpu::gemm_f32_path_available(path)) return false;
  MESSAGE("f32 GEMM path ", ops::cpu::gemm_f32_path_name(path), " skipped: this CPU lacks its instructions");
  return true;
}

// The kernel paths' documented order, in scalar code: K cut into slices of 256 (the last
// shorter), each slice one fma chain from zero, the chains added to C in order (the first
// stored unless accumulating).
float emulate_output(const F32Matrix& a, const F32Matrix& b, int64_t i, int64_t j, float c_before,
                     bool accumulate) {
  const int64_t depth = a.cols;
  const int64_t slice_depth = 256;
  float total = c_before;
  for (int64_t k0 = 0; k0 < depth; k0 += slice_depth) {
    float chain = 0.0f;
    for (int64_t k = k0; k < std::min(depth, k0 + slice_depth); ++k) chain = std::fma(a.at(i, k), b.at(k, j), chain);
    total = (k0 == 0 && !accumulate) ? chain : total + chain;
  }
  return depth == 0 ? (accumulate ? c_before : 0.0f) : total;
}

struct Shape3 {
  int64_t m, n, k;
};

}  // namespace

TEST_CASE("f32 GEMM: every path against f64 on odd shapes, layouts, strides and accumulation") {
  const std::vector<Shape3> shapes = {{1, 1, 1},     {1, 1, 300},   {1, 37, 300},   {13, 1, 17},  {25, 33, 257},
                                      {12, 32, 256}, {37, 70, 513}, {100, 65, 1000}, {7, 200, 3}, {130, 97, 64}};
  std::mt19937 random(11);
  int64_t checked = 0;
  for (GemmF32Path path : every_path()) {
    if (skip_unavailable(path)) continue;
    for (const Shape3& shape : shapes) {
      for (Layout a_layout : {Layout::row_major, Layout::column_major, Layout::strided}) {
        for (Layout b_layout : {Layout::row_major, Layout::column_major, Layout::strided}) {
          if (path == GemmF32Path::eigen && (a_layout == Layout::strided || b_layout == Layout::strided))
            continue;  // Eigen maps only unit-stride layouts (ops::matmul copies the rest)
          for (bool accumulate : {false, true}) {
            const int64_t padding = (shape.m + shape.k) % 3;
            F32Matrix a(shape.m, shape.k, a_layout, padding, random);
            F32Matrix b(shape.k, shape.n, b_layout, 2 - padding, random);
            OutputMatrix c(shape.m, shape.n, 1 + padding, random);
            const OutputMatrix c_before = c;
            ops::cpu::gemm_f32_batch({GemmTask{a.span(), b.span(), c.span(), accumulate}}, path);
            const std::string path_name = ops::cpu::gemm_f32_path_name(path);
            CAPTURE(path_name);
            CAPTURE(shape.m);
            CAPTURE(shape.n);
            CAPTURE(shape.k);
            CAPTURE(int(a_layout));
            CAPTURE(int(b_layout));
            CAPTURE(accumulate);
            double worst = 0;
            for (int64_t i = 0; i < shape.m; ++i) {
              for (int64_t j = 0; j < shape.n; ++j) {
                double exact = accumulate ? double(c_before.at(i, j)) : 0.0;
                double magnitude = accumulate ? std::abs(double(c_before.at(i, j))) : 0.0;
                for (int64_t k = 0; k < shape.k; ++k) {
                  exact += double(a.at(i, k)) * double(b.at(k, j));
                  magnitude += std::abs(double(a.at(i, k)) * double(b.at(k, j)));
                }
                // f32 summation of K products (and C): at most (K + 2) u sum |a b| (+ |C|).
                const double bound = double(shape.k + 2) * kUnitRoundoff * magnitude + 1e-30;
                worst = std::max(worst, std::abs(double(c.at(i, j)) - exact) / bound);
              }
            }
            CHECK(worst <= 1.0);
            CHECK(c.sentinels_intact());
            ++checked;
          }
        }
      }
    }
  }
  CHECK(checked > 0);
}

TEST_CASE("f32 GEMM: kernel paths follow their documented summation order bit for bit") {
  // With the AVX-512 packers and with the plain loops (the only ones a CPU without AVX-512 runs),
  // for every layout each packer handles.
  const std::vector<Shape3> shapes = {{1, 1, 1},     {5, 40, 255}, {14, 33, 257}, {13, 32, 256},
                                      {29, 64, 576}, {3, 17, 1000}, {2, 3, 512}};
  std::mt19937 random(5);
  for (bool plain : {false, true}) {
    ops::cpu::gemm_f32_detail::set_plain_packing(plain);
    for (GemmF32Path path : {GemmF32Path::avx512, GemmF32Path::avx2}) {
      if (skip_unavailable(path)) continue;
      for (const Shape3& shape : shapes) {
        for (Layout a_layout : {Layout::row_major, Layout::column_major, Layout::strided}) {
          for (Layout b_layout : {Layout::row_major, Layout::column_major, Layout::strided}) {
            const bool accumulate = (shape.k + int(a_layout) + int(b_layout)) % 2 == 1;
            F32Matrix a(shape.m, shape.k, a_layout, 1, random);
            F32Matrix b(shape.k, shape.n, b_layout, 2, random);
            OutputMatrix c(shape.m, shape.n, 1, random);
            const OutputMatrix c_before = c;
            ops::cpu::gemm_f32_batch({GemmTask{a.span(), b.span(), c.span(), accumulate}}, path);
            int64_t mismatches = 0;
            for (int64_t i = 0; i < shape.m; ++i)
              for (int64_t j = 0; j < shape.n; ++j)
                if (c.at(i, j) != emulate_output(a, b, i, j, c_before.at(i, j), accumulate)) ++mismatches;
            const std::string path_name = ops::cpu::gemm_f32_path_name(path);
            CAPTURE(path_name);
            CAPTURE(plain);
            CAPTURE(shape.m);
            CAPTURE(shape.k);
            CAPTURE(int(a_layout));
            CAPTURE(int(b_layout));
            CHECK(mismatches == 0);
            CHECK(c.sentinels_intact());
          }
        }
      }
    }
  }
  ops::cpu::gemm_f32_detail::set_plain_packing(false);
}

TEST_CASE("f32 GEMM: one thread and two give the same bits; batches of tasks; K = 0") {
  std::mt19937 random(3);
  for (GemmF32Path path : every_path()) {
    if (skip_unavailable(path)) continue;
    const std::string path_name = ops::cpu::gemm_f32_path_name(path);
    CAPTURE(path_name);
    F32Matrix a(300, 600, Layout::column_major, 0, random);
    F32Matrix b(600, 200, Layout::row_major, 0, random);
    OutputMatrix one(300, 200, 0, random);
    OutputMatrix two = one;
    {
      ThreadCountGuard threads(1);
      ops::cpu::gemm_f32_batch({GemmTask{a.span(), b.span(), one.span(), true}}, path);
    }
    {
      ThreadCountGuard threads(2);
      ops::cpu::gemm_f32_batch({GemmTask{a.span(), b.span(), two.span(), true}}, path);
    }
    // Eigen's own blocking follows the size of each thread's block of rows, so its bits may
    // change with the thread count (they do here); the kernel paths' may not.
    if (path != GemmF32Path::eigen) {
      CHECK(std::memcmp(one.storage.data(), two.storage.data(), one.storage.size() * sizeof(float)) == 0);
    }

    // Three tasks at once (spread whole over the threads) give each task's own product.
    ThreadCountGuard threads(2);
    std::vector<F32Matrix> as, bs;
    std::vector<OutputMatrix> together, alone;
    for (int t = 0; t < 3; ++t) {
      as.emplace_back(20 + t, 50, Layout::row_major, 0, random);
      bs.emplace_back(50, 40 - t, Layout::column_major, 0, random);
      together.emplace_back(20 + t, 40 - t, 0, random);
    }
    alone = together;
    std::vector<GemmTask> tasks;
    for (int t = 0; t < 3; ++t) tasks.push_back(GemmTask{as[t].span(), bs[t].span(), together[t].span(), false});
    ops::cpu::gemm_f32_batch(tasks, path);
    for (int t = 0; t < 3; ++t) {
      ops::cpu::gemm_f32_batch({GemmTask{as[t].span(), bs[t].span(), alone[t].span(), false}}, path);
      CHECK(together[t].storage == alone[t].storage);
    }

    // K = 0: C = 0, or C unchanged when accumulating.
    F32Matrix empty_a(4, 0, Layout::row_major, 0, random), empty_b(0, 5, Layout::row_major, 0, random);
    OutputMatrix c(4, 5, 0, random);
    const OutputMatrix c_before = c;
    ops::cpu::gemm_f32_batch({GemmTask{empty_a.span(), empty_b.span(), c.span(), true}}, path);
    CHECK(c.storage == c_before.storage);
    ops::cpu::gemm_f32_batch({GemmTask{empty_a.span(), empty_b.span(), c.span(), false}}, path);
    CHECK(c.storage == std::vector<float>(20, 0.0f));
    if (path != GemmF32Path::eigen) {
      F32Matrix wrong_b(3, 5, Layout::row_major, 0, random), a4(4, 4, Layout::row_major, 0, random);
      CHECK_THROWS_WITH_AS(ops::cpu::gemm_f32_batch({GemmTask{a4.span(), wrong_b.span(), c.span(), false}}, path),
                           doctest::Contains("shapes do not chain"), Error);
    }
  }
}

TEST_CASE("f32 GEMM: the row blocks cover every row once, on 1, 2 and 3 threads") {
  // Many rows of C: several work items of whole micro-kernel tiles (their count rounded up to a
  // multiple of the threads), a ragged last tile, two K slices, each operand layout the
  // packers fetch ahead in. Every output must still be its documented FMA chain.
  std::mt19937 random(11);
  for (GemmF32Path path : {GemmF32Path::avx512, GemmF32Path::avx2}) {
    if (skip_unavailable(path)) continue;
    for (int threads : {1, 2, 3}) {
      ThreadCountGuard guard(threads);
      for (int64_t m : {int64_t(97), int64_t(1025)}) {
        for (Layout a_layout : {Layout::row_major, Layout::column_major}) {
          const Layout b_layout = a_layout == Layout::row_major ? Layout::column_major : Layout::row_major;
          F32Matrix a(m, 300, a_layout, 1, random);
          F32Matrix b(300, 70, b_layout, 2, random);
          OutputMatrix c(m, 70, 1, random);
          const OutputMatrix c_before = c;
          ops::cpu::gemm_f32_batch({GemmTask{a.span(), b.span(), c.span(), true}}, path);
          int64_t mismatches = 0;
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < 70; ++j)
              if (c.at(i, j) != emulate_output(a, b, i, j, c_before.at(i, j), true)) ++mismatches;
          const std::string path_name = ops::cpu::gemm_f32_path_name(path);
          CAPTURE(path_name);
          CAPTURE(threads);
          CAPTURE(m);
          CAPTURE(int(a_layout));
          CHECK(mismatches == 0);
          CHECK(c.sentinels_intact());
        }
      }
    }
  }
}

namespace {

// Sets $LAMINA_CPU_GEMM_F32 for a scope and restores it after.
class PathVariable {
 public:
  explicit PathVariable(const char* value) {
    const char* saved = std::getenv("LAMINA_CPU_GEMM_F32");
    had_ = saved != nullptr;
    if (had_) saved_ = saved;
    if (value) {
      setenv("LAMINA_CPU_GEMM_F32", value, 1);
    } else {
      unsetenv("LAMINA_CPU_GEMM_F32");
    }
  }
  ~PathVariable() {
    if (had_) {
      setenv("LAMINA_CPU_GEMM_F32", saved_.c_str(), 1);
    } else {
      unsetenv("LAMINA_CPU_GEMM_F32");
    }
  }
  PathVariable(const PathVariable&) = delete;
  PathVariable& operator=(const PathVariable&) = delete;

 private:
  bool had_ = false;
  std::string saved_;
};

}  // namespace

TEST_CASE("f32 GEMM: path names, LAMINA_CPU_GEMM_F32 and paths the CPU lacks") {
  using ops::cpu::gemm_f32_resolve;
  for (GemmF32Path path : {GemmF32Path::automatic, GemmF32Path::avx512, GemmF32Path::avx2, GemmF32Path::eigen}) {
    CHECK(ops::cpu::gemm_f32_path_from_name(ops::cpu::gemm_f32_path_name(path), "test") == path);
  }
  CHECK_THROWS_WITH_AS(ops::cpu::gemm_f32_path_from_name("avx1024", "LAMINA_CPU_GEMM_F32"),
                       doctest::Contains("LAMINA_CPU_GEMM_F32: unknown f32 GEMM path 'avx1024'"), Error);
  const auto& features = ops::cpu::cpu_features();
  const GemmF32Path best = features.avx512f    ? GemmF32Path::avx512
                           : features.avx2_fma ? GemmF32Path::avx2
                                               : GemmF32Path::eigen;
  std::mt19937 random(1);
  F32Matrix a(128, 64, Layout::row_major, 0, random), b(64, 64, Layout::row_major, 0, random);
  OutputMatrix c(128, 64, 0, random);
  const GemmTask large{a.span(), b.span(), c.span(), false};
  F32Matrix row(1, 64, Layout::row_major, 0, random);
  OutputMatrix c_row(1, 64, 0, random);
  const GemmTask thin{row.span(), b.span(), c_row.span(), false};
  {
    PathVariable variable(nullptr);
    CHECK(gemm_f32_resolve() == best);
    CHECK(gemm_f32_resolve(GemmF32Path::eigen) == GemmF32Path::eigen);
    // Unforced, a 128 x 64 x 64 product goes to the kernels where the CPU has one; a single
    // row never.
    CHECK(ops::cpu::gemm_f32_prefers_kernels(large) == (best != GemmF32Path::eigen));
    CHECK_FALSE(ops::cpu::gemm_f32_prefers_kernels(thin));
  }
  {
    PathVariable variable("eigen");
    CHECK(gemm_f32_resolve() == GemmF32Path::eigen);
    CHECK_FALSE(ops::cpu::gemm_f32_prefers_kernels(large));
  }
  {
    PathVariable variable("auto");
    CHECK(gemm_f32_resolve() == best);
  }
  {
    PathVariable variable("fastest");
    CHECK_THROWS_WITH_AS(gemm_f32_resolve(), doctest::Contains("LAMINA_CPU_GEMM_F32: unknown f32 GEMM path"), Error);
  }
  for (GemmF32Path path : {GemmF32Path::avx512, GemmF32Path::avx2}) {
    PathVariable variable(ops::cpu::gemm_f32_path_name(path));
    if (ops::cpu::gemm_f32_path_available(path)) {
      CHECK(gemm_f32_resolve() == path);
      CHECK(ops::cpu::gemm_f32_prefers_kernels(thin));  // forced: even a single row
    } else {
      CHECK_THROWS_WITH_AS(gemm_f32_resolve(), doctest::Contains("which this CPU lacks"), Error);
      CHECK_THROWS_WITH_AS(gemm_f32_resolve(path), doctest::Contains("which this CPU lacks"), Error);
    }
  }
  if (features.avx512f) CHECK(features.avx2_fma);
}

TEST_CASE("f32 GEMM: ops::matmul in f32 with each path forced, batched and transposed, against f64") {
  std::mt19937 random(9);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const auto values = [&](int64_t count) {
    std::vector<float> out(static_cast<size_t>(count));
    for (float& value : out) value = uniform(random);
    return out;
  };
  const int64_t batch = 2, rows = 19, depth = 300, outputs = 45;
  const std::vector<float> x_values = values(batch * rows * depth), w_values = values(outputs * depth);
  const Tensor x = Tensor::from_vector(x_values, {batch, rows, depth});
  const Tensor w = Tensor::from_vector(w_values, {outputs, depth});
  // y = x w^T, and x^T (per batch) times y's shape-matched operand through a batched product.
  std::vector<double> exact(size_t(batch * rows * outputs)), magnitude(exact.size());
  for (int64_t t = 0; t < batch * rows; ++t)
    for (int64_t o = 0; o < outputs; ++o) {
      double sum = 0, size = 0;
      for (int64_t k = 0; k < depth; ++k) {
        const double product = double(x_values[size_t(t * depth + k)]) * double(w_values[size_t(o * depth + k)]);
        sum += product;
        size += std::abs(product);
      }
      exact[size_t(t * outputs + o)] = sum;
      magnitude[size_t(t * outputs + o)] = size;
    }
  for (GemmF32Path path : every_path()) {
    if (skip_unavailable(path)) continue;
    PathVariable variable(ops::cpu::gemm_f32_path_name(path));
    const std::string path_name = ops::cpu::gemm_f32_path_name(path);
    CAPTURE(path_name);
    // Folded batch (one [38, 300] x [300, 45]^T product) and a broadcast batch of products.
    const Tensor folded = ops::matmul(x, w, false, true);
    const Tensor batched = ops::matmul(x, w.expand({batch, outputs, depth}), false, true);
    for (const Tensor& out : {folded, batched}) {
      const std::vector<double> got = out.to_vector<double>();
      REQUIRE(got.size() == exact.size());
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(got[i] - exact[i]) / (double(depth + 2) * kUnitRoundoff * magnitude[i]));
      CHECK(worst <= 1.0);
    }
    // The weight gradient's shape: x^T (a transposed view) times y.
    const Tensor x2 = x.reshape({batch * rows, depth});
    const Tensor grad_w = ops::matmul(folded.reshape({batch * rows, outputs}), x2, true, false);
    const std::vector<double> got = grad_w.to_vector<double>();
    double worst = 0;
    for (int64_t o = 0; o < outputs; ++o)
      for (int64_t k = 0; k < depth; ++k) {
        double sum = 0, size = 0, inherited = 0;
        for (int64_t t = 0; t < batch * rows; ++t) {
          const double x_value = double(x_values[size_t(t * depth + k)]);
          const double product = exact[size_t(t * outputs + o)] * x_value;
          sum += product;
          size += std::abs(product);
          inherited += magnitude[size_t(t * outputs + o)] * std::abs(x_value);
        }
        // Each element of folded is off by up to (depth + 2) u times its magnitude: that error,
        // carried through this product, on top of this product's own summation error.
        const double bound =
            (double(batch * rows + 2) * size + double(depth + 2) * inherited) * kUnitRoundoff * 1.01 + 1e-30;
        worst = std::max(worst, std::abs(got[size_t(o * depth + k)] - sum) / bound);
      }
    CHECK(worst <= 1.0);
  }
}
