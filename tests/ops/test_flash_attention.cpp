// ops::flash_attention and its backward against the f64 oracle (reference::flash_attention),
// against the materialising ops::attention given the same pattern as a dense mask, and the
// properties the tiling must keep: the mask semantics of AttentionPattern (brute force), tile
// classification (never skips an allowed element, never calls a tile full that hides one),
// the spec's tile counts, skipped tiles leaving results bit for bit equal, thread-count
// independence, fully hidden rows, dtypes and argument errors.
#include <algorithm>
#include <cmath>
#include <random>

#include "attention_patterns.h"
#include "op_cases.h"
#include "ops/attention_pattern.h"
#include "tensor/parallel.h"

using namespace lamina;
using testing::random_documents;
using testing::random_layout;
using testing::random_tensor;

namespace {

struct FlashCase {
  std::string label;
  int64_t batch, heads, kv_heads, queries, keys, head_dim;
  AttentionPattern pattern;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<FlashCase> flash_cases() {
  std::mt19937 rng(15);
  std::vector<FlashCase> cases;
  cases.push_back({"dense causal, GQA 2", 2, 4, 2, 100, 100, 64, AttentionPattern::dense()});
  cases.push_back({"dense non-causal, Tq != Tk, D 8", 1, 2, 1, 37, 91, 8, AttentionPattern::dense(false)});
  cases.push_back({"cache prefix: 70 queries after 130 cached keys", 1, 2, 2, 70, 200, 64,
                   AttentionPattern::sink_window(4, 50)});
  for (int64_t ratio : {1, 2, 4, 8})
    cases.push_back({"sink 4 + window 17, GQA ratio " + std::to_string(ratio), 1, ratio, 1, 131, 131, 64,
                     AttentionPattern::sink_window(4, 17)});
  cases.push_back({"per-head (MoA) sinks and windows, D 128", 1, 4, 2, 150, 150, 128,
                   AttentionPattern::per_head_sink_window({0, 1, 4, 64}, {1, 3, 100, kAllKeys})});
  cases.push_back({"documents (some of length 1), D 16", 2, 2, 1, 97, 97, 16,
                   AttentionPattern::documents(random_documents(2, 97, 9, rng))});
  {
    AttentionPattern mixed = AttentionPattern::sink_window(2, 5);
    mixed.document_ids = random_documents(1, 140, 40, rng).reshape({140});
    cases.push_back({"documents + sink 2 + window 5, shared ids", 1, 2, 2, 140, 140, 32, mixed});
  }
  cases.push_back({"block-sparse 64 x 64 with an empty block row", 1, 2, 1, 200, 200, 64,
                   AttentionPattern::block_sparse(random_layout(1, 4, 4, 0.5, rng), 64, 64)});
  cases.push_back({"block-sparse 16 x 32 per head", 1, 3, 1, 90, 90, 24,
                   AttentionPattern::block_sparse(random_layout(3, 6, 3, 0.4, rng), 16, 32)});
  {
    AttentionPattern mixed = AttentionPattern::block_sparse(random_layout(2, 5, 5, 0.3, rng), 32, 32);
    mixed.sinks = {3};
    mixed.windows = {7, 0};
    mixed.query_offset = 40;
    cases.push_back({"block-sparse + sink + per-head window, explicit offset", 1, 2, 1, 120, 160, 64, mixed});
  }
  {
    AttentionPattern masked = AttentionPattern::sink_window(1, 30);
    Generator mask_values(4);
    masked.additive_mask = uniform({1, 1, 75, 75}, -2.0, 2.0, mask_values, DType::f32);
    cases.push_back({"additive mask + sink + window", 1, 2, 1, 75, 75, 64, masked});
  }
  cases.push_back({"nothing visible at all", 1, 2, 1, 70, 70, 64, AttentionPattern::sink_window(0, 0)});
  cases.push_back({"one decode query over 150 keys", 2, 4, 1, 1, 150, 64, AttentionPattern::sink_window(4, 64)});
  return cases;
}

struct FlashInputs {
  Tensor q, k, v, grad_out;
};

FlashInputs inputs_for(const FlashCase& c, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return {random_tensor({c.batch, c.heads, c.queries, c.head_dim}, dtype, gen),
          random_tensor({c.batch, c.kv_heads, c.keys, c.head_dim}, dtype, gen),
          random_tensor({c.batch, c.kv_heads, c.keys, c.head_dim}, dtype, gen),
          random_tensor({c.batch, c.heads, c.queries, c.head_dim}, dtype, gen)};
}

// The pattern as ops::attention's additive mask: 0 where allowed (plus the pattern's own
// additive mask), -inf elsewhere; causality is already inside.
Tensor dense_additive_mask(const FlashCase& c, DType dtype) {
  const Tensor allowed = attention_pattern_mask(c.pattern, c.batch, c.heads, c.queries, c.keys);
  Tensor mask = ops::where(allowed, zeros({1}, dtype), full({1}, -INFINITY, dtype));
  if (c.pattern.additive_mask.defined()) mask = ops::add(mask, ops::cast(c.pattern.additive_mask, dtype));
  return mask;
}

bool all_finite(const Tensor& t) {
  for (double x : t.to_vector<double>())
    if (!std::isfinite(x)) return false;
  return true;
}

// Independent of AttentionPattern's code: the spec's predicate for sink/window/causal only.
bool sink_window_allowed(int64_t i, int64_t j, int64_t sink, int64_t window) {
  return j <= i && (j < sink || (window > 0 && i - j < window));
}

}  // namespace

TEST_CASE("attention pattern: the dense mask follows the spec's predicate") {
  // Sink 1 + window 2 over 6 positions, written out by hand.
  const Tensor mask = attention_pattern_mask(AttentionPattern::sink_window(1, 2), 1, 1, 6, 6);
  const std::vector<int64_t> expected = {
      1, 0, 0, 0, 0, 0,  //
      1, 1, 0, 0, 0, 0,  //
      1, 1, 1, 0, 0, 0,  //
      1, 0, 1, 1, 0, 0,  //
      1, 0, 0, 1, 1, 0,  //
      1, 0, 0, 0, 1, 1,
  };
  CHECK(mask.to_vector<int64_t>() == expected);
  // Documents [0 0 1 1 1 2]: causal inside each, with the queries the last 3 positions.
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{0, 0, 1, 1, 1, 2}, {6});
  const Tensor docs = attention_pattern_mask(AttentionPattern::documents(ids), 1, 1, 3, 6);
  CHECK(docs.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 1, 1, 0, 0,  //
                                                          0, 0, 1, 1, 1, 0,  //
                                                          0, 0, 0, 0, 0, 1});
  // A 2 x 2 block layout with blocks of 2: only block (1, 0) on, no window.
  const Tensor layout = Tensor::from_vector(std::vector<uint8_t>{0, 0, 1, 0}, {1, 2, 2}, DType::boolean);
  const Tensor blocks = attention_pattern_mask(AttentionPattern::block_sparse(layout, 2, 2), 1, 1, 4, 4);
  CHECK(blocks.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0, 0,  //
                                                            0, 0, 0, 0,  //
                                                            1, 1, 0, 0,  //
                                                            1, 1, 0, 0});
}

