// matmul and matmul_backward against the f64 reference: 2-D and batched, broadcast batches,
// every transpose flag, strided and transposed-view operands, empty dims, thread counts.
#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

struct MatmulCase {
  Shape batch_a, batch_b;
  int64_t m, k, n;
};

std::vector<MatmulCase> matmul_cases(Generator& gen) {
  std::vector<MatmulCase> cases = {
      {{}, {}, 1, 1, 1},       {{}, {}, 3, 0, 4},        {{}, {}, 0, 3, 2},          {{}, {}, 2, 3, 0},
      {{4}, {4}, 3, 5, 2},     {{2, 3}, {2, 3}, 2, 4, 3}, {{3}, {}, 4, 5, 6},        {{1}, {3}, 2, 3, 4},
      {{2, 1}, {1, 3}, 3, 2, 2}, {{}, {2}, 3, 4, 5},      {{2, 3}, {3}, 2, 2, 2},    {{2}, {2}, 3, 0, 2},
      {{0}, {}, 2, 3, 4},      {{2}, {2}, 0, 3, 4},       {{1, 2}, {}, 3, 4, 1},
  };
  for (int i = 0; i < 4; ++i) {
    const std::vector<int64_t> mkn = random_ints(gen, 3, 1, 8);
    cases.push_back({i < 2 ? Shape{} : random_shape(gen, i - 1, 3), {}, mkn[0], mkn[1], mkn[2]});
  }
  return cases;
}

// The stored shape of an operand: [..., rows, cols], swapped when the op transposes it.
Shape stored_shape(Shape batch, int64_t rows, int64_t cols, bool transposed) {
  batch.push_back(transposed ? cols : rows);
  batch.push_back(transposed ? rows : cols);
  return batch;
}

// The last two dims of t swapped, as a contiguous f64 tensor (read element by element).
Tensor transposed64(const Tensor& t) {
  const Tensor view = views::transpose(t, -1, -2);
  return Tensor::from_vector(view.to_vector<double>(), view.shape(), DType::f64);
}

// Operand layouts: as stored, stride-2 columns (Eigen cannot map: copied), stored transposed
// and viewed back (mapped column-major without a copy), or at a storage offset.
Tensor matmul_layout(const Tensor& t, Layout layout) {
  if (layout == Layout::transposed) return views::transpose(ops::contiguous(views::transpose(t, -1, -2)), -1, -2);
  return in_layout(t, layout);
}

}  // namespace

TEST_CASE("matmul matches the reference for every transpose flag, batch shape and layout") {
  Generator gen(71);
  for (const MatmulCase& c : matmul_cases(gen)) {
    for (DType dtype : kFloatDTypes) {
      for (int flags = 0; flags < 4; ++flags) {
        const bool transpose_a = flags & 1, transpose_b = flags & 2;
        const Tensor a = random_tensor(stored_shape(c.batch_a, c.m, c.k, transpose_a), dtype, gen);
        const Tensor b = random_tensor(stored_shape(c.batch_b, c.k, c.n, transpose_b), dtype, gen);
        const Tensor expected = ops::reference::matmul(a, b, transpose_a, transpose_b);
        for (size_t l = 0; l < std::size(kLayouts); ++l) {
          const Layout layout_a = kLayouts[l], layout_b = kLayouts[(l + 3) % std::size(kLayouts)];
          INFO(name(dtype) << " a " << a.shape() << std::string(transpose_a ? "^T " : " ") << name(layout_a) << ", b "
                                 << b.shape() << std::string(transpose_b ? "^T " : " ") << name(layout_b));
          const Tensor out = ops::matmul(matmul_layout(a, layout_a), matmul_layout(b, layout_b), transpose_a, transpose_b);
          CHECK(out.dtype() == dtype);
          CHECK_CLOSE(out, expected, tolerance_for(dtype));
        }
      }
    }
  }
}

TEST_CASE("matmul of transposed views equals matmul with transpose flags") {
  Generator gen(72);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    const Tensor a_stored = random_tensor({2, 5, 3}, dtype, gen);  // a^T, stored
    const Tensor b_stored = random_tensor({4, 5}, dtype, gen);     // b^T, stored
    const Tensor a_view = views::transpose(a_stored, -1, -2);       // [2, 3, 5], no copy
    const Tensor b_view = views::transpose(b_stored, 0, 1);         // [5, 4], no copy
    CHECK(a_view.storage() == a_stored.storage());
    const Tensor expected = ops::reference::matmul(a_stored, b_stored, true, true);
    INFO(name(dtype));
    CHECK_CLOSE(ops::matmul(a_view, b_view), expected, tolerance_for(dtype));
    CHECK_CLOSE(ops::matmul(a_view, b_stored, false, true), expected, tolerance_for(dtype));
    CHECK_CLOSE(ops::matmul(a_stored, b_view, true, false), expected, tolerance_for(dtype));
    // An expanded (stride-0 batch) operand.
    const Tensor shared = views::expand(random_tensor({1, 3, 5}, dtype, gen), {4, 3, 5});
    CHECK_CLOSE(ops::matmul(shared, b_view), ops::reference::matmul(shared, b_view, false, false), tolerance_for(dtype));
  }
}

