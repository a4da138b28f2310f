// Op cases of the log-prob primitives of the preference losses: token_logprobs,
// token_distribution_stats (masked rows with labels outside the vocabulary, temperature 1 and
// not) and log1mexp (both branches, 0 and positive inputs).
#include <cmath>

#include "autograd/functions.h"
#include "op_cases/op_case.h"

namespace lamina::testing::op_cases {
namespace logprob_family {

const Tolerance kExact{0, 0};
const std::vector<DType> kFloats = {DType::f32, DType::f64, DType::bf16, DType::f16};

DType result_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

struct TokenArgs {
  double temperature;
};

// Logits in [-4, 4] with labels; about a third of the rows masked out, with labels -100 or V + 5
// there (never to be read); the first row kept and the second masked.
Tensors token_inputs(const Shape& shape, DType dtype, DType index_dtype, Generator& gen) {
  const int64_t vocab = shape.back();
  const Shape rows(shape.begin(), shape.end() - 1);
  std::vector<int64_t> labels = randint(0, vocab, rows, gen).to_vector<int64_t>();
  const std::vector<double> coins = uniform(rows, 0, 1, gen, DType::f64).to_vector<double>();
  std::vector<uint8_t> keep(labels.size());
  for (size_t n = 0; n < labels.size(); ++n) {
    keep[n] = n != 1 && (n == 0 || coins[n] > 0.33);
    if (!keep[n]) labels[n] = n % 2 ? -100 : vocab + 5;
  }
  return {random_tensor(shape, dtype, gen, -4, 4), ops::cast(Tensor::from_vector(labels, rows), index_dtype),
          Tensor::from_vector(keep, rows, DType::boolean)};
}

// The calls of both token ops: vocabularies of 7 and 37, empty rows, i32 and i64 labels,
// temperature 1 and 0.7; with_large, vocabularies up to `largest_vocab` for the CUDA kernels'
// packed and chunked paths.
std::vector<OpCall> token_calls(DType dtype, Generator& gen, bool with_large, int64_t largest_vocab) {
  std::vector<OpCall> calls;
  for (const Shape& shape : {Shape{3, 7}, Shape{2, 3, 7}, Shape{2, 4, 37}, Shape{0, 5}, Shape{1, 1}})
    for (DType index_dtype : kIntDTypes)
      for (double temperature : {1.0, 0.7}) {
        const Tensors in = token_inputs(shape, dtype, index_dtype, gen);
        calls.push_back({shapes_label(in) + " " + name(index_dtype) + " temperature " + number_label(temperature), in,
                         TokenArgs{temperature}});
      }
  for (const Shape& shape : {Shape{2, 4, 1001}, Shape{2, 3, 4000}, Shape{1, 3, 20001}, Shape{2, 3, 128256}}) {
    if (!with_large || shape.back() > largest_vocab) continue;
    calls.push_back({shape_str(shape) + " temperature 0.9", token_inputs(shape, dtype, DType::i64, gen), TokenArgs{0.9}});
  }
  return calls;
}

OpCase token_logprobs_case() {
  OpCase c;
  c.name = "ops::token_logprobs";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) { return token_calls(dtype, gen, with_large, 128256); };
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ops::TokenLogprobsResult result = ops::token_logprobs(in[0], in[1], in[2], call.args<TokenArgs>().temperature);
    return Tensors{result.logprobs, result.lse};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::token_logprobs(in[0], in[1], in[2], call.args<TokenArgs>().temperature)};
  };
  // Computed in f32 (f64 for f64) from the logits' exact values.
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(result_dtype(dtype)); };
  c.output_dtypes = [](DType dtype) { return std::vector<DType>{result_dtype(dtype), result_dtype(dtype)}; };
  c.layout_independent = true;
  c.grad_inputs = {0};
  c.backward = [](const OpCall& call, const Tensors& in, const Tensors& out, const Tensor& grad) {
    return Tensors{ops::token_logprobs_backward(grad, in[0], in[1], in[2], out[1], call.args<TokenArgs>().temperature)};
  };
  c.backward_tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.differentiable = [](const OpCall& call, const Tensors& in) {
    return lamina::token_logprobs(in[0], in[1], in[2], call.args<TokenArgs>().temperature);
  };
  // Sums over V in another order, CUDA's expf against the CPU's vectorised exp.
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) {
    return dtype == DType::f64 ? Tolerance{1e-11, 1e-11} : Tolerance{2e-5, 1e-5};
  };
  c.cuda_backward_tolerance = [](DType dtype, const OpCall&, size_t) {
    switch (dtype) {
      case DType::f32: return Tolerance{2e-6, 1e-5};
      case DType::f64: return Tolerance{1e-13, 1e-11};
      default: return scaled(elementwise_tolerance(dtype), 2);
    }
  };
  return c;
}

