// Reductions against the f64 references: single, multiple, negative and all dims, keepdim,
// layouts, empty dims, their backwards, and thread-count independence.
#include <cmath>
#include <functional>

#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

struct Reduction {
  std::string name;
  std::function<Tensor(const Tensor&, const Shape&, bool)> op, reference;
  bool accepts_integers;
  bool needs_elements;  // max/min have no value over zero elements
};

const Reduction kReductions[] = {
    {"sum", [](const Tensor& x, const Shape& d, bool k) { return ops::sum(x, d, k); }, ops::reference::reduce_sum,
     true, false},
    {"mean", [](const Tensor& x, const Shape& d, bool k) { return ops::mean(x, d, k); }, ops::reference::reduce_mean,
     false, false},
    {"max", [](const Tensor& x, const Shape& d, bool k) { return ops::max(x, d, k); }, ops::reference::reduce_max, true,
     true},
    {"min", [](const Tensor& x, const Shape& d, bool k) { return ops::min(x, d, k); }, ops::reference::reduce_min, true,
     true},
    {"logsumexp", [](const Tensor& x, const Shape& d, bool k) { return ops::logsumexp(x, d, k); },
     ops::reference::logsumexp, false, false},
    {"var", [](const Tensor& x, const Shape& d, bool k) { return ops::var(x, d, 1, k); },
     [](const Tensor& x, const Shape& d, bool k) { return ops::reference::var(x, d, 1, k); }, false, false},
    {"var(correction=0)", [](const Tensor& x, const Shape& d, bool k) { return ops::var(x, d, 0, k); },
     [](const Tensor& x, const Shape& d, bool k) { return ops::reference::var(x, d, 0, k); }, false, false},
};

// Dim lists for a tensor of `rank` dims: all dims, each dim, negative dims and pairs.
std::vector<Shape> dim_lists(int64_t rank) {
  std::vector<Shape> lists = {{}};
  for (int64_t d = 0; d < rank; ++d) lists.push_back({d});
  if (rank >= 1) lists.push_back({-1});
  if (rank >= 2) lists.push_back({0, -1});
  if (rank >= 3) lists.push_back({-2, 0});  // unsorted
  if (rank >= 4) lists.push_back({3, 0, 2});
  return lists;
}

const Tolerance kExact{0, 0};

int64_t reduced_count(const Shape& shape, const Shape& dims) {
  if (dims.empty()) return shape_numel(shape);
  int64_t count = 1;
  for (int64_t d : dims) count *= shape[size_t(normalize_dim(d, int64_t(shape.size()), "test"))];
  return count;
}

}  // namespace

TEST_CASE("reductions match the f64 reference over every dim list, keepdim and layout") {
  Generator gen(61);
  const std::vector<Shape> shapes = {{},        {1},       {5},       {1, 1},       {3, 1, 4},
                                     {0, 3},    {2, 0, 3}, {1, 7, 1}, random_shape(gen, 2), random_shape(gen, 3),
                                     random_shape(gen, 4)};
  for (const Reduction& r : kReductions) {
    std::vector<DType> dtypes(std::begin(kFloatDTypes), std::end(kFloatDTypes));
    if (r.accepts_integers) dtypes.insert(dtypes.end(), std::begin(kIntDTypes), std::end(kIntDTypes));
    for (DType dtype : dtypes) {
      for (const Shape& shape : shapes) {
        const Tensor x = is_floating(dtype) ? random_tensor(shape, dtype, gen, -2, 2)
                                            : integer_values(shape, dtype, gen, -1000, 1000);
        for (const Shape& dims : dim_lists(int64_t(shape.size()))) {
          if (r.needs_elements && reduced_count(shape, dims) == 0) continue;  // an error: tested below
          for (bool keepdim : {false, true}) {
            const Tensor expected = r.reference(x, dims, keepdim);
            for (Layout layout : kLayouts) {
              INFO(r.name << " " << name(dtype) << " " << shape << " dims " << dims << " keepdim " << keepdim
                          << " " << name(layout));
              const Tensor out = r.op(in_layout(x, layout), dims, keepdim);
              CHECK(out.dtype() == dtype);
              CHECK_CLOSE(out, expected, tolerance_for(dtype));
            }
          }
        }
      }
    }
  }
}

