// Per-token log-probs and distribution statistics on the GPU against the CPU kernels on the same
// inputs, in the row layouts of a causal LM's logits that the op cases' generic layouts do not
// reach (ops::token_logprobs, ops::token_distribution_stats, ops::log1mexp and
// ops::log1mexp_backward are op cases too, compared with the CPU by test_op_cases.cpp): forward
// and backward; vocabularies of 7, 1001 (no
// pack fits), 4000 (packed), 20001 (two chunks) and 128256 (eight chunks); contiguous rows, the
// shifted view logits[..., :-1, :] (row offsets with gaps), rows padded to V + 3 (unaligned),
// transposed logits (copied contiguous); masked rows whose labels lie outside the vocabulary;
// temperature 1 and not.
//
// Tolerances (outputs of the forward ops are f32, f64 for f64 logits; sums run in another order,
// with CUDA's expf against the CPU's vectorised exp, both within 2 ulp):
//   logprobs, lse: f32 2e-5 absolute and 1e-5 relative (|lse| up to ~15 at 128K), f64 1e-11.
//   backward grad_logits (logits' dtype): f32 2e-6 absolute, 1e-5 relative (entries ~1/V, so the
//     relative part decides); f64 1e-13 absolute, 1e-11 relative; bf16/f16 two ulps.
//   statistics: the CPU adds the V terms of each sum into one accumulator, and in f32 that is
//     the larger error (measured against f64 on the build machine: up to 2.5e-4 absolute, 2.5e-5
//     relative, in log sum p^2 at V = 128256). So for f32, bf16 and f16 logits the oracle is the
//     CPU kernel on the same logits cast to f64 (exactly the same values), and the f32 GPU results
//     (at most 16 terms per thread, then trees, then 8 chunks) must be within 2e-5 absolute and
//     1e-5 relative of it (entropy, log sum p^2), 1e-7 and 1e-5 (logit mean); f64 logits against
//     the f64 CPU within 1e-11; argmax matches exact.
// Edge rows (ties, -inf, NaN, +inf, all -inf) must give what the CPU gives, NaN included.
#include <string>

#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

