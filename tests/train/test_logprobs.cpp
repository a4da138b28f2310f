// The shared log-prob machinery of preference-losses.md §1: the fused per-token log-prob gather
// against log_softmax + gather (including a Llama-3-sized vocabulary, chunked over rows),
// reductions, the concatenated batch, the logit metrics, WPO weights and LD-DPO sums.
#include <cmath>
#include <limits>

#include "autograd/functions.h"
#include "loss_helpers.h"
#include "ops/reference.h"
#include "train/losses/logprobs.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

const Tolerance kExact{0, 0}, kNearlyExact{1e-300, 1e-14}, kF32Log{1e-30, 2e-6};

// log_softmax + gather, the unfused way, over `rows_per_chunk` rows at a time so that even the
// oracle never holds a full [rows, V] log-softmax; 0 where the mask is false.
Tensor unfused_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask, int64_t rows_per_chunk) {
  const int64_t vocab = logits.size(-1), rows = logits.numel() / vocab;
  const Tensor flat_logits = ops::contiguous(logits).view({rows, vocab});
  const Tensor flat_labels = ops::contiguous(labels).view({rows, 1});
  const std::vector<bool> kept = mask.to_vector<bool>();
  std::vector<double> out(size_t(rows), 0.0);
  for (int64_t begin = 0; begin < rows; begin += rows_per_chunk) {
    const int64_t end = std::min(rows, begin + rows_per_chunk);
    const Tensor chunk = ops::log_softmax(ops::cast(flat_logits.slice(0, begin, end), DType::f64), -1);
    // Padding labels may be out of range: gather a safe id there and drop it below.
    std::vector<int64_t> ids = flat_labels.slice(0, begin, end).to_vector<int64_t>();
    for (int64_t r = begin; r < end; ++r)
      if (!kept[size_t(r)]) ids[size_t(r - begin)] = 0;
    const std::vector<double> picked =
        ops::gather(chunk, 1, Tensor::from_vector(ids, {end - begin, 1})).to_vector<double>();
    for (int64_t r = begin; r < end; ++r) out[size_t(r)] = kept[size_t(r)] ? picked[size_t(r - begin)] : 0.0;
  }
  return Tensor::from_vector(out, labels.shape(), DType::f64);
}

}  // namespace

TEST_CASE("§1.1 worked example: per-token log-probs, masked sum and average") {
  // preference-losses.md §1.1: ids [0, 2, 1, 0], completion mask [0, 0, 1, 1], vocab 3.
  const Tensor logits = Tensor::from_vector(std::vector<double>{1, 0, -1, 0.5, 2, 0, 0, 0, 1, 9, 9, 9}, {1, 4, 3});
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{0, 2, 1, 0}, {1, 4});
  const Tensor mask = bools({{0, 0, 1, 1}});
  const train::TokenLogps token = train::completion_logprobs(logits, ids, mask);
  const std::vector<double> lp = token.logps.to_vector<double>();
  CHECK(lp[0] == 0.0);  // position 0 predicts a prompt token: masked
  CHECK(std::abs(lp[1] - -0.306356) < kSpecTolerance);
  CHECK(std::abs(lp[2] - -1.551445) < kSpecTolerance);
  // The masked position's own value (-2.407606) with everything kept:
  const Tensor all = train::completion_logprobs(logits, ids, bools({{1, 1, 1, 1}})).logps;
  CHECK(std::abs(all.to_vector<double>()[0] - -2.407606) < kSpecTolerance);
  const double sum = train::reduce_logprobs(token.logps, token.mask, train::LogprobReduction::sum).item<double>();
  const double average = train::reduce_logprobs(token.logps, token.mask, train::LogprobReduction::average).item<double>();
  CHECK(std::abs(sum - -1.857800) < kSpecTolerance);
  CHECK(std::abs(average - -0.928900) < kSpecTolerance);
}