TEST_CASE("attention pattern: tile classification never contradicts the elements") {
  // Random tiles not aligned to anything, for every component; skip must mean no allowed
  // element, full must mean every element allowed (spec §3.5 checked this on 200,000 tiles).
  std::mt19937 rng(3);
  std::uniform_int_distribution<int64_t> position(0, 299);
  int64_t skipped = 0, full = 0;
  for (int trial = 0; trial < 600; ++trial) {
    AttentionPattern pattern;
    const int kind = trial % 4;
    const int64_t sinks[] = {0, 1, 4, 64}, windows[] = {0, 1, 3, 17, 64, 100, kAllKeys};
    pattern.sinks = {sinks[trial % 4]};
    pattern.windows = {windows[(trial / 4) % 7]};
    pattern.causal = trial % 11 != 0;
    if (kind == 1) pattern.document_ids = random_documents(1, 300, 60, rng).reshape({300});
    if (kind == 2) {
      pattern.block_layout = random_layout(1, 10, 10, 0.5, rng);
      pattern.block_queries = pattern.block_keys = 32;
    }
    const ResolvedAttentionPattern resolved(pattern, 1, 1, 300, 300);
    for (int tile = 0; tile < 40; ++tile) {
      const int64_t r0 = position(rng), c0 = position(rng);
      const int64_t r1 = std::min<int64_t>(300, r0 + 1 + position(rng) % 70);
      const int64_t c1 = std::min<int64_t>(300, c0 + 1 + position(rng) % 70);
      const TileKind result = resolved.classify(0, 0, r0, r1, c0, c1);
      int64_t allowed = 0;
      for (int64_t i = r0; i < r1; ++i)
        for (int64_t j = c0; j < c1; ++j) allowed += resolved.allowed(0, 0, i, j);
      INFO("trial " << trial << " rows [" << r0 << ", " << r1 << ") columns [" << c0 << ", " << c1 << ")");
      if (result == TileKind::skip) CHECK(allowed == 0);
      if (result == TileKind::full) CHECK(allowed == (r1 - r0) * (c1 - c0));
      skipped += result == TileKind::skip;
      full += result == TileKind::full;
    }
  }
  CHECK(skipped > 1000);  // the classifier does skip and does call tiles full
  CHECK(full > 1000);
  // The resolved predicate against an independent one for sink/window.
  for (int64_t sink : {0, 2, 5})
    for (int64_t window : {0, 1, 4, 9}) {
      const ResolvedAttentionPattern resolved(AttentionPattern::sink_window(sink, window), 1, 1, 20, 20);
      for (int64_t i = 0; i < 20; ++i)
        for (int64_t j = 0; j < 20; ++j) CHECK(resolved.allowed(0, 0, i, j) == sink_window_allowed(i, j, sink, window));
    }
}

