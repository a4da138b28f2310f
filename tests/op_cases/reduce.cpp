// Op cases of the reductions: sum, mean, max, min, logsumexp and var over every dim list (single,
// several, negative, unsorted, all) with and without keepdim, argmax along every dim, and sum_to.
#include "autograd/functions.h"
#include "op_cases/op_case.h"

namespace lamina::testing::op_cases {
namespace reduce_family {

const Tolerance kExact{0, 0};

struct ReduceArgs {
  Shape dims;
  bool keepdim = false;
  int64_t correction = 1;  // var only
};

enum class Kind { sum, mean, max, min, logsumexp, var };

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

int64_t reduced_count(const Shape& shape, const Shape& dims) {
  if (dims.empty()) return shape_numel(shape);
  int64_t count = 1;
  for (int64_t d : dims) count *= shape[size_t(normalize_dim(d, int64_t(shape.size()), "test"))];
  return count;
}

std::string reduce_label(const Shape& shape, const ReduceArgs& args, Kind kind) {
  std::string label = shape_str(shape) + " dims " + shape_str(args.dims) + (args.keepdim ? " keepdim" : "");
  if (kind == Kind::var) label += " correction " + std::to_string(args.correction);
  return label;
}

Tensor reduce_values(const Shape& shape, DType dtype, Generator& gen) {
  return is_floating(dtype) ? random_tensor(shape, dtype, gen, -2, 2) : integer_values(shape, dtype, gen, -1000, 1000);
}

OpCase reduction_case(Kind kind) {
  const char* names[] = {"ops::sum", "ops::mean", "ops::max", "ops::min", "ops::logsumexp", "ops::var"};
  const bool integers = kind == Kind::sum || kind == Kind::max || kind == Kind::min;
  const bool needs_elements = kind == Kind::max || kind == Kind::min;  // no value over zero elements
  OpCase c;
  c.name = names[int(kind)];
  c.dtypes = {DType::f32, DType::f64, DType::bf16, DType::f16};
  if (integers) c.dtypes.insert(c.dtypes.end(), {DType::i32, DType::i64});
  c.calls = [kind, needs_elements](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    const std::vector<Shape> shapes = {{},     {1},       {5},       {1, 1},
                                       {3, 1, 4}, {0, 3}, {2, 0, 3}, {1, 7, 1},
                                       random_shape(gen, 2), random_shape(gen, 3), random_shape(gen, 4)};
    const std::vector<int64_t> corrections = kind == Kind::var ? std::vector<int64_t>{1, 0} : std::vector<int64_t>{1};
    for (const Shape& shape : shapes) {
      const Tensor x = reduce_values(shape, dtype, gen);
      for (const Shape& dims : dim_lists(int64_t(shape.size()))) {
        const int64_t count = reduced_count(shape, dims);
        if (needs_elements && count == 0) continue;  // an error: tests/ops/test_reduce.cpp
        for (bool keepdim : {false, true}) {
          for (int64_t correction : corrections) {
            const ReduceArgs args{dims, keepdim, correction};
            OpCall call{reduce_label(shape, args, kind), {x}, args};
            call.gradcheck = kind != Kind::var || count > correction;  // else the variance is not finite
            calls.push_back(call);
          }
        }
      }
    }
    if (!with_large) return calls;
    // Long rows and columns: the CUDA kernels' block-per-output and thread-per-output paths.
    const std::pair<Shape, Shape> large[] = {{{2000, 37}, {0}},     {{37, 3000}, {1}},  {{64, 64, 3}, {0, 1}},
                                             {{1, 200000}, {1}},    {{300000}, {}},      {{300, 2000}, {0}}};
    for (const auto& [shape, dims] : large) {
      const Tensor x = reduce_values(shape, dtype, gen);
      for (bool keepdim : {false, true}) {
        const ReduceArgs args{dims, keepdim, 1};
        calls.push_back({reduce_label(shape, args, kind), {x}, args});
      }
    }
    return calls;
  };
  c.forward = [kind](const OpCall& call, const Tensors& in) {
    const ReduceArgs& a = call.args<ReduceArgs>();
    switch (kind) {
      case Kind::sum: return Tensors{ops::sum(in[0], a.dims, a.keepdim)};
      case Kind::mean: return Tensors{ops::mean(in[0], a.dims, a.keepdim)};
      case Kind::max: return Tensors{ops::max(in[0], a.dims, a.keepdim)};
      case Kind::min: return Tensors{ops::min(in[0], a.dims, a.keepdim)};
      case Kind::logsumexp: return Tensors{ops::logsumexp(in[0], a.dims, a.keepdim)};
      case Kind::var: return Tensors{ops::var(in[0], a.dims, a.correction, a.keepdim)};
    }
    return Tensors{};
  };
  c.oracle = [kind](const OpCall& call, const Tensors& in) {
    const ReduceArgs& a = call.args<ReduceArgs>();
    switch (kind) {
      case Kind::sum: return Tensors{ops::reference::reduce_sum(in[0], a.dims, a.keepdim)};
      case Kind::mean: return Tensors{ops::reference::reduce_mean(in[0], a.dims, a.keepdim)};
      case Kind::max: return Tensors{ops::reference::reduce_max(in[0], a.dims, a.keepdim)};
      case Kind::min: return Tensors{ops::reference::reduce_min(in[0], a.dims, a.keepdim)};
      case Kind::logsumexp: return Tensors{ops::reference::logsumexp(in[0], a.dims, a.keepdim)};
      case Kind::var: return Tensors{ops::reference::var(in[0], a.dims, a.correction, a.keepdim)};
    }
    return Tensors{};
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  // Sums over a transposed layout may add in another order; max and min pick an element.
  c.layout_independent = kind == Kind::max || kind == Kind::min;
  if (kind == Kind::max || kind == Kind::min) {
    c.backward = [](const OpCall& call, const Tensors& in, const Tensors& out, const Tensor& grad) {
      const ReduceArgs& a = call.args<ReduceArgs>();
      return Tensors{ops::extremum_backward(grad, in[0], out[0], a.dims, a.keepdim)};
    };
  } else if (kind == Kind::logsumexp) {
    c.backward = [](const OpCall& call, const Tensors& in, const Tensors& out, const Tensor& grad) {
      const ReduceArgs& a = call.args<ReduceArgs>();
      return Tensors{ops::logsumexp_backward(grad, in[0], out[0], a.dims, a.keepdim)};
    };
    // exp(x - out) with out rounded to 16 bits: |out| up to ~10 puts its rounding error into
    // every gradient element.
    c.backward_tolerance = [](DType dtype, const OpCall&, size_t) {
      return dtype == DType::bf16 || dtype == DType::f16 ? scaled(tolerance_for(dtype), 4) : tolerance_for(dtype);
    };
  } else if (kind == Kind::var) {
    c.backward = [](const OpCall& call, const Tensors& in, const Tensors&, const Tensor& grad) {
      const ReduceArgs& a = call.args<ReduceArgs>();
      return Tensors{ops::var_backward(grad, in[0], a.dims, a.correction, a.keepdim)};
    };
  }
  c.differentiable = [kind](const OpCall& call, const Tensors& in) {
    const ReduceArgs& a = call.args<ReduceArgs>();
    switch (kind) {
      case Kind::sum: return lamina::sum(in[0], a.dims, a.keepdim);
      case Kind::mean: return lamina::mean(in[0], a.dims, a.keepdim);
      case Kind::max: return lamina::max(in[0], a.dims, a.keepdim);
      case Kind::min: return lamina::min(in[0], a.dims, a.keepdim);
      case Kind::logsumexp: return lamina::logsumexp(in[0], a.dims, a.keepdim);
      case Kind::var: return lamina::var(in[0], a.dims, a.correction, a.keepdim);
    }
    return Tensor();
  };
  // Sums, means, variances and logsumexp accumulate in f64 on both devices in different orders;
  // max and min pick an element, exactly.
  c.cuda_tolerance = [kind](DType dtype, const OpCall&, size_t) {
    if (kind == Kind::max || kind == Kind::min) return kExact;
    return scaled(elementwise_tolerance(dtype), kind == Kind::var ? 4 : 2);
  };
  return c;
}

struct ArgmaxArgs {
  int64_t dim;
  bool keepdim;
};

OpCase argmax_case() {
  OpCase c;
  c.name = "ops::argmax";
  c.dtypes = {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64};
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const Shape& shape : {Shape{5}, Shape{1, 4}, Shape{4, 1, 3}, random_shape(gen, 3), random_shape(gen, 4)}) {
      const Tensor x = integer_values(shape, dtype, gen, -3, 4);  // many ties: the first maximum wins
      for (int64_t dim = -int64_t(shape.size()); dim < int64_t(shape.size()); ++dim)
        for (bool keepdim : {false, true})
          calls.push_back({shape_str(shape) + " dim " + std::to_string(dim) + (keepdim ? " keepdim" : ""), {x},
                           ArgmaxArgs{dim, keepdim}});
    }
    if (!with_large) return calls;
    for (const auto& [shape, dim] : {std::pair{Shape{2000, 37}, int64_t(0)}, std::pair{Shape{37, 3000}, int64_t(1)}})
      calls.push_back({shape_str(shape) + " dim " + std::to_string(dim), {integer_values(shape, dtype, gen, -3, 4)},
                       ArgmaxArgs{dim, false}});
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ArgmaxArgs& a = call.args<ArgmaxArgs>();
    return Tensors{ops::argmax(in[0], a.dim, a.keepdim)};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    const ArgmaxArgs& a = call.args<ArgmaxArgs>();
    return Tensors{ops::reference::argmax(in[0], a.dim, a.keepdim)};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.output_dtypes = [](DType) { return std::vector<DType>{DType::i64}; };
  c.layout_independent = true;
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

struct SumToArgs {
  Shape shape;
};

OpCase sum_to_case() {
  OpCase c;
  c.name = "ops::sum_to";
  c.dtypes = {DType::f32, DType::f64, DType::bf16, DType::f16};
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    std::vector<std::pair<Shape, Shape>> shapes = {{{2, 3}, {3}}, {{2, 3}, {2, 1}}, {{2, 3}, {}}, {{0, 3}, {1, 3}}};
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank);
      shapes.push_back({shape, broadcastable_to(shape, gen)});
    }
    for (const auto& [shape, target] : shapes)
      calls.push_back({shape_str(shape) + " to " + shape_str(target), {random_tensor(shape, dtype, gen)}, SumToArgs{target}});
    if (with_large) calls.push_back({"[1000, 37] to [37]", {random_tensor({1000, 37}, dtype, gen)}, SumToArgs{{37}}});
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) { return Tensors{ops::sum_to(in[0], call.args<SumToArgs>().shape)}; };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{reference_sum_to(ops::cast(in[0], DType::f64), call.args<SumToArgs>().shape)};
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.may_return_input = true;  // x itself when the shapes already match
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 2); };
  return c;
}

}  // namespace reduce_family

std::vector<OpCase> reduce_cases() {
  using namespace reduce_family;
  std::vector<OpCase> cases;
  for (Kind kind : {Kind::sum, Kind::mean, Kind::max, Kind::min, Kind::logsumexp, Kind::var}) cases.push_back(reduction_case(kind));
  cases.push_back(argmax_case());
  cases.push_back(sum_to_case());
  return cases;
}

}  // namespace lamina::testing::op_cases
