// ops::cached_attention (keys with their own positions, the kernel of ring-buffer KV caches)
// against its f64 oracle and against the f64 oracle of flash_attention: a query's keys put in
// scrambled slots, with empty slots (-1) among them, must give the dense masked attention over
// the same keys in position order. Also: GQA 1/3/4 with per-head sinks and windows inside a
// group, decode (T = 1) and T > 1 split into several key chunks, thread-count independence,
// rows that see nothing, stale non-finite values in empty slots, dtypes and argument errors.
#include <algorithm>
#include <cmath>
#include <random>

#include "attention_patterns.h"
#include "op_cases.h"
#include "ops/attention_pattern.h"
#include "ops/cpu/cached_attention.h"
#include "tensor/parallel.h"

using namespace lamina;

namespace {

struct SlotCase {
  std::string label;
  int64_t batch, heads, kv_heads, queries, head_dim;
  int64_t query_start;               // position of query row 0; keys are positions [0, query_start + queries)
  std::vector<int64_t> sinks, windows;  // one per query head, or one for all
  int64_t empty_slots = 0;           // extra slots holding -1 (and garbage values)
  int64_t runs = 1;                  // the slots cut into this many runs
};

// Keys and values in position order [B, Hkv, N, D] (N = query_start + queries), and the same
// keys spread over scrambled slots with empty ones among them, cut into runs.
struct SlotInputs {
  Tensor q, keys, values;
  std::vector<ops::PositionedKeys> runs;
};

SlotInputs slot_inputs(const SlotCase& c, DType dtype, uint64_t seed, double empty_value = 1e3) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<double> uniform_value(-1.0, 1.0);
  const int64_t N = c.query_start + c.queries, S = N + c.empty_slots, D = c.head_dim;
  const auto random_values = [&](int64_t count) {
    std::vector<double> values(static_cast<size_t>(count));
    for (double& x : values) x = uniform_value(rng);
    return values;
  };
  SlotInputs in;
  const std::vector<double> q = random_values(c.batch * c.heads * c.queries * D);
  const std::vector<double> k = random_values(c.batch * c.kv_heads * N * D), v = random_values(c.batch * c.kv_heads * N * D);
  in.q = ops::cast(Tensor::from_vector(q, {c.batch, c.heads, c.queries, D}), dtype);
  in.keys = ops::cast(Tensor::from_vector(k, {c.batch, c.kv_heads, N, D}), dtype);
  in.values = ops::cast(Tensor::from_vector(v, {c.batch, c.kv_heads, N, D}), dtype);
  // Per KV head its own scramble: slot s holds position order[s] (or -1).
  std::vector<int64_t> positions;
  for (int64_t g = 0; g < c.kv_heads; ++g) {
    std::vector<int64_t> order(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) order[size_t(s)] = s < N ? s : -1;
    std::shuffle(order.begin(), order.end(), rng);
    positions.insert(positions.end(), order.begin(), order.end());
  }
  std::vector<double> slot_k(size_t(c.batch * c.kv_heads * S * D)), slot_v(slot_k.size());
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t g = 0; g < c.kv_heads; ++g)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t p = positions[size_t(g * S + s)];
        for (int64_t d = 0; d < D; ++d) {
          const size_t to = size_t(((b * c.kv_heads + g) * S + s) * D + d);
          const size_t from = size_t(((b * c.kv_heads + g) * N + p) * D + d);
          slot_k[to] = p < 0 ? empty_value : k[from];
          slot_v[to] = p < 0 ? empty_value : v[from];
        }
      }
  const Tensor all_k = ops::cast(Tensor::from_vector(slot_k, {c.batch, c.kv_heads, S, D}), dtype);
  const Tensor all_v = ops::cast(Tensor::from_vector(slot_v, {c.batch, c.kv_heads, S, D}), dtype);
  const Tensor all_positions = Tensor::from_vector(positions, {c.kv_heads, S});
  for (int64_t r = 0; r < c.runs; ++r) {
    const int64_t from = S * r / c.runs, to = S * (r + 1) / c.runs;
    // Shared positions ([S]) when there is one KV head, per head ([Hkv, S]) otherwise.
    Tensor run_positions = views::slice(all_positions, 1, from, to);
    if (c.kv_heads == 1) run_positions = ops::contiguous(run_positions).reshape({to - from});
    in.runs.push_back({views::slice(all_k, 2, from, to), views::slice(all_v, 2, from, to), run_positions});
  }
  return in;
}