TEST_CASE("matmul with K = 0 gives zeros, also into a batch") {
  const Tensor out = ops::matmul(zeros({2, 3, 0}), zeros({0, 4}));
  CHECK(out.shape() == Shape{2, 3, 4});
  CHECK(out.to_vector<double>() == std::vector<double>(24, 0.0));
  CHECK(ops::matmul(ones({0, 3}), ones({0, 2}), true, false).to_vector<double>() == std::vector<double>(6, 0.0));
}

TEST_CASE("matmul splits large products over threads without changing results") {
  Generator gen(73);
  struct Large {
    Shape a, b;
    bool transpose_a, transpose_b;
  };
  // Row blocks, column blocks (few rows, many columns) and a batch of two on two threads.
  const Large cases[] = {{{70, 33}, {33, 5}, false, false},
                         {{3, 33}, {150, 33}, false, true},
                         {{33, 3}, {33, 150}, true, false},
                         {{2, 40, 20}, {20, 50}, false, false},
                         {{2, 20, 40}, {2, 50, 20}, true, true}};
  for (const Large& c : cases) {
    const Tensor a = random_tensor(c.a, DType::f32, gen), b = random_tensor(c.b, DType::f32, gen);
    const Tensor expected = ops::reference::matmul(a, b, c.transpose_a, c.transpose_b);
    Tensor one_thread, two_threads;
    {
      ThreadCountGuard guard(1);
      one_thread = ops::matmul(a, b, c.transpose_a, c.transpose_b);
    }
    {
      ThreadCountGuard guard(2);
      two_threads = ops::matmul(a, b, c.transpose_a, c.transpose_b);
    }
    INFO("a " << c.a << ", b " << c.b);
    // f32 sums of up to 50 products of values in [-1, 1].
    const Tolerance tol{5e-5, 1e-5};
    CHECK_CLOSE(one_thread, expected, tol);
    CHECK_CLOSE(two_threads, expected, tol);
    CHECK_CLOSE(two_threads, one_thread, tol);
  }
}

TEST_CASE("matmul_backward matches the reference products g B^T and A^T g") {
  Generator gen(74);
  for (const MatmulCase& c : matmul_cases(gen)) {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      for (int flags = 0; flags < 4; ++flags) {
        const bool transpose_a = flags & 1, transpose_b = flags & 2;
        const Tensor a = random_tensor(stored_shape(c.batch_a, c.m, c.k, transpose_a), dtype, gen);
        const Tensor b = random_tensor(stored_shape(c.batch_b, c.k, c.n, transpose_b), dtype, gen);
        const Tensor out = ops::matmul(a, b, transpose_a, transpose_b);
        const Tensor grad_out = random_tensor(out.shape(), dtype, gen);
        // With A = op(a), B = op(b): dA = g B^T, dB = A^T g, then op() undone and batch summed.
        const Tensor A = transpose_a ? transposed64(a) : a, B = transpose_b ? transposed64(b) : b;
        const Tensor dA = ops::reference::matmul(grad_out, transposed64(B), false, false);
        const Tensor dB = ops::reference::matmul(transposed64(A), grad_out, false, false);
        const Tensor expected_a = reference_sum_to(transpose_a ? transposed64(dA) : dA, a.shape());
        const Tensor expected_b = reference_sum_to(transpose_b ? transposed64(dB) : dB, b.shape());
        const auto [grad_a, grad_b] =
            ops::matmul_backward(noncontiguous(grad_out), transposed_layout(a), b, transpose_a, transpose_b);
        // bf16: each batch's product is rounded before a broadcast batch is summed.
        Tolerance tol_a = tolerance_for(dtype), tol_b = tol_a;
        if (dtype == DType::bf16) {
          tol_a.atol *= double(std::max<int64_t>(1, shape_numel(dA.shape()) / std::max<int64_t>(1, a.numel())));
          tol_b.atol *= double(std::max<int64_t>(1, shape_numel(dB.shape()) / std::max<int64_t>(1, b.numel())));
        }
        INFO(name(dtype) << " a " << a.shape() << std::string(transpose_a ? "^T" : "") << ", b " << b.shape()
                               << std::string(transpose_b ? "^T" : ""));
        CHECK(grad_a.dtype() == dtype);
        CHECK_CLOSE(grad_a, expected_a, tol_a);
        CHECK_CLOSE(grad_b, expected_b, tol_b);
      }
    }
  }
}
