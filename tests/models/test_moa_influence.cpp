// MoA influence profiling (models/sparse/influence.h): the identity E = -dS / (1 - A) against
// actually masking an entry of a row, the materialising node's gradients against the dense
// reference attention, the block aggregation and rule losses against brute-force sums, and the
// profile file.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <map>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "helpers.h"
#include "models/sparse/influence.h"
#include "scratch_dir.h"

using namespace lamina;
using namespace lamina::sparse;

namespace {

// The dense reference with `pattern`'s mask as an additive -inf mask (ops::attention's path).
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern) {
  const Tensor allowed = attention_pattern_mask(pattern, q.size(0), q.size(1), q.size(2), k.size(2));
  AttentionOptions options;
  options.causal = false;  // the pattern's mask says it all
  options.mask = ops::where(allowed, zeros({}, q.dtype()), full({}, -INFINITY, q.dtype()));
  return attention(q, k, v, options);
}

}  // namespace

TEST_CASE("moa influence equals the loss change of masking an entry, exactly for a loss linear in A") {
  // One query row over 6 keys; the loss sum_d w_d out_d = sum_j A_j (w . v_j) is linear in A.
  Generator generator(3);
  const int64_t keys = 6, dim = 4;
  const Tensor q = testing::random_tensor({1, 1, 1, dim}, DType::f64, generator, -2, 2).set_requires_grad();
  const Tensor k = testing::random_tensor({1, 1, keys, dim}, DType::f64, generator, -2, 2).set_requires_grad();
  const Tensor v = testing::random_tensor({1, 1, keys, dim}, DType::f64, generator).set_requires_grad();
  const Tensor w = testing::random_tensor({1, 1, 1, dim}, DType::f64, generator);
  AttentionPattern pattern = AttentionPattern::dense();  // the query is the last key: sees all 6

  std::vector<double> influence;
  const Tensor out = influence_attention(q, k, v, pattern, std::nullopt, [&](const InfluenceRow& row) {
    CHECK(row.query_position == keys - 1);
    influence.assign(row.values, row.values + row.keys);
  });
  const Tensor loss = sum(out * w);
  loss.backward();
  REQUIRE(influence.size() == size_t(keys));

  const double base = loss.item<double>();
  for (int64_t j = 0; j < keys; ++j) {
    // Mask key j: the rest of the row renormalises (the softmax over the other keys).
    AttentionPattern masked = pattern;
    std::vector<double> mask(size_t(keys), 0.0);
    mask[size_t(j)] = -INFINITY;
    masked.additive_mask = Tensor::from_vector(mask, {1, 1, 1, keys});
    autograd::NoGradGuard no_grad;
    const double changed = sum(influence_attention(q, k, v, masked, std::nullopt, nullptr) * w).item<double>();
    INFO("key " << j);
    CHECK(influence[size_t(j)] == doctest::Approx(changed - base).epsilon(1e-12));
  }
  // Not all zero, and of both signs, so the check above compared something.
  double largest = 0;
  for (double value : influence) largest = std::max(largest, std::abs(value));
  CHECK(largest > 1e-3);
}