AttentionPattern slot_pattern(const SlotCase& c) {
  AttentionPattern pattern = AttentionPattern::per_head_sink_window(c.sinks, c.windows);
  pattern.query_offset = c.query_start;
  return pattern;
}

std::vector<SlotCase> slot_cases() {
  std::vector<SlotCase> cases;
  std::mt19937 rng(15);
  const int64_t sinks[] = {0, 1, 4}, windows[] = {0, 1, 3, 17, kAllKeys};
  const int64_t ratios[] = {1, 3, 4};
  for (int64_t ratio : ratios)
    for (int64_t sink : sinks)
      for (int64_t window : windows) {
        const int64_t kv_heads = 1 + int64_t(rng() % 2), queries = (rng() % 3 == 0) ? 1 + int64_t(rng() % 9) : 1;
        const int64_t head_dim = std::vector<int64_t>{8, 64, 24}[rng() % 3];
        cases.push_back({"GQA " + std::to_string(ratio) + ", sink " + std::to_string(sink) + ", window " +
                             (window == kAllKeys ? std::string("INF") : std::to_string(window)) + ", T " +
                             std::to_string(queries) + ", D " + std::to_string(head_dim),
                         1 + int64_t(rng() % 2), ratio * kv_heads, kv_heads, queries, head_dim,
                         int64_t(rng() % 60), {sink}, {window}, int64_t(rng() % 7), 1 + int64_t(rng() % 2)});
      }
  // Different sinks and windows for the query heads of one group (MoA heads sharing a KV head).
  cases.push_back({"per-head sinks and windows inside GQA groups, T 1", 1, 8, 2, 1, 64, 90,
                   {0, 1, 4, 0, 4, 1, 0, 4}, {1, 3, 17, kAllKeys, 0, 17, 3, kAllKeys}, 5, 2});
  cases.push_back({"per-head sinks and windows inside GQA groups, T 37", 2, 6, 2, 37, 32, 50,
                   {0, 1, 4, 4, 1, 0}, {3, kAllKeys, 17, 1, 0, 17}, 9, 2});
  cases.push_back({"prefill from position 0, T 100, GQA 3", 1, 3, 1, 100, 64, 0, {4}, {17}, 0, 1});
  // 66 rows per group: the last row tile holds 2 rows, fewer than the group's 3 heads.
  cases.push_back({"a last row tile shorter than the group, T 22, GQA 3", 1, 3, 1, 22, 16, 30, {1, 0, 4}, {3, 17, 1}, 2, 1});
  return cases;
}

const testing::Tolerance kOutTolerance{2e-6, 1e-5}, kLseTolerance{2e-6, 1e-6};

}  // namespace

TEST_CASE("cached_attention: scrambled slots equal dense masked attention over positions (f64 oracles)") {
  uint64_t seed = 40;
  int64_t cases = 0;
  for (const SlotCase& c : slot_cases()) {
    INFO(c.label << " (B " << c.batch << ", Hq " << c.heads << ", Hkv " << c.kv_heads << ", start " << c.query_start
                 << ", empty slots " << c.empty_slots << ", runs " << c.runs << ")");
    const SlotInputs in = slot_inputs(c, DType::f32, ++seed);
    const AttentionPattern pattern = slot_pattern(c);
    const ops::AttentionResult result = ops::cached_attention(in.q, in.runs, pattern);
    CHECK(result.out.dtype() == DType::f32);
    // Its own oracle, over the slots as given.
    const std::vector<Tensor> oracle = ops::reference::cached_attention(in.q, in.runs, pattern);
    CHECK_CLOSE(result.out, oracle[0], kOutTolerance);
    CHECK_CLOSE(result.lse, oracle[1], kLseTolerance);
    // The flash_attention oracle over the keys in position order: the same function.
    const std::vector<Tensor> dense = ops::reference::flash_attention(in.q, in.keys, in.values, pattern);
    CHECK_CLOSE(result.out, dense[0], kOutTolerance);
    CHECK_CLOSE(result.lse, dense[1], kLseTolerance);
    ++cases;
  }
  CHECK(cases == 49);
}