TEST_CASE("fused log-prob gather equals the f64 reference: dtypes, temperature, masks, strided rows") {
  Generator gen(21);
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    for (double temperature : {1.0, 0.7}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(temperature);
      const Tensor logits = random_tensor({3, 6, 37}, dtype, gen, -4, 4);
      // Labels under a false mask are garbage on purpose: they must never be read.
      std::vector<int64_t> labels = randint(0, 37, {3, 6}, gen).to_vector<int64_t>();
      labels[1] = -100;
      labels[7] = 9999;
      const Tensor label_tensor = Tensor::from_vector(labels, {3, 6});
      Tensor mask = ops::compare(ops::CompareOp::gt, uniform({3, 6}, 0, 1, gen), 0.3);
      std::vector<bool> keep = mask.to_vector<bool>();
      keep[1] = keep[7] = false;
      mask = Tensor::from_vector(std::vector<uint8_t>(keep.begin(), keep.end()), {3, 6}, DType::boolean);
      const ops::TokenLogprobsResult fused = ops::token_logprobs(logits, label_tensor, mask, temperature);
      CHECK(fused.logprobs.dtype() == (dtype == DType::f64 ? DType::f64 : DType::f32));
      const Tensor scaled = ops::cast(ops::binary(ops::BinaryOp::div, ops::cast(logits, DType::f64), temperature), DType::f64);
      const Tensor expected = ops::reference::token_logprobs(scaled, label_tensor, mask, 1.0);
      CHECK_CLOSE(fused.logprobs, expected, tolerance_for(dtype == DType::f64 ? DType::f64 : DType::f32));
      // The shifted view logits[:, :-1] is row-strided: read in place, same values as a copy.
      const Tensor shifted = views::slice(logits, 1, 0, 5);
      const Tensor shifted_labels = views::slice(label_tensor, 1, 1, 6), shifted_mask = views::slice(mask, 1, 1, 6);
      CHECK_CLOSE(ops::token_logprobs(shifted, shifted_labels, shifted_mask, temperature).logprobs,
                  ops::token_logprobs(ops::contiguous(shifted), ops::contiguous(shifted_labels),
                                      ops::contiguous(shifted_mask), temperature).logprobs,
                  kExact);
    }
  }
}

TEST_CASE("fused gather equals log_softmax + gather on a Llama-3 vocabulary (128256), masked and padded") {
  constexpr int64_t kVocab = 128256, kBatch = 2, kLength = 5;
  Generator gen(22);
  const Tensor logits = random_tensor({kBatch, kLength, kVocab}, DType::f32, gen, -8, 8);
  std::vector<int64_t> ids = randint(0, kVocab, {kBatch, kLength}, gen).to_vector<int64_t>();
  ids[kLength - 1] = -1;             // padding id in the first row (right-padded)
  ids[2 * kLength - 2] = kVocab + 3;  // and a pad id past the vocabulary in the second
  const Tensor input_ids = Tensor::from_vector(ids, {kBatch, kLength});
  const Tensor mask = bools({{0, 1, 1, 1, 0}, {0, 0, 1, 0, 0}});  // prompt, response, padding
  const train::TokenLogps fused = train::completion_logprobs(logits, input_ids, mask);
  const Tensor expected = unfused_logprobs(views::slice(logits, 1, 0, kLength - 1),
                                           views::slice(input_ids, 1, 1, kLength), views::slice(mask, 1, 1, kLength),
                                           /*rows_per_chunk=*/3);
  CHECK_CLOSE(fused.logps, expected, tolerance_for(DType::f32));
  // Masked and padded positions are exactly zero.
  const std::vector<double> values = fused.logps.to_vector<double>();
  const std::vector<bool> kept = fused.mask.to_vector<bool>();
  for (size_t i = 0; i < values.size(); ++i)
    if (!kept[i]) CHECK(values[i] == 0.0);
}