namespace {

Tolerance forward_tolerance(DType logits) {
  return logits == DType::f64 ? Tolerance{1e-11, 1e-11} : Tolerance{2e-5, 1e-5};
}

Tolerance gradient_tolerance(DType dtype) {
  switch (dtype) {
    case DType::f32: return {2e-6, 1e-5};
    case DType::f64: return {1e-13, 1e-11};
    default: return scaled(elementwise_tolerance(dtype), 2);
  }
}

Tolerance sum_stats_tolerance(DType logits) {
  return logits == DType::f64 ? Tolerance{1e-11, 1e-11} : Tolerance{2e-5, 1e-5};
}

Tolerance mean_tolerance(DType logits) {
  return logits == DType::f64 ? Tolerance{1e-12, 1e-11} : Tolerance{1e-7, 1e-5};
}

// Where the rows of the logits lie in memory.
enum class RowLayout { contiguous, shifted, padded_vocab, transposed };
constexpr RowLayout kRowLayouts[] = {RowLayout::contiguous, RowLayout::shifted, RowLayout::padded_vocab,
                                     RowLayout::transposed};

std::string name(RowLayout layout) {
  switch (layout) {
    case RowLayout::contiguous: return "contiguous";
    case RowLayout::shifted: return "shifted";
    case RowLayout::padded_vocab: return "padded_vocab";
    case RowLayout::transposed: return "transposed";
  }
  return "?";
}

// The values of logits [..., T, V] in the given layout. shifted: the view x[..., 1:, :] of a
// tensor one position longer (as the shifted logits[:, :-1] of a causal LM), so rows start one
// row in and, with batch dims, skip a row between batches; padded_vocab: each row followed by 3
// unused entries (row stride V + 3, rows not aligned to a pack). Unused entries hold -7.
Tensor in_row_layout(const Tensor& logits, RowLayout layout) {
  Shape padded = logits.shape();
  switch (layout) {
    case RowLayout::contiguous: return logits;
    case RowLayout::transposed: return transposed_layout(logits);
    case RowLayout::shifted: {
      padded[padded.size() - 2] += 1;
      const Tensor storage = full(padded, -7.0, logits.dtype());
      const Tensor view = views::slice(storage, -2, 1, padded[padded.size() - 2]);
      ops::copy_(view, logits);
      return view;
    }
    case RowLayout::padded_vocab: {
      padded.back() += 3;
      const Tensor storage = full(padded, -7.0, logits.dtype());
      const Tensor view = views::slice(storage, -1, 0, logits.size(-1));
      ops::copy_(view, logits);
      return view;
    }
  }
  return logits;
}

struct TokenInputs {
  Tensor logits, labels, mask;
};

// Random logits in [-4, 4]; about a third of the rows masked out, with labels -100 or V + 5 there
// (never to be read); every third kept label is the row's first argmax, so that argmax_matches
// holds both values.
TokenInputs random_token_inputs(const Shape& shape, DType dtype, DType index_type, Generator& gen) {
  const int64_t vocab = shape.back();
  const Shape rows(shape.begin(), shape.end() - 1);
  TokenInputs in;
  in.logits = random_tensor(shape, dtype, gen, -4, 4);
  const std::vector<double> values = in.logits.to_vector<double>();
  std::vector<int64_t> labels = randint(0, vocab, rows, gen).to_vector<int64_t>();
  const std::vector<double> coins = uniform(rows, 0, 1, gen, DType::f64).to_vector<double>();
  std::vector<uint8_t> keep(labels.size());
  for (size_t n = 0; n < labels.size(); ++n) {
    keep[n] = n == 0 || coins[n] > 0.33;  // the first row kept, the second masked
    if (n == 1) keep[n] = 0;
    if (!keep[n]) {
      labels[n] = n % 2 ? -100 : vocab + 5;
    } else if (n % 3 == 0) {
      size_t best = 0;
      for (size_t j = 1; j < size_t(vocab); ++j)
        if (values[n * size_t(vocab) + j] > values[n * size_t(vocab) + best]) best = j;
      labels[n] = int64_t(best);
    }
  }
  in.labels = ops::cast(Tensor::from_vector(labels, rows), index_type);
  in.mask = Tensor::from_vector(keep, rows, DType::boolean);
  return in;
}

void check_stats(const ops::TokenDistributionStats& actual, const ops::TokenDistributionStats& expected,
                 DType logits) {
  CHECK_CLOSE(actual.entropy, expected.entropy, sum_stats_tolerance(logits));
  CHECK_CLOSE(actual.log_sum_sq_probs, expected.log_sum_sq_probs, sum_stats_tolerance(logits));
  CHECK_CLOSE(actual.logit_mean, expected.logit_mean, mean_tolerance(logits));
  CHECK_CLOSE(actual.argmax_matches, expected.argmax_matches, kExact);
}

// Every op of the family on the GPU against the CPU for one set of inputs, `logits` in the layout
// both devices read.
void check_against_cpu(const Tensor& logits, const TokenInputs& in, double temperature, Generator& gen) {
  const DType dtype = logits.dtype();
  const ops::TokenLogprobsResult expected = ops::token_logprobs(logits, in.labels, in.mask, temperature);
  const Tensor grad_logprobs = random_tensor(in.labels.shape(), DType::f32, gen);
  const Tensor expected_grad =
      ops::token_logprobs_backward(grad_logprobs, logits, in.labels, in.mask, expected.lse, temperature);
  // The statistics' oracle runs in f64 (see the tolerances above).
  const ops::TokenDistributionStats expected_stats =
      ops::token_distribution_stats(ops::cast(logits, DType::f64), in.labels, in.mask, temperature);
  for_each_poison([&] {
    const Tensor gpu_logits = mirror(logits), gpu_labels = mirror(in.labels), gpu_mask = mirror(in.mask);
    const ops::TokenLogprobsResult result = ops::token_logprobs(gpu_logits, gpu_labels, gpu_mask, temperature);
    CHECK(result.logprobs.device() == kCuda);
    CHECK_CLOSE(result.logprobs, expected.logprobs, forward_tolerance(dtype));
    CHECK_CLOSE(result.lse, expected.lse, forward_tolerance(dtype));
    // The CPU's lse as input, so that the backward is compared on its own.
    const Tensor grad = ops::token_logprobs_backward(mirror(grad_logprobs), gpu_logits, gpu_labels, gpu_mask,
                                                     mirror(expected.lse), temperature);
    CHECK(grad.device() == kCuda);
    CHECK_CLOSE(grad, expected_grad, gradient_tolerance(dtype));
    check_stats(ops::token_distribution_stats(gpu_logits, gpu_labels, gpu_mask, temperature), expected_stats, dtype);
  });
}

}  // namespace

TEST_CASE("token log-probs, their backward and distribution statistics match the CPU") {
  Generator gen(401);
  const Shape shapes[] = {{3, 7}, {2, 3, 7}, {2, 4, 1001}, {2, 3, 4000}, {1, 3, 20001}};
  for (const Shape& shape : shapes) {
    for (DType dtype : kGpuFloatDTypes) {
      for (DType index_type : {DType::i64, DType::i32}) {
        for (double temperature : {1.0, 0.7}) {
          CAPTURE(shape);
          CAPTURE(name(dtype));
          CAPTURE(name(index_type));
          CAPTURE(temperature);
          const TokenInputs in = random_token_inputs(shape, dtype, index_type, gen);
          for (RowLayout layout : kRowLayouts) {
            CAPTURE(name(layout));
            check_against_cpu(in_row_layout(in.logits, layout), in, temperature, gen);
          }
        }
      }
    }
  }
}