TEST_CASE("cached_attention: decode and short prefills split over key chunks, merged exactly, on any thread count") {
  const std::vector<SlotCase> cases = {
      {"decode, GQA 4, sink 4 + window 600", 1, 4, 1, 1, 64, 1499, {4}, {600}, 11, 2},
      {"decode, GQA 3, per-head windows, 2 KV heads, D 128", 1, 6, 2, 1, 128, 1200, {0, 4, 1, 0, 4, 1},
       {kAllKeys, 300, 17, 1, 0, 900}, 3, 1},
      {"T 5, GQA 4, dense", 1, 4, 1, 5, 64, 1000, {0}, {kAllKeys}, 0, 2},
  };
  uint64_t seed = 7;
  for (const SlotCase& c : cases) {
    INFO(c.label);
    const SlotInputs in = slot_inputs(c, DType::f32, ++seed);
    const AttentionPattern pattern = slot_pattern(c);
    int64_t slots = 0;
    for (const auto& run : in.runs) slots += run.keys.size(2);
    const ops::cpu::CachedAttentionSplit split =
        ops::cpu::cached_attention_split(c.batch, c.kv_heads, (c.heads / c.kv_heads) * c.queries, slots);
    CHECK(split.key_chunks >= 3);  // the merge is exercised, not bypassed
    const auto run = [&](int threads) {
      ThreadCountGuard guard(threads);
      return ops::cached_attention(in.q, in.runs, pattern);
    };
    const ops::AttentionResult one = run(1), two = run(2);
    CHECK(testing::exactly_equal(one.out, two.out));
    CHECK(testing::exactly_equal(one.lse, two.lse));
    const std::vector<Tensor> dense = ops::reference::flash_attention(in.q, in.keys, in.values, pattern);
    CHECK_CLOSE(two.out, dense[0], kOutTolerance);
    CHECK_CLOSE(two.lse, dense[1], kLseTolerance);
  }
}

TEST_CASE("cached_attention: rows that see nothing give 0 and lse -inf; empty slots never leak, even non-finite") {
  // Sink 0 + window 0 hides everything; in the mixed case head 1 (window 0, sink 2) sees only
  // positions 0 and 1, and the queries past them see nothing.
  SlotCase nothing{"nothing visible", 1, 2, 1, 3, 16, 20, {0}, {0}, 4, 1};
  SlotCase mixed{"sink only in one head", 1, 2, 1, 4, 16, 30, {0, 2}, {5, 0}, 6, 2};
  for (double garbage : {1e3, double(NAN), double(INFINITY)}) {
    INFO("empty slots hold " << garbage);
    const SlotInputs in = slot_inputs(nothing, DType::f32, 3, garbage);
    const ops::AttentionResult result = ops::cached_attention(in.q, in.runs, slot_pattern(nothing));
    for (double x : result.out.to_vector<double>()) CHECK(x == 0.0);
    for (double x : result.lse.to_vector<double>()) CHECK(x == -INFINITY);

    const SlotInputs in_mixed = slot_inputs(mixed, DType::f32, 4, garbage);
    const ops::AttentionResult mixed_result = ops::cached_attention(in_mixed.q, in_mixed.runs, slot_pattern(mixed));
    for (double x : mixed_result.out.to_vector<double>()) CHECK(std::isfinite(x));
    const std::vector<Tensor> dense =
        ops::reference::flash_attention(in_mixed.q, in_mixed.keys, in_mixed.values, slot_pattern(mixed));
    CHECK_CLOSE(mixed_result.out, dense[0], kOutTolerance);
    CHECK_CLOSE(mixed_result.lse, dense[1], kLseTolerance);
  }
  // No runs at all: every row is empty.
  Generator gen(1);
  AttentionPattern pattern;
  pattern.query_offset = 0;
  const ops::AttentionResult none = ops::cached_attention(testing::random_tensor({1, 2, 3, 8}, DType::f32, gen), {}, pattern);
  for (double x : none.out.to_vector<double>()) CHECK(x == 0.0);
  for (double x : none.lse.to_vector<double>()) CHECK(x == -INFINITY);
  // No queries: empty results of the right shapes.
  const Tensor keys = testing::random_tensor({1, 1, 5, 8}, DType::f32, gen);
  const ops::AttentionResult no_queries = ops::cached_attention(
      testing::random_tensor({1, 2, 0, 8}, DType::f32, gen), {{keys, keys, Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4}, {5})}}, pattern);
  CHECK(no_queries.out.shape() == Shape{1, 2, 0, 8});
  CHECK(no_queries.lse.shape() == Shape{1, 2, 0});
}