TEST_CASE("moa influence attention has the dense reference's output and gradients") {
  Generator generator(17);
  struct Case {
    int64_t heads, kv_heads, queries, keys;
    AttentionPattern pattern;
  };
  std::vector<Case> cases{
      {4, 2, 7, 7, AttentionPattern::dense()},
      {4, 1, 5, 9, AttentionPattern::dense()},  // a cache prefix of 4 keys
      {2, 2, 11, 11, AttentionPattern::per_head_sink_window({2, 0}, {3, 0})},  // head 1 sees nothing
      {3, 1, 10, 10, AttentionPattern::sink_window(1, 4)},
  };
  for (size_t index = 0; index < cases.size(); ++index) {
    const Case& c = cases[index];
    INFO("case " << index);
    const int64_t dim = 5;
    for (DType dtype : {DType::f64, DType::f32}) {
      INFO("dtype " << dtype_name(dtype));
      const Tensor q = testing::random_tensor({2, c.heads, c.queries, dim}, dtype, generator).set_requires_grad();
      const Tensor k = testing::random_tensor({2, c.kv_heads, c.keys, dim}, dtype, generator).set_requires_grad();
      const Tensor v = testing::random_tensor({2, c.kv_heads, c.keys, dim}, dtype, generator).set_requires_grad();
      const Tensor grad = testing::random_tensor({2, c.heads, c.queries, dim}, dtype, generator);

      int64_t rows = 0;
      const Tensor out = influence_attention(q, k, v, c.pattern, std::nullopt, [&](const InfluenceRow&) { ++rows; });
      out.backward(grad);
      const Tensor dq = q.grad(), dk = k.grad(), dv = v.grad();
      CHECK(rows == 2 * c.heads * c.queries);
      q.set_grad(Tensor());
      k.set_grad(Tensor());
      v.set_grad(Tensor());
      const Tensor expected = reference_attention(q, k, v, c.pattern);
      expected.backward(grad);
      const testing::Tolerance tolerance = dtype == DType::f64 ? testing::Tolerance{1e-12, 1e-10}
                                                               : testing::Tolerance{2e-6, 2e-5};
      // A row with no allowed key: the reference's softmax of all -inf gives NaN, ours 0 (the
      // fused kernel's rule). Compare only where the reference is finite, then check our zeros.
      if (index == 2) {
        const Tensor head0 = expected.slice(1, 0, 1);
        CHECK_CLOSE(out.slice(1, 0, 1), head0, tolerance);
        CHECK_CLOSE(out.slice(1, 1, 2), zeros({2, 1, c.queries, dim}, dtype), tolerance);
        CHECK_CLOSE(dq.slice(1, 0, 1), q.grad().slice(1, 0, 1), tolerance);
        CHECK_CLOSE(dk.slice(1, 0, 1), k.grad().slice(1, 0, 1), tolerance);
        CHECK_CLOSE(dv.slice(1, 0, 1), v.grad().slice(1, 0, 1), tolerance);
        CHECK_CLOSE(dq.slice(1, 1, 2), zeros({2, 1, c.queries, dim}, dtype), tolerance);
        continue;
      }
      CHECK_CLOSE(out, expected, tolerance);
      CHECK_CLOSE(dq, q.grad(), tolerance);
      CHECK_CLOSE(dk, k.grad(), tolerance);
      CHECK_CLOSE(dv, v.grad(), tolerance);
    }
  }
}