OpCase token_distribution_stats_case() {
  OpCase c;
  c.name = "ops::token_distribution_stats";
  c.dtypes = kFloats;
  // The CPU adds each row's V terms into one f32 accumulator: past a few thousand terms its own
  // error would decide a CUDA comparison (tests/cuda/test_logprob.cpp checks the long rows
  // against the f64 CPU instead).
  c.calls = [](DType dtype, Generator& gen, bool with_large) { return token_calls(dtype, gen, with_large, 4000); };
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ops::TokenDistributionStats stats =
        ops::token_distribution_stats(in[0], in[1], in[2], call.args<TokenArgs>().temperature);
    return Tensors{stats.entropy, stats.logit_mean, stats.log_sum_sq_probs, stats.argmax_matches};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return ops::reference::token_distribution_stats(in[0], in[1], in[2], call.args<TokenArgs>().temperature);
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t index) {
    return index == 3 ? kExact : tolerance_for(result_dtype(dtype));
  };
  c.output_dtypes = [](DType dtype) {
    const DType stats = result_dtype(dtype);
    return std::vector<DType>{stats, stats, stats, DType::boolean};
  };
  c.layout_independent = true;
  c.cuda_tolerance = [](DType dtype, const OpCall& call, size_t index) {
    if (index == 3) return kExact;
    if (dtype == DType::f64) return Tolerance{1e-11, 1e-11};
    return Tolerance{2e-5 + 2e-9 * double(call.inputs[0].size(-1)), 1e-5};  // the CPU's one accumulator
  };
  return c;
}

OpCase log1mexp_case() {
  OpCase c;
  c.name = "ops::log1mexp";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const Shape& shape : {Shape{7}, Shape{3, 5, 9}, Shape{}, Shape{0, 2}}) {
      // Both branches (the switch is at -ln 2), away from 0 where finite differences work.
      calls.push_back({shape_str(shape), {random_tensor(shape, dtype, gen, -6, -0.05)}});
    }
    for (const Shape& shape : {Shape{7}, Shape{3, 5, 9}}) {
      // Values near 0, and 0 (-inf), positive (NaN) and the switch point.
      std::vector<double> values = uniform(shape, -6, -1e-4, gen, DType::f64).to_vector<double>();
      values[0] = 0.0;
      values[1] = 0.25;
      values[2] = -0.6931471805599453;
      OpCall call{shape_str(shape) + " with 0, 0.25, -ln 2 and values near 0", {Tensor::from_vector(values, shape, dtype)}};
      call.gradcheck = false;
      calls.push_back(call);
    }
    if (with_large) calls.push_back({"[1000, 33]", {random_tensor({1000, 33}, dtype, gen, -6, -1e-4)}});
    return calls;
  };
  c.forward = [](const OpCall&, const Tensors& in) { return Tensors{ops::log1mexp(in[0])}; };
  c.oracle = [](const OpCall&, const Tensors& in) { return Tensors{ops::reference::log1mexp(in[0])}; };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.layout_independent = true;
  c.backward = [](const OpCall&, const Tensors& in, const Tensors&, const Tensor& grad) {
    return Tensors{ops::log1mexp_backward(grad, in[0])};
  };
  c.differentiable = [](const OpCall&, const Tensors& in) { return lamina::log1mexp(in[0]); };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 2); };
  c.cuda_backward_tolerance = c.cuda_tolerance;
  return c;
}

}  // namespace logprob_family

std::vector<OpCase> logprob_cases() {
  using namespace logprob_family;
  return {token_logprobs_case(), token_distribution_stats_case(), log1mexp_case()};
}

}  // namespace lamina::testing::op_cases