TEST_CASE("cached_attention: f64 to the oracle's precision, bf16 and f16 computed in f32") {
  const SlotCase c{"GQA 3, sink 1 + window 40, split", 1, 3, 1, 2, 64, 700, {1}, {40}, 5, 2};
  const SlotInputs in = slot_inputs(c, DType::f64, 9);
  const AttentionPattern pattern = slot_pattern(c);
  const ops::AttentionResult result = ops::cached_attention(in.q, in.runs, pattern);
  CHECK(result.out.dtype() == DType::f64);
  const std::vector<Tensor> oracle = ops::reference::cached_attention(in.q, in.runs, pattern);
  CHECK_CLOSE(result.out, oracle[0], testing::tolerance_for(DType::f64));
  CHECK_CLOSE(result.lse, oracle[1], testing::tolerance_for(DType::f64));
  for (DType dtype : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dtype));
    const SlotInputs low = slot_inputs(c, dtype, 9);
    const ops::AttentionResult low_result = ops::cached_attention(low.q, low.runs, pattern);
    CHECK(low_result.out.dtype() == dtype);
    CHECK(low_result.lse.dtype() == DType::f32);
    // The oracle on the rounded inputs: only the output's rounding separates them.
    const std::vector<Tensor> expected = ops::reference::cached_attention(low.q, low.runs, pattern);
    CHECK_CLOSE(low_result.out, expected[0], testing::tolerance_for(dtype));
    CHECK_CLOSE(low_result.lse, expected[1], (testing::Tolerance{1e-5, 1e-5}));
  }
}

TEST_CASE("cached_attention: argument errors name the op and the problem") {
  Generator gen(2);
  const Tensor q = testing::random_tensor({1, 4, 2, 8}, DType::f32, gen);
  const Tensor k = testing::random_tensor({1, 2, 5, 8}, DType::f32, gen);
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, -1, 3}, {5});
  AttentionPattern pattern;
  pattern.query_offset = 4;
  CHECK_NOTHROW(ops::cached_attention(q, {{k, k, positions}}, pattern));
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{k, k, positions}}, AttentionPattern::dense()),
                       doctest::Contains("query_offset"), Error);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{k, k, Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {3})}}, pattern),
                       doctest::Contains("run 0 positions [3] must be [5] or [2, 5]"), Error);
  CHECK_THROWS_WITH_AS(
      ops::cached_attention(q, {{k, k, Tensor::from_vector(std::vector<int64_t>{0, 1, -2, 3, 4}, {5})}}, pattern),
      doctest::Contains("holds -2 at index 2"), Error);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{k, k, ops::cast(positions, DType::f32)}}, pattern),
                       doctest::Contains("must be integers"), Error);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{k, k, positions}, {k.slice(1, 0, 1), k.slice(1, 0, 1), positions}}, pattern),
                       doctest::Contains("run 1 keys [1, 1, 5, 8] has 1 kv heads"), Error);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{ops::cast(k, DType::f64), ops::cast(k, DType::f64), positions}}, pattern),
                       doctest::Contains("cached_attention"), Error);
  const Tensor three_heads = testing::random_tensor({1, 3, 5, 8}, DType::f32, gen);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{three_heads, three_heads, positions}}, pattern),
                       doctest::Contains("multiple of kv heads"), Error);
  AttentionPattern with_documents = pattern;
  with_documents.document_ids = zeros({6}, DType::i64);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{k, k, positions}}, with_documents),
                       doctest::Contains("only causality, sinks and windows"), Error);
  AttentionPattern bad_sinks = pattern;
  bad_sinks.sinks = {1, 2, 3};
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{k, k, positions}}, bad_sinks), doctest::Contains("sinks has 3 values"),
                       Error);
}