TEST_CASE("attention pattern: tile counts at T = 8192 equal the spec's analytic counts") {
  // sparse-attention.md §3.5 (64 x 64 tiles): dense causal 8,256; sink 64 + window 2048 3,791
  // with 223 partial; sink 64 + window 4032 6,240.
  const auto counts = [](const AttentionPattern& pattern) {
    return count_attention_tiles(ResolvedAttentionPattern(pattern, 1, 1, 8192, 8192), 64, 64);
  };
  CHECK(counts(AttentionPattern::dense()).visited == 8256);
  const AttentionTileCounts streaming = counts(AttentionPattern::sink_window(64, 2048));
  CHECK(streaming.visited == 3791);
  CHECK(streaming.partial == 223);
  CHECK(counts(AttentionPattern::sink_window(64, 4032)).visited == 6240);
}

TEST_CASE("flash_attention: forward and backward equal the f64 oracle and the dense masked attention") {
  uint64_t seed = 100;
  for (const FlashCase& c : flash_cases()) {
    INFO(c.label);
    const FlashInputs in = inputs_for(c, DType::f32, ++seed);
    const ops::AttentionResult fused = ops::flash_attention(in.q, in.k, in.v, c.pattern);
    const std::vector<Tensor> oracle = ops::reference::flash_attention(in.q, in.k, in.v, c.pattern);
    CHECK_CLOSE(fused.out, oracle[0], (testing::Tolerance{2e-6, 1e-5}));
    CHECK_CLOSE(fused.lse, oracle[1], (testing::Tolerance{2e-6, 1e-6}));
    const ops::AttentionGrads grads =
        ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, fused.out, fused.lse, c.pattern);
    const std::vector<Tensor> oracle_grads =
        ops::reference::flash_attention_backward(in.grad_out, in.q, in.k, in.v, c.pattern);
    CHECK_CLOSE(grads.dq, oracle_grads[0], (testing::Tolerance{1e-5, 1e-4}));
    CHECK_CLOSE(grads.dk, oracle_grads[1], (testing::Tolerance{1e-5, 1e-4}));
    CHECK_CLOSE(grads.dv, oracle_grads[2], (testing::Tolerance{1e-5, 1e-4}));

    // The materialising path with the same pattern as a dense additive mask.
    AttentionOptions dense;
    dense.causal = false;
    dense.mask = dense_additive_mask(c, DType::f32);
    const ops::AttentionResult materialised = ops::attention(in.q, in.k, in.v, dense);
    CHECK_CLOSE(fused.out, materialised.out, (testing::Tolerance{2e-6, 1e-5}));
    CHECK_CLOSE(fused.lse, materialised.lse, (testing::Tolerance{2e-6, 1e-6}));
    const ops::AttentionGrads dense_grads = ops::attention_backward(in.grad_out, in.q, in.k, in.v, materialised.out,
                                                                    materialised.lse, dense);
    CHECK_CLOSE(grads.dq, dense_grads.dq, (testing::Tolerance{1e-5, 1e-4}));
    CHECK_CLOSE(grads.dk, dense_grads.dk, (testing::Tolerance{1e-5, 1e-4}));
    CHECK_CLOSE(grads.dv, dense_grads.dv, (testing::Tolerance{1e-5, 1e-4}));
  }
}