TEST_CASE("token log-probs on a Llama-3 vocabulary (128256): contiguous and shifted rows") {
  Generator gen(402);
  for (DType dtype : {DType::bf16, DType::f32, DType::f64}) {
    for (double temperature : {1.0, 0.9}) {
      CAPTURE(name(dtype));
      CAPTURE(temperature);
      const TokenInputs in = random_token_inputs({2, 3, 128256}, dtype, DType::i64, gen);
      for (RowLayout layout : {RowLayout::contiguous, RowLayout::shifted}) {
        CAPTURE(name(layout));
        check_against_cpu(in_row_layout(in.logits, layout), in, temperature, gen);
      }
    }
  }
}

TEST_CASE("token log-probs and statistics on edge rows: ties, -inf, NaN, +inf, all -inf, across chunks") {
  // Vocabulary 7: one row per case. Vocabulary 32773 (three chunks): a first chunk all -inf,
  // ties across chunks, NaN in one chunk only.
  const double inf = INFINITY, nan = NAN;
  const std::vector<std::vector<double>> small_rows = {
      {1, 3, 3, 0, -1, 3, 2},          // tie: the first maximum (1)
      {-inf, 0.5, -inf, 1, 2, -inf, 0},  // -inf entries
      {-inf, -inf, -inf, -inf, -inf, -inf, -inf},
      {nan, 1, 2, 0, -1, 2, 0.5},  // NaN first: the CPU's argmax stays at 0
      {0, 1, nan, 2, -1, 0, 0.5},
      {0, 1, 2, inf, -1, 0, 0.5},
      {0.5, 0.25, 0, 0, 0, 0, 0},  // masked
  };
  const std::vector<int64_t> small_labels = {1, 4, 0, 0, 3, 3, -1};
  constexpr int64_t kWide = 32773;
  std::vector<std::vector<double>> wide_rows(4, std::vector<double>(size_t(kWide), 0.0));
  Generator gen(403);
  for (auto& row : wide_rows) row = uniform({kWide}, -3, 3, gen, DType::f64).to_vector<double>();
  for (size_t j = 0; j < 16384; ++j) wide_rows[0][j] = -inf;  // the first chunk all -inf
  wide_rows[1][20000] = wide_rows[1][30000] = wide_rows[1][5] = 5;  // ties across chunks: 5
  wide_rows[2][17000] = nan;
  for (size_t j = 0; j < size_t(kWide); ++j) wide_rows[3][j] = j == size_t(kWide) - 2 ? 1.0 : -inf;
  const std::vector<int64_t> wide_labels = {100, 5, 7, kWide - 2};

  const auto flatten = [](const std::vector<std::vector<double>>& rows) {
    std::vector<double> flat;
    for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
    return flat;
  };
  struct Case {
    std::vector<double> values;
    std::vector<int64_t> labels;
    int64_t rows, vocab;
  };
  const Case cases[] = {{flatten(small_rows), small_labels, 7, 7}, {flatten(wide_rows), wide_labels, 4, kWide}};
  for (const Case& c : cases) {
    for (DType dtype : kGpuFloatDTypes) {
      CAPTURE(c.vocab);
      CAPTURE(name(dtype));
      TokenInputs in;
      in.logits = Tensor::from_vector(c.values, {c.rows, c.vocab}, dtype);
      in.labels = Tensor::from_vector(c.labels, {c.rows});
      std::vector<uint8_t> keep(size_t(c.rows), 1);
      if (c.vocab == 7) keep.back() = 0;
      in.mask = Tensor::from_vector(keep, {c.rows}, DType::boolean);
      for (double temperature : {1.0, 0.5}) {
        CAPTURE(temperature);
        check_against_cpu(in.logits, in, temperature, gen);
      }
    }
  }
}

TEST_CASE("token_logprobs on the GPU rejects a kept label outside the vocabulary with the CPU's message") {
  Generator gen(404);
  const Tensor logits = random_tensor({2, 3, 5}, DType::f32, gen);
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{0, -1, 4, 2, 5, 1}, {2, 3});
  const Tensor mask = Tensor::from_vector(std::vector<uint8_t>{1, 0, 1, 1, 1, 1}, {2, 3}, DType::boolean);
  const auto message_of = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("(no error)");
  };
  const std::string cpu = message_of([&] { ops::token_logprobs(logits, labels, mask); });
  CHECK(cpu.find("token_logprobs: label 5 at flat position 4 (mask true) is outside the vocabulary of 5") !=
        std::string::npos);
  CHECK(message_of([&] { ops::token_logprobs(mirror(logits), mirror(labels), mirror(mask)); }) == cpu);
  // The label under the false mask (-1) alone is fine on both devices.
  const Tensor padding_only = Tensor::from_vector(std::vector<int64_t>{0, -1, 4, 2, 3, 1}, {2, 3});
  CHECK_CLOSE(ops::token_logprobs(mirror(logits), mirror(padding_only), mirror(mask)).logprobs,
              ops::token_logprobs(logits, padding_only, mask).logprobs, forward_tolerance(DType::f32));
}