TEST_CASE("log-prob gather gradchecks with respect to logits, and through a loss end to end") {
  Generator gen(23);
  const Tensor labels = Tensor::from_vector(std::vector<int64_t>{2, -100, 0, 4, 1, 3}, {2, 3});
  const Tensor mask = bools({{1, 0, 1}, {1, 1, 0}});
  for (double temperature : {1.0, 0.6}) {
    expect_gradcheck("token_logprobs", [&](const auto& in) { return token_logprobs(in[0], labels, mask, temperature); },
                     {random_tensor({2, 3, 5}, DType::f64, gen, -2, 2)});
  }
  // Logits of a concatenated [2B, T, V] batch -> summed log-probs -> DPO with a frozen reference.
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 3, 0, 2, 1, 4, 4, 0, 2, 2, 0, 1, 3, 3, 1, 0}, {4, 4});
  const Tensor completion = bools({{0, 1, 1, 1}, {0, 0, 1, 0}, {0, 1, 1, 0}, {0, 1, 1, 1}});
  expect_gradcheck("dpo through completion_logprobs", [&](const auto& in) {
    const train::TokenLogps token = train::completion_logprobs(in[0], ids, completion, 0.9);
    const train::SplitPairs sums =
        train::split_pairs(train::reduce_logprobs(token.logps, token.mask, train::LogprobReduction::sum), 2);
    train::LossInputs inputs;
    inputs.set("policy_chosen_logps", sums.chosen)
        .set("policy_rejected_logps", sums.rejected)
        .set("reference_chosen_logps", f64s({-3.0, -1.5}))
        .set("reference_rejected_logps", f64s({-2.5, -4.0}));
    return run_loss("sigmoid", inputs).loss;
  }, {random_tensor({4, 4, 5}, DType::f64, gen, -2, 2)});
  // Logits -> per-token log-probs -> GRPO with a KL term (a token-level loss), temperature 0.7.
  // The behaviour and reference log-probs are constants near the starting policy's.
  const Tensor start = random_tensor({4, 4, 5}, DType::f64, gen, -2, 2);
  const train::TokenLogps initial = train::completion_logprobs(start, ids, completion, 0.7);
  const Tensor old = ops::add(initial.logps, random_tensor({4, 3}, DType::f64, gen, -0.05, 0.05));
  const Tensor reference = ops::add(initial.logps, random_tensor({4, 3}, DType::f64, gen, -0.3, 0.3));
  expect_gradcheck("grpo through completion_logprobs", [&](const auto& in) {
    const train::TokenLogps token = train::completion_logprobs(in[0], ids, completion, 0.7);
    train::LossInputs inputs;
    inputs.set("policy_token_logps", token.logps)
        .set("old_token_logps", old)
        .set("reference_token_logps", reference)
        .set("completion_mask", token.mask)
        .set("rewards", f64s({1.0, 0.0, 0.5, 0.2}));
    return run_loss("grpo", inputs, {{"num_generations", "2"}, {"beta", "0.04"}}).loss;
  }, {start});
  expect_gradcheck("average reduction", [&](const auto& in) {
    return train::reduce_logprobs(in[0], completion, train::LogprobReduction::average);
  }, {random_tensor({4, 4}, DType::f64, gen, -3, 0)});
}

TEST_CASE("token distribution statistics and log1mexp against the f64 references") {
  Generator gen(24);
  const Tensor logits = random_tensor({4, 11}, DType::f32, gen, -3, 3);
  const Tensor labels = randint(0, 11, {4}, gen);
  const Tensor mask = Tensor::from_vector(std::vector<uint8_t>{1, 0, 1, 1}, {4}, DType::boolean);
  const ops::TokenDistributionStats stats = ops::token_distribution_stats(logits, labels, mask, 0.8);
  const std::vector<Tensor> expected = ops::reference::token_distribution_stats(logits, labels, mask, 0.8);
  const Tolerance tolerance = tolerance_for(DType::f32);
  CHECK_CLOSE(stats.entropy, expected[0], tolerance);
  CHECK_CLOSE(stats.logit_mean, expected[1], tolerance);
  CHECK_CLOSE(stats.log_sum_sq_probs, expected[2], tolerance);
  CHECK_CLOSE(ops::cast(stats.argmax_matches, DType::f64), expected[3], kExact);

  // A -inf logit (a vocabulary mask) has p = 0 and adds nothing: p = [1/4, 0, 1/4, 1/2] has
  // entropy 1.5 log 2 and sum p^2 = 3/8, by hand.
  const double inf = std::numeric_limits<double>::infinity();
  const Tensor masked_vocab = Tensor::from_vector(std::vector<double>{0, -inf, 0, std::log(2.0)}, {1, 4});
  const Tensor kept = Tensor::from_vector(std::vector<uint8_t>{1}, {1}, DType::boolean);
  const Tensor label = Tensor::from_vector(std::vector<int64_t>{3}, {1});
  for (DType dtype : {DType::f64, DType::f32}) {
    const ops::TokenDistributionStats masked = ops::token_distribution_stats(ops::cast(masked_vocab, dtype), label, kept);
    CHECK(masked.entropy.item<double>() == doctest::Approx(1.5 * std::log(2.0)).epsilon(1e-6));
    CHECK(masked.log_sum_sq_probs.item<double>() == doctest::Approx(std::log(0.375)).epsilon(1e-6));
    CHECK(masked.argmax_matches.item<bool>());
  }
  CHECK(ops::reference::token_distribution_stats(masked_vocab, label, kept, 1.0)[0].item<double>() ==
        doctest::Approx(1.5 * std::log(2.0)));

  const Tensor x = f64s({-1e-12, -1e-6, -0.3, -0.69, -0.7, -5.0, -40.0, -800.0});
  CHECK_CLOSE(ops::log1mexp(x), ops::reference::log1mexp(x), kNearlyExact);
  CHECK_CLOSE(ops::log1mexp(ops::cast(x, DType::f32)), ops::reference::log1mexp(x), kF32Log);
  expect_gradcheck("log1mexp", [](const auto& in) { return log1mexp(in[0]); }, {f64s({-0.01, -0.5, -0.8, -3.0})});
}