TEST_CASE("flash_attention: f64 to the oracle's precision, bf16 and f16 computed in f32") {
  const FlashCase c{"sink + window", 1, 4, 2, 90, 90, 64, AttentionPattern::sink_window(2, 40)};
  const FlashInputs in = inputs_for(c, DType::f64, 7);
  const ops::AttentionResult fused = ops::flash_attention(in.q, in.k, in.v, c.pattern);
  const std::vector<Tensor> oracle = ops::reference::flash_attention(in.q, in.k, in.v, c.pattern);
  CHECK(fused.out.dtype() == DType::f64);
  CHECK_CLOSE(fused.out, oracle[0], testing::tolerance_for(DType::f64));
  CHECK_CLOSE(fused.lse, oracle[1], testing::tolerance_for(DType::f64));
  const ops::AttentionGrads grads =
      ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, fused.out, fused.lse, c.pattern);
  const std::vector<Tensor> oracle_grads = ops::reference::flash_attention_backward(in.grad_out, in.q, in.k, in.v, c.pattern);
  CHECK_CLOSE(grads.dq, oracle_grads[0], testing::tolerance_for(DType::f64));
  CHECK_CLOSE(grads.dk, oracle_grads[1], testing::tolerance_for(DType::f64));
  CHECK_CLOSE(grads.dv, oracle_grads[2], testing::tolerance_for(DType::f64));
  for (DType dtype : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dtype));
    const Tensor q = ops::cast(in.q, dtype), k = ops::cast(in.k, dtype), v = ops::cast(in.v, dtype);
    const ops::AttentionResult low = ops::flash_attention(q, k, v, c.pattern);
    CHECK(low.out.dtype() == dtype);
    CHECK(low.lse.dtype() == DType::f32);
    // The oracle on the rounded inputs: only the output's rounding separates them.
    const std::vector<Tensor> expected = ops::reference::flash_attention(q, k, v, c.pattern);
    CHECK_CLOSE(low.out, expected[0], testing::tolerance_for(dtype));
    const ops::AttentionGrads low_grads =
        ops::flash_attention_backward(ops::cast(in.grad_out, dtype), q, k, v, low.out, low.lse, c.pattern);
    CHECK(low_grads.dk.dtype() == dtype);
    CHECK_CLOSE(low_grads.dv, ops::reference::flash_attention_backward(ops::cast(in.grad_out, dtype), q, k, v, c.pattern)[2],
                testing::tolerance_for(dtype));
  }
}

TEST_CASE("flash_attention: skipped tiles give bit-for-bit the results of the same pattern as a dense mask") {
  // The dense-mask version visits every tile under the causal cut and masks per element; the
  // pattern version skips the empty tiles. Equal values show that skipping changes nothing.
  std::mt19937 rng(9);
  std::vector<FlashCase> cases = {
      {"sink 4 + window 40", 1, 2, 1, 330, 330, 64, AttentionPattern::sink_window(4, 40)},
      {"documents", 1, 2, 2, 300, 300, 64, AttentionPattern::documents(random_documents(1, 300, 90, rng))},
      {"block-sparse", 1, 2, 1, 256, 256, 64, AttentionPattern::block_sparse(random_layout(2, 4, 4, 0.4, rng), 64, 64)},
  };
  for (const FlashCase& c : cases) {
    INFO(c.label);
    FlashCase as_mask = c;
    as_mask.pattern = AttentionPattern::dense();
    as_mask.pattern.additive_mask = dense_additive_mask(c, DType::f32);
    const ResolvedAttentionPattern sparse(c.pattern, c.batch, c.heads, c.queries, c.keys);
    const ResolvedAttentionPattern dense(as_mask.pattern, c.batch, c.heads, c.queries, c.keys);
    CHECK(count_attention_tiles(sparse, 64, 64).visited < count_attention_tiles(dense, 64, 64).visited);

    const FlashInputs in = inputs_for(c, DType::f32, 21);
    const ops::AttentionResult a = ops::flash_attention(in.q, in.k, in.v, c.pattern);
    const ops::AttentionResult b = ops::flash_attention(in.q, in.k, in.v, as_mask.pattern);
    CHECK(testing::exactly_equal(a.out, b.out));
    CHECK(testing::exactly_equal(a.lse, b.lse));
    const ops::AttentionGrads ga = ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, a.out, a.lse, c.pattern);
    const ops::AttentionGrads gb =
        ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, b.out, b.lse, as_mask.pattern);
    CHECK(testing::exactly_equal(ga.dq, gb.dq));
    CHECK(testing::exactly_equal(ga.dk, gb.dk));
    CHECK(testing::exactly_equal(ga.dv, gb.dv));
  }
}