TEST_CASE("sum of an empty dim is 0, max of one throws") {
  const Tensor x = zeros({2, 0, 3});
  const Tensor s = ops::sum(x, {1});
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.to_vector<double>() == std::vector<double>(6, 0.0));
  CHECK(ops::sum(x, {0}, true).shape() == Shape{1, 0, 3});
  CHECK(ops::max(x, {0}).shape() == Shape{0, 3});  // no output element reduces over nothing
  CHECK_THROWS_WITH_AS(ops::max(x, {1}), doctest::Contains("max: cannot reduce over zero elements"), Error);
  CHECK_THROWS_WITH_AS(ops::argmax(x, 1), doctest::Contains("argmax"), Error);
}

TEST_CASE("argmax returns the first maximum along a dim") {
  Generator gen(62);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    for (const Shape& shape : {Shape{5}, Shape{1, 4}, Shape{4, 1, 3}, random_shape(gen, 3), random_shape(gen, 4)}) {
      const Tensor x = integer_values(shape, dtype, gen, -3, 4);  // many ties
      for (int64_t dim = -int64_t(shape.size()); dim < int64_t(shape.size()); ++dim) {
        for (bool keepdim : {false, true}) {
          INFO(name(dtype) << " " << shape << " dim " << dim << " keepdim " << keepdim);
          const Tensor out = ops::argmax(transposed_layout(x), dim, keepdim);
          CHECK(out.dtype() == DType::i64);
          CHECK_CLOSE(out, ops::reference::argmax(x, dim, keepdim), kExact);
        }
      }
    }
  }
  const Tensor ties = Tensor::from_vector(std::vector<double>{1, 3, 3, 0}, {4});
  CHECK(ops::argmax(ties, 0).item<int64_t>() == 1);
}

TEST_CASE("sum_to sums broadcast dims back to the operand shape") {
  Generator gen(63);
  for (DType dtype : kFloatDTypes) {
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank);
      const Shape target = broadcastable_to(shape, gen);
      const Tensor x = random_tensor(shape, dtype, gen);
      INFO(name(dtype) << " " << shape << " -> " << target);
      const Tensor out = ops::sum_to(noncontiguous(x), target);
      CHECK(out.shape() == target);
      CHECK_CLOSE(out, reference_sum_to(x, target), tolerance_for(dtype));
    }
  }
  const Tensor x = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(ops::sum_to(x, {3}).to_vector<double>() == std::vector<double>{5, 7, 9});
  CHECK(ops::sum_to(x, {2, 1}).to_vector<double>() == std::vector<double>{6, 15});
  CHECK(ops::sum_to(x, {}).to_vector<double>() == std::vector<double>{21});
  CHECK_THROWS_WITH_AS(ops::sum_to(x, {2}), doctest::Contains("sum_to: cannot sum shape [2, 3] to [2]"), Error);
}

TEST_CASE("extremum_backward splits the gradient evenly between ties") {
  const Tensor x = Tensor::from_vector(std::vector<double>{1, 3, 3, 2, 2, 2}, {2, 3});
  const Tensor grad = Tensor::from_vector(std::vector<double>{6, 3}, {2});
  const Tensor out = ops::max(x, {1});
  CHECK(ops::extremum_backward(grad, x, out, {1}, false).to_vector<double>() ==
        std::vector<double>{0, 3, 3, 1, 1, 1});
  const Tensor min_out = ops::min(x, {-1}, true);
  CHECK(ops::extremum_backward(grad.view({2, 1}), x, min_out, {-1}, true).to_vector<double>() ==
        std::vector<double>{6, 0, 0, 1, 1, 1});
  // Over every dim: the single maximum 3 appears twice.
  const Tensor all_grad = Tensor::from_vector(std::vector<double>{10}, {});
  CHECK(ops::extremum_backward(all_grad, x, ops::max(x), {}, false).to_vector<double>() ==
        std::vector<double>{0, 5, 5, 0, 0, 0});
  // Along dim 0 of a transposed view, with keepdim.
  const Tensor xt = transposed_layout(Tensor::from_vector(std::vector<double>{1, 4, 4, 0, 4, 2}, {3, 2}));
  const Tensor column_grad = Tensor::from_vector(std::vector<double>{2, 8}, {1, 2});
  CHECK(ops::extremum_backward(column_grad, xt, ops::max(xt, {0}, true), {0}, true).to_vector<double>() ==
        std::vector<double>{0, 8, 1, 0, 1, 0});
}