TEST_CASE("concatenated chosen+rejected batch and the logit metrics") {
  const Tensor chosen = Tensor::from_vector(std::vector<int64_t>{5, 1, 2}, {1, 3});
  const Tensor rejected = Tensor::from_vector(std::vector<int64_t>{5, 3, 3, 4, 0}, {1, 5});
  const train::ConcatenatedPairs batch =
      train::concatenate_pairs(chosen, bools({{0, 1, 1}}), rejected, bools({{0, 1, 1, 1, 1}}), /*pad_id=*/7);
  CHECK(batch.input_ids.to_vector<int64_t>() == std::vector<int64_t>{5, 1, 2, 7, 7, 5, 3, 3, 4, 0});
  CHECK(batch.completion_mask.to_vector<bool>() == std::vector<bool>{0, 1, 1, 0, 0, 0, 1, 1, 1, 1});
  const train::SplitPairs split = train::split_pairs(f64s({1, 2}), 1);
  CHECK(split.chosen.item<double>() == 1);
  CHECK(split.rejected.item<double>() == 2);

  // Vocab 2 with logits chosen so every statistic is easy by hand: row [0, 0] everywhere.
  const Tensor logits = zeros({2, 5, 2}, DType::f64);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{0, 0, 1, 0, 0, 0, 1, 1, 1, 1}, {2, 5});
  train::Metrics metrics;
  train::add_logit_metrics(metrics, logits, ids, bools({{0, 1, 1, 0, 0}, {0, 1, 1, 1, 1}}), 1);
  CHECK(metrics.get("logits/chosen") == 0.0);
  CHECK(std::abs(metrics.get("entropy") - std::log(2.0)) < 1e-12);
  CHECK(metrics.get("mean_token_accuracy") == doctest::Approx(0.5));  // ties: argmax is id 0
}

TEST_CASE("§2.20 WPO weights and §2.18 LD-DPO sums reproduce the worked examples") {
  // Chosen: distributions [0.7, 0.2, 0.1] (label 0) and [0.5, 0.3, 0.2] (label 1); rejected
  // [0.6, 0.3, 0.1] (label 2). Logits = log p, so softmax gives the distributions back.
  const auto logs = [](std::vector<double> p) {
    for (double& v : p) v = std::log(v);
    return p;
  };
  std::vector<double> flat;
  for (const auto& row : {logs({0.7, 0.2, 0.1}), logs({0.5, 0.3, 0.2}), logs({0.6, 0.3, 0.1}), logs({1, 1, 1})})
    flat.insert(flat.end(), row.begin(), row.end());
  // Rows: [chosen: x, tok0, tok1] [rejected: x, tok0, pad]; position t predicts id t+1.
  const Tensor logits = Tensor::from_vector(
      std::vector<double>{flat[0], flat[1], flat[2], flat[3], flat[4], flat[5], 0, 0, 0,
                          flat[6], flat[7], flat[8], 0, 0, 0, 0, 0, 0},
      {2, 3, 3});
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{9, 0, 1, 9, 2, 9}, {2, 3});
  const std::vector<double> weights =
      train::wpo_weights(logits, ids, bools({{0, 1, 1}, {0, 1, 0}})).to_vector<double>();
  CHECK(std::abs(weights[0] - 1.011628) < kSpecTolerance);
  CHECK(std::abs(weights[1] - 0.217391) < kSpecTolerance);
  const Tensor pair = train::wpo_pair_weights(f64s({weights[0]}), f64s({weights[1]}));
  CHECK(std::abs(pair.item<double>() - 0.219919) < kSpecTolerance);
  CHECK(train::wpo_pair_weights(f64s({2.0}), f64s({3.0}), /*clamp_at_one=*/true).item<double>() == 1.0);
  train::LossInputs weighted = example_e();
  weighted.set("pair_weights", pair);
  CHECK(std::abs(loss_value("sigmoid", weighted) - 0.136560) < kSpecTolerance);

  // §2.18: chosen policy [-1, -2, -1.5, -0.5], rejected policy [-2, -1]; ℓ = 2, α = 0.5.
  const Tensor chosen_mask = bools({{1, 1, 1, 1}}), rejected_mask = bools({{1, 1, 0, 0}});
  const std::vector<double> shared = train::shared_lengths(chosen_mask, rejected_mask);
  CHECK(shared == std::vector<double>{2});
  const double chosen = train::length_desensitized_logps(f64_rows({{-1, -2, -1.5, -0.5}}), chosen_mask, shared, 0.5)
                            .item<double>();
  CHECK(std::abs(chosen - -4.0) < 1e-12);
}