TEST_CASE("moa influence levels average blocks over items, and rule losses sum the masked blocks") {
  // Length 10 in blocks of 4: 3 x 3 blocks, lower triangle of 6.
  InfluenceLevel level(10, 1, 2, 4);
  CHECK(level.blocks() == 3);
  // Two items; row i of head 1 has E[i, j] = i + 10 j (item 1) and twice that (item 2).
  for (int item = 1; item <= 2; ++item)
    for (int64_t i = 0; i < 10; ++i) {
      std::vector<double> values(10);
      for (int64_t j = 0; j < 10; ++j) values[size_t(j)] = j <= i ? double(item * (i + 10 * j)) : 99.0;
      level.add_row(0, InfluenceRow{0, 1, i, 10, values.data()});
    }
  level.finish_items(2);
  // Mean over the block's causal pairs (keys after the query carry none) and the two items.
  const auto expected_mean = [](int64_t r, int64_t c) {
    double total = 0;
    int64_t pairs = 0;
    for (int64_t i = 4 * r; i < std::min<int64_t>(10, 4 * r + 4); ++i)
      for (int64_t j = 4 * c; j < std::min<int64_t>(i + 1, 4 * c + 4); ++j) {
        total += 1.5 * double(i + 10 * j);  // (1 + 2) / 2
        ++pairs;
      }
    return total / double(pairs);
  };
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t c = 0; c <= r; ++c) {
      INFO("block " << r << ", " << c);
      CHECK(level.block_mean(0, 1, r, c) == doctest::Approx(expected_mean(r, c)).epsilon(1e-14));
      CHECK(level.block_mean(0, 0, r, c) == 0.0);
    }

  // Rule losses against a brute-force sum over every pair the kernel's mask hides.
  Generator generator(8);
  InfluenceLevel random_level(150, 2, 3, 16);
  for (int64_t layer = 0; layer < 2; ++layer)
    for (int64_t head = 0; head < 3; ++head)
      for (int64_t r = 0; r < random_level.blocks(); ++r)
        for (int64_t c = 0; c <= r; ++c)
          random_level.set_block_mean(layer, head, r, c, uniform({1}, -1, 1, generator, DType::f64).item<double>());
  const std::vector<ElasticRule> rules{{0, 1, 16}, {40, 0, 16}, {10, 0.25, 16}, {-30, 0.5, 0}, {0, 0, 5}, {100, 0.5, 16}};
  const std::vector<double> losses = random_level.rule_losses(rules);
  for (size_t index = 0; index < rules.size(); ++index) {
    const ElasticRule& rule = rules[index];
    const ResolvedAttentionPattern pattern(AttentionPattern::sink_window(rule.sink, rule.window(150)), 1, 1, 150, 150);
    for (int64_t layer = 0; layer < 2; ++layer)
      for (int64_t head = 0; head < 3; ++head) {
        double expected = 0;
        for (int64_t i = 0; i < 150; ++i)
          for (int64_t j = 0; j <= i; ++j)
            if (!pattern.allowed(0, 0, i, j)) expected += random_level.block_mean(layer, head, i / 16, j / 16);
        INFO("rule " << index << " layer " << layer << " head " << head);
        CHECK(random_level.rule_loss(layer, head, rule) == doctest::Approx(expected).epsilon(1e-12));
        CHECK(losses[size_t(layer * 3 + head) * rules.size() + index] == doctest::Approx(expected).epsilon(1e-12));
      }
  }
  CHECK(losses[0] == 0.0);  // the dense rule hides nothing
}

TEST_CASE("moa profile files round-trip and bad ones are refused") {
  testing::ScratchDir dir("moa-profile");
  InfluenceProfile profile;
  profile.layers = 2;
  profile.heads = 1;
  profile.block = 8;
  profile.extra.push_back({"model", json::Value("tiny")});
  for (int64_t length : {20, 33}) {
    InfluenceLevel level(length, 2, 1, 8);
    for (int64_t r = 0; r < level.blocks(); ++r)
      for (int64_t c = 0; c <= r; ++c) level.set_block_mean(1, 0, r, c, 0.1 * double(r) - 0.03 * double(c));
    profile.levels.push_back(level);
  }
  profile.write(dir / "profile.json");
  const InfluenceProfile back = InfluenceProfile::read(dir / "profile.json");
  CHECK(back.layers == 2);
  CHECK(back.block == 8);
  REQUIRE(back.levels.size() == 2);
  CHECK(back.level(33).blocks() == 5);
  CHECK(back.level(33).block_mean(1, 0, 4, 1) == 0.1 * 4 - 0.03);
  CHECK(back.extra.size() == 1);
  CHECK_THROWS_WITH_AS(back.level(64), doctest::Contains("no length level 64 (it has 20, 33)"), Error);

  std::ofstream(dir / "bad.json") << R"({"format": "lamina-moa-profile", "version": 1, "layers": 1, "heads": 1,
      "block": 8, "levels": [{"length": 20, "items": 1, "influence": [[[1, 2, 3]]]}]})";
  CHECK_THROWS_WITH_AS(InfluenceProfile::read(dir / "bad.json"),
                       doctest::Contains("levels[0]: influence[0][0] has 3 block means"), Error);
}