TEST_CASE("extremum_backward matches a count of ties over any dims") {
  using ops::BinaryOp;
  Generator gen(64);
  for (DType dtype : kFloatDTypes) {
    const Tensor x = integer_values({3, 4, 5}, dtype, gen, 0, 3);  // ties almost everywhere
    for (const Shape& dims : {Shape{1}, Shape{-1}, Shape{0, 2}, Shape{}}) {
      for (bool keepdim : {false, true}) {
        // mask = (x == max), each element's share = grad / (number of maxima in its group).
        const Tensor peak = ops::reference::reduce_max(x, dims, true);
        const Tensor mask = map_values(ops::reference::binary(BinaryOp::sub, x, peak), [](double d) { return d == 0; });
        const Tensor ties = ops::reference::reduce_sum(mask, dims, true);
        const Tensor grad = random_tensor(ops::reference::reduce_max(x, dims, keepdim).shape(), dtype, gen);
        const Tensor grad_kept = Tensor::from_vector(grad.to_vector<double>(), ties.shape(), DType::f64);
        const Tensor expected =
            ops::reference::binary(BinaryOp::mul, mask, ops::reference::binary(BinaryOp::div, grad_kept, ties));
        INFO(name(dtype) << " dims " << dims << " keepdim " << keepdim);
        const Tensor out = ops::max(x, dims, keepdim);
        CHECK_CLOSE(ops::extremum_backward(grad, noncontiguous(x), out, dims, keepdim), expected, tolerance_for(dtype));
      }
    }
  }
}

// d/dx of sum(grad * f(x)) by central differences of the f64 reference f, one element at a time.
Tensor reduction_gradient(const std::function<Tensor(const Tensor&)>& f, const Tensor& x, const Tensor& grad) {
  constexpr double kStep = 1e-6;
  const std::vector<double> values = x.to_vector<double>(), g = grad.to_vector<double>();
  std::vector<double> result(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    std::vector<double> up = values, down = values;
    up[i] += kStep;
    down[i] -= kStep;
    const std::vector<double> f_up = f(Tensor::from_vector(up, x.shape(), DType::f64)).to_vector<double>();
    const std::vector<double> f_down = f(Tensor::from_vector(down, x.shape(), DType::f64)).to_vector<double>();
    for (size_t j = 0; j < g.size(); ++j) result[i] += g[j] * (f_up[j] - f_down[j]) / (2 * kStep);
  }
  return Tensor::from_vector(result, x.shape(), DType::f64);
}

TEST_CASE("logsumexp_backward and var_backward match finite differences") {
  Generator gen(66);
  const Tolerance finite_difference{1e-7, 1e-6};
  for (DType dtype : {DType::f64, DType::f32}) {
    const Tolerance tol = dtype == DType::f64 ? finite_difference : tolerance_for(dtype);
    const Tensor x = random_tensor({3, 4, 2}, dtype, gen, -2, 2);
    for (const Shape& dims : {Shape{1}, Shape{0, -1}, Shape{}}) {
      for (bool keepdim : {false, true}) {
        INFO(name(dtype) << " dims " << dims << " keepdim " << keepdim);
        const Tensor lse = ops::logsumexp(x, dims, keepdim);
        const Tensor grad = random_tensor(lse.shape(), dtype, gen);
        const auto reference_lse = [&](const Tensor& t) { return ops::reference::logsumexp(t, dims, keepdim); };
        CHECK_CLOSE(ops::logsumexp_backward(grad, transposed_layout(x), lse, dims, keepdim),
                    reduction_gradient(reference_lse, x, grad), tol);
        for (int64_t correction : {0, 1}) {
          const auto reference_var = [&](const Tensor& t) { return ops::reference::var(t, dims, correction, keepdim); };
          CHECK_CLOSE(ops::var_backward(grad, noncontiguous(x), dims, correction, keepdim),
                      reduction_gradient(reference_var, x, grad), tol);
        }
      }
    }
  }
}

TEST_CASE("sum, mean and max are bitwise identical on 1 and 2 threads") {
  Generator gen(65);
  const Tensor x = random_tensor({300, 257}, DType::f32, gen);
  const Tensor xt = transposed_layout(x);
  const std::vector<std::function<Tensor()>> reductions = {
      [&] { return ops::sum(x, {1}); },  [&] { return ops::sum(xt, {0}); }, [&] { return ops::sum(x); },
      [&] { return ops::mean(x, {1}); }, [&] { return ops::mean(xt, {0, 1}); }, [&] { return ops::max(x, {1}); },
      [&] { return ops::max(xt, {0}); }};
  for (size_t i = 0; i < reductions.size(); ++i) {
    std::vector<float> one_thread, two_threads;
    {
      ThreadCountGuard guard(1);
      one_thread = reductions[i]().to_vector<float>();
    }
    {
      ThreadCountGuard guard(2);
      two_threads = reductions[i]().to_vector<float>();
    }
    INFO("reduction " << i);
    CHECK(one_thread == two_threads);
  }
}