TEST_CASE("flash_attention: results are identical on 1 and 2 threads") {
  const FlashCase c{"per-head windows, GQA", 2, 4, 2, 200, 200, 64,
                    AttentionPattern::per_head_sink_window({0, 4, 0, 4}, {kAllKeys, 33, 17, kAllKeys})};
  const FlashInputs in = inputs_for(c, DType::f32, 5);
  const auto run = [&](int threads) {
    ThreadCountGuard guard(threads);
    const ops::AttentionResult result = ops::flash_attention(in.q, in.k, in.v, c.pattern);
    const ops::AttentionGrads grads =
        ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, result.out, result.lse, c.pattern);
    return std::vector<Tensor>{result.out, result.lse, grads.dq, grads.dk, grads.dv};
  };
  const std::vector<Tensor> one = run(1), two = run(2);
  for (size_t i = 0; i < one.size(); ++i) CHECK(testing::exactly_equal(one[i], two[i]));
}

TEST_CASE("flash_attention: a row that sees no key gives output 0, lse -inf and no gradient, never NaN") {
  // Block row 0 is off, so queries 0..31 see nothing; the rest see their layout blocks.
  std::mt19937 rng(1);
  const FlashCase c{"block-sparse with empty rows", 1, 2, 1, 96, 96, 64,
                    AttentionPattern::block_sparse(random_layout(1, 3, 3, 1.0, rng), 32, 32)};
  const FlashInputs in = inputs_for(c, DType::f32, 11);
  const ops::AttentionResult result = ops::flash_attention(in.q, in.k, in.v, c.pattern);
  const std::vector<double> out = result.out.to_vector<double>(), lse = result.lse.to_vector<double>();
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t t = 0; t < 96; ++t) {
      const double row_lse = lse[size_t(h * 96 + t)];
      CHECK((t < 32 ? row_lse == -INFINITY : std::isfinite(row_lse)));
      if (t < 32)
        for (int64_t d = 0; d < 64; ++d) CHECK(out[size_t((h * 96 + t) * 64 + d)] == 0.0);
    }
  const ops::AttentionGrads grads =
      ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, result.out, result.lse, c.pattern);
  CHECK(all_finite(result.out));
  CHECK(all_finite(grads.dq));
  CHECK(all_finite(grads.dk));
  CHECK(all_finite(grads.dv));
  const std::vector<double> dq = grads.dq.to_vector<double>();
  for (int64_t t = 0; t < 32; ++t) CHECK(dq[size_t(t * 64)] == 0.0);
}

TEST_CASE("flash_attention: argument errors name the op and the pattern's problem") {
  Generator gen(2);
  const Tensor q = random_tensor({1, 4, 10, 8}, DType::f32, gen), k = random_tensor({1, 2, 10, 8}, DType::f32, gen);
  CHECK_THROWS_WITH_AS(ops::flash_attention(q, k, k, AttentionPattern::per_head_sink_window({0}, {1, 2, 3})),
                       doctest::Contains("windows has 3 values"), Error);
  CHECK_THROWS_WITH_AS(ops::flash_attention(q, k, k, AttentionPattern::sink_window(-1, 4)),
                       doctest::Contains("sinks must be >= 0"), Error);
  const Tensor small_layout = zeros({1, 1, 1}, DType::boolean);
  CHECK_THROWS_WITH_AS(ops::flash_attention(q, k, k, AttentionPattern::block_sparse(small_layout, 4, 4)),
                       doctest::Contains("block_layout [1, 1, 1] must be"), Error);
  CHECK_THROWS_WITH_AS(ops::flash_attention(q, k, k, AttentionPattern::documents(zeros({9}, DType::i64))),
                       doctest::Contains("document_ids [9] must be [10]"), Error);
  CHECK_THROWS_WITH_AS(ops::flash_attention(q, random_tensor({1, 3, 10, 8}, DType::f32, gen),
                                            random_tensor({1, 3, 10, 8}, DType::f32, gen), AttentionPattern::dense()),
                       doctest::Contains("multiple of kv heads"), Error);
  AttentionPattern late;
  late.query_offset = -3;
  CHECK_THROWS_WITH_AS(ops::flash_attention(q, k, k, late), doctest::Contains("query offset must be >= 0"), Error);
}
