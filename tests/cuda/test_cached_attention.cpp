// ops::cached_attention on the GPU (ops/cuda/cached_attention.cu) against the CPU kernel on the
// same inputs: keys in scrambled ring slots with empty slots (-1) among them, cut into runs, with
// the positions left on the host as SparseKvCache keeps them (and, in one case, on the device).
// Covered: GQA 1/3/4 x sinks 0/1/4 x windows 0/1/3/17/INF with per-head sinks and windows inside
// a group; decode (T = 1) over thousands of slots (several pieces merged) and T > 1 (row tiles of
// 64 and a ragged last tile); odd slot counts; D 64 and 128 (and 24: padded columns); bf16, f16
// and f32; rows that see nothing (out exactly 0, lse -inf) and stale NaN/inf values in empty
// slots that must never leak; no runs at all; strided key views; two runs giving identical bits;
// the errors for f64, head_dim > 128 and keys on another device than q.
// Tolerances: f32 out within 1e-5 of the largest |value| of the CPU's out (the same f32 equations
// summed in another order: the GPU's pieces and tiles differ from the CPU's chunks), lse within
// 1e-5 of max(1, largest |lse|); bf16/f16 out within one ulp of the largest value of the CPU's
// (both compute in f32 and round once to the output dtype), and their error against the f64
// oracle at most 2x the CPU kernel's own plus 1e-4.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "attention_patterns.h"
#include "cuda_cases.h"
#include "ops/attention_pattern.h"
#include "ops/reference.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

namespace {

struct RingCase {
  std::string label;
  int64_t batch, heads, kv_heads, queries, head_dim;
  int64_t query_start;                  // position of query row 0; keys hold positions [0, query_start + queries)
  std::vector<int64_t> sinks, windows;  // one per query head, or one for all
  int64_t empty_slots = 0;              // extra slots at -1 holding `garbage`
  int64_t runs = 1;                     // the slots cut into this many runs
};

// The op's inputs on the CPU: q, and the runs over scrambled slots (keys and values views of one
// [B, Hkv, S, D] buffer each, positions [S] for one KV head and [Hkv, S] otherwise).
struct RingInputs {
  Tensor q;
  std::vector<ops::PositionedKeys> runs;
};

RingInputs ring_inputs(const RingCase& c, DType dtype, uint64_t seed, double garbage = 1e3) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<double> uniform_value(-1.0, 1.0);
  const int64_t N = c.query_start + c.queries, S = N + c.empty_slots, D = c.head_dim;
  std::vector<int64_t> positions;  // per KV head its own scramble
  for (int64_t g = 0; g < c.kv_heads; ++g) {
    std::vector<int64_t> order(static_cast<size_t>(S));
    for (int64_t slot = 0; slot < S; ++slot) order[size_t(slot)] = slot < N ? slot : -1;
    std::shuffle(order.begin(), order.end(), rng);
    positions.insert(positions.end(), order.begin(), order.end());
  }
  std::vector<double> q(size_t(c.batch * c.heads * c.queries * D)), k(size_t(c.batch * c.kv_heads * S * D)),
      v(k.size());
  for (double& x : q) x = uniform_value(rng);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t g = 0; g < c.kv_heads; ++g)
      for (int64_t slot = 0; slot < S; ++slot) {
        const bool empty = positions[size_t(g * S + slot)] < 0;
        for (int64_t d = 0; d < D; ++d) {
          const size_t at = size_t(((b * c.kv_heads + g) * S + slot) * D + d);
          k[at] = empty ? garbage : uniform_value(rng);
          v[at] = empty ? garbage : uniform_value(rng);
        }
      }
  RingInputs in;
  in.q = ops::cast(Tensor::from_vector(q, {c.batch, c.heads, c.queries, D}), dtype);
  const Tensor keys = ops::cast(Tensor::from_vector(k, {c.batch, c.kv_heads, S, D}), dtype);
  const Tensor values = ops::cast(Tensor::from_vector(v, {c.batch, c.kv_heads, S, D}), dtype);
  const Tensor all_positions = Tensor::from_vector(positions, {c.kv_heads, S});
  for (int64_t r = 0; r < c.runs; ++r) {
    const int64_t from = S * r / c.runs, to = S * (r + 1) / c.runs;
    Tensor run_positions = ops::contiguous(views::slice(all_positions, 1, from, to));
    if (c.kv_heads == 1) run_positions = run_positions.reshape({to - from});
    in.runs.push_back({views::slice(keys, 2, from, to), views::slice(values, 2, from, to), run_positions});
  }
  return in;
}

// Keys and values mirrored to the GPU (the same views of the same storage); positions stay on
// the host unless `positions_on_device`.
std::vector<ops::PositionedKeys> runs_on_gpu(const std::vector<ops::PositionedKeys>& runs,
                                             bool positions_on_device = false) {
  std::vector<ops::PositionedKeys> moved;
  for (const ops::PositionedKeys& run : runs)
    moved.push_back({mirror(run.keys), mirror(run.values), positions_on_device ? mirror(run.positions) : run.positions});
  return moved;
}

AttentionPattern ring_pattern(const RingCase& c) {
  AttentionPattern pattern = AttentionPattern::per_head_sink_window(c.sinks, c.windows);
  pattern.query_offset = c.query_start;
  return pattern;
}

std::string window_name(int64_t window) { return window == kAllKeys ? std::string("INF") : std::to_string(window); }

// The GQA x sink x window grid, each with random B, Hkv, T, start, empty slots, runs, and D from
// {64, 128, 24}; odd slot counts occur throughout.
std::vector<RingCase> grid_cases() {
  std::vector<RingCase> cases;
  std::mt19937 rng(2026);
  for (int64_t ratio : {1, 3, 4})
    for (int64_t sink : {0, 1, 4})
      for (int64_t window : {int64_t(0), int64_t(1), int64_t(3), int64_t(17), kAllKeys}) {
        const int64_t kv_heads = 1 + int64_t(rng() % 2);
        const int64_t queries = rng() % 3 == 0 ? 2 + int64_t(rng() % 30) : 1;
        const int64_t head_dim = std::vector<int64_t>{64, 128, 64, 128, 24}[rng() % 5];
        cases.push_back({"GQA " + std::to_string(ratio) + ", sink " + std::to_string(sink) + ", window " +
                             window_name(window) + ", T " + std::to_string(queries) + ", D " + std::to_string(head_dim),
                         1 + int64_t(rng() % 2), ratio * kv_heads, kv_heads, queries, head_dim,
                         int64_t(rng() % 300), {sink}, {window}, int64_t(rng() % 9), 1 + int64_t(rng() % 2)});
      }
  // Decode over thousands of slots: several pieces per (b, kv head) on any GPU, merged.
  cases.push_back({"decode, GQA 4, sink 4 + window 600, 3001 slots", 1, 4, 1, 1, 64, 2990, {4}, {600}, 11, 2});
  cases.push_back({"decode, GQA 3, per-head windows, 2 KV heads, D 128", 2, 6, 2, 1, 128, 2400, {0, 4, 1, 0, 4, 1},
                   {kAllKeys, 300, 17, 1, 0, 900}, 3, 1});
  // Per-head sinks and windows inside GQA groups, T > 1; a group of 8 heads (one warp per row).
  cases.push_back({"per-head sinks and windows, GQA 8, T 1", 1, 8, 1, 1, 64, 90, {0, 1, 4, 0, 4, 1, 0, 4},
                   {1, 3, 17, kAllKeys, 0, 17, 3, kAllKeys}, 5, 2});
  cases.push_back({"per-head sinks and windows, GQA 3, T 37, D 128", 2, 6, 2, 37, 128, 50, {0, 1, 4, 4, 1, 0},
                   {3, kAllKeys, 17, 1, 0, 17}, 9, 2});
  // Chunk prefill: 300 rows per group (5 row tiles of 64, the last of 44), from position 0 and later.
  cases.push_back({"prefill from position 0, T 100, GQA 3", 1, 3, 1, 100, 64, 0, {4}, {17}, 0, 1});
  cases.push_back({"prefill chunk of 129 after 700, GQA 4, dense", 1, 8, 2, 129, 128, 700, {0}, {kAllKeys}, 7, 2});
  // 66 rows per group: the last row tile holds 2 rows, fewer than the group's 3 heads.
  cases.push_back({"last row tile shorter than the group, T 22, GQA 3", 1, 3, 1, 22, 64, 30, {1, 0, 4}, {3, 17, 1}, 2, 1});
  return cases;
}

// The GPU result of one case against the CPU kernel's, in f32, with both poisons.
void check_f32_case(const RingCase& c, uint64_t seed, bool positions_on_device = false) {
  const RingInputs in = ring_inputs(c, DType::f32, seed);
  const AttentionPattern pattern = ring_pattern(c);
  const ops::AttentionResult cpu = ops::cached_attention(in.q, in.runs, pattern);
  const Tensor q = mirror(in.q);
  const std::vector<ops::PositionedKeys> runs = runs_on_gpu(in.runs, positions_on_device);
  for_each_poison([&] {
    const ops::AttentionResult gpu = ops::cached_attention(q, runs, pattern);
    REQUIRE(gpu.out.device() == kCuda);
    CHECK(gpu.out.dtype() == DType::f32);
    CHECK(gpu.lse.dtype() == DType::f32);
    const Tensor out = to_cpu(gpu.out), lse = to_cpu(gpu.lse);
    CHECK(all_finite(out));
    CHECK(valid_lse(lse));
    CHECK_CLOSE(out, cpu.out, relative_to_scale(cpu.out, 1e-5));
    CHECK_CLOSE(lse, cpu.lse, relative_to_scale(cpu.lse, 1e-5, 1.0));
  });
}

}  // namespace

TEST_CASE("cached_attention on the GPU: equals the CPU kernel over scrambled ring slots (f32, positions on the host)") {
  uint64_t seed = 300;
  int64_t count = 0;
  for (const RingCase& c : grid_cases()) {
    INFO(c.label << " (B " << c.batch << ", Hq " << c.heads << ", Hkv " << c.kv_heads << ", start " << c.query_start
                 << ", empty slots " << c.empty_slots << ", runs " << c.runs << ")");
    check_f32_case(c, ++seed);
    ++count;
  }
  CHECK(count == 52);
}

TEST_CASE("cached_attention on the GPU: positions on the device (i64 and i32) give the same results") {
  const RingCase c{"decode, GQA 4, sink 4 + window 100, 2 runs", 1, 8, 2, 1, 64, 700, {4}, {100}, 5, 2};
  check_f32_case(c, 41, true);
  // i32 positions on the device.
  const RingInputs in = ring_inputs(c, DType::f32, 42);
  const AttentionPattern pattern = ring_pattern(c);
  const ops::AttentionResult cpu = ops::cached_attention(in.q, in.runs, pattern);
  std::vector<ops::PositionedKeys> runs = runs_on_gpu(in.runs, true);
  for (ops::PositionedKeys& run : runs) run.positions = ops::cast(run.positions, DType::i32);
  const ops::AttentionResult gpu = ops::cached_attention(mirror(in.q), runs, pattern);
  CHECK_CLOSE(to_cpu(gpu.out), cpu.out, relative_to_scale(cpu.out, 1e-5));
}

TEST_CASE("cached_attention on the GPU: rows that see nothing give 0 and lse -inf; empty slots never leak") {
  // Sink 0 + window 0 hides everything. In the mixed case head 1 (sink 2, window 0) sees only
  // positions 0 and 1; the one empty slot holds NaN or inf.
  const RingCase nothing{"nothing visible", 1, 2, 1, 3, 64, 20, {0}, {0}, 4, 1};
  const RingCase mixed{"sink only in one head, decode over 2 runs", 1, 2, 1, 1, 64, 600, {0, 2}, {5, 0}, 6, 2};
  for (double garbage : {1e3, double(NAN), double(INFINITY)}) {
    INFO("empty slots hold " << garbage);
    const RingInputs in = ring_inputs(nothing, DType::f32, 3, garbage);
    const std::vector<ops::PositionedKeys> runs = runs_on_gpu(in.runs);
    for_each_poison([&] {
      const ops::AttentionResult result = ops::cached_attention(mirror(in.q), runs, ring_pattern(nothing));
      for (double x : to_cpu(result.out).to_vector<double>()) CHECK(x == 0.0);
      for (double x : to_cpu(result.lse).to_vector<double>()) CHECK(x == -INFINITY);
    });
    const RingInputs in_mixed = ring_inputs(mixed, DType::f32, 4, garbage);
    const ops::AttentionResult cpu = ops::cached_attention(in_mixed.q, in_mixed.runs, ring_pattern(mixed));
    const std::vector<ops::PositionedKeys> mixed_runs = runs_on_gpu(in_mixed.runs);
    for_each_poison([&] {
      const ops::AttentionResult gpu = ops::cached_attention(mirror(in_mixed.q), mixed_runs, ring_pattern(mixed));
      const Tensor out = to_cpu(gpu.out);
      CHECK(all_finite(out));
      CHECK_CLOSE(out, cpu.out, relative_to_scale(cpu.out, 1e-5));
      CHECK_CLOSE(to_cpu(gpu.lse), cpu.lse, relative_to_scale(cpu.lse, 1e-5, 1.0));
    });
  }
  // No runs at all: every row is empty (the merge kernel alone writes them).
  Generator gen(1);
  AttentionPattern pattern;
  pattern.query_offset = 0;
  for_each_poison([&] {
    const ops::AttentionResult none =
        ops::cached_attention(mirror(random_tensor({1, 2, 3, 64}, DType::f32, gen)), {}, pattern);
    for (double x : to_cpu(none.out).to_vector<double>()) CHECK(x == 0.0);
    for (double x : to_cpu(none.lse).to_vector<double>()) CHECK(x == -INFINITY);
  });
  // No queries: empty results of the right shapes.
  const Tensor keys = mirror(random_tensor({1, 1, 5, 64}, DType::f32, gen));
  const ops::AttentionResult no_queries =
      ops::cached_attention(mirror(random_tensor({1, 2, 0, 64}, DType::f32, gen)),
                            {{keys, keys, Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4}, {5})}}, pattern);
  CHECK(no_queries.out.shape() == Shape{1, 2, 0, 64});
  CHECK(no_queries.lse.shape() == Shape{1, 2, 0});
}

TEST_CASE("cached_attention on the GPU: bf16 and f16 read as they are, computed in f32, out in their dtype") {
  const std::vector<RingCase> cases = {
      {"decode, GQA 4, sink 4 + window 300, 2 runs", 2, 8, 2, 1, 128, 1500, {4}, {300}, 9, 2},
      {"prefill T 70, GQA 3, per-head windows", 1, 3, 1, 70, 64, 200, {0, 1, 4}, {17, kAllKeys, 3}, 4, 2},
  };
  uint64_t seed = 500;
  for (const RingCase& c : cases)
    for (DType dtype : {DType::bf16, DType::f16}) {
      INFO(c.label << ", " << dtype_name(dtype));
      const RingInputs in = ring_inputs(c, dtype, ++seed);
      const AttentionPattern pattern = ring_pattern(c);
      const ops::AttentionResult cpu = ops::cached_attention(in.q, in.runs, pattern);
      // The f64 oracle on the rounded inputs: only the kernels' own rounding separates them from it.
      const std::vector<Tensor> oracle = ops::reference::cached_attention(in.q, in.runs, pattern);
      const double cpu_error = relative_error(cpu.out, oracle[0]);
      const std::vector<ops::PositionedKeys> runs = runs_on_gpu(in.runs);
      for_each_poison([&] {
        const ops::AttentionResult gpu = ops::cached_attention(mirror(in.q), runs, pattern);
        REQUIRE(gpu.out.dtype() == dtype);
        CHECK(gpu.lse.dtype() == DType::f32);
        const Tensor out = to_cpu(gpu.out);
        CHECK(all_finite(out));
        // One rounding to the output dtype apart: at most one ulp of the largest value (2^-7 of it
        // for bf16, 2^-10 for f16).
        const double ulp = dtype == DType::bf16 ? 1.0 / 128 : 1.0 / 1024;
        CHECK_CLOSE(out, cpu.out, (Tolerance{ulp * largest_magnitude(cpu.out), 0}));
        CHECK_CLOSE(to_cpu(gpu.lse), cpu.lse, relative_to_scale(cpu.lse, 1e-5, 1.0));
        const double error = relative_error(out, oracle[0]);
        INFO("GPU error " << error << " against the f64 oracle, the CPU kernel's " << cpu_error);
        CHECK(error <= 2 * cpu_error + 1e-4);
      });
    }
}

TEST_CASE("cached_attention on the GPU: strided key views and two runs with identical bits") {
  // A cache's filled prefix as a view of a longer buffer (slot stride of the full buffer), and
  // keys whose rows are not contiguous (copied once by the op).
  const RingCase c{"decode, GQA 4, sink 1 + window 17", 1, 8, 2, 1, 64, 900, {1}, {17}, 3, 1};
  const RingInputs in = ring_inputs(c, DType::f32, 77);
  const AttentionPattern pattern = ring_pattern(c);
  const ops::AttentionResult cpu = ops::cached_attention(in.q, in.runs, pattern);
  const ops::PositionedKeys& run = in.runs[0];
  const int64_t S = run.keys.size(2);
  // Keys in a buffer twice as long (only the first S slots filled), values with rows of stride 2.
  Tensor long_keys = zeros({1, 2, 2 * S, 64}, DType::f32);
  ops::copy_(views::slice(long_keys, 2, 0, S), run.keys);
  const std::vector<ops::PositionedKeys> strided = {
      {views::slice(mirror(long_keys), 2, 0, S), mirror(noncontiguous(run.values)), run.positions}};
  const Tensor q = mirror(in.q);
  const ops::AttentionResult first = ops::cached_attention(q, strided, pattern);
  const ops::AttentionResult second = ops::cached_attention(q, strided, pattern);
  CHECK_CLOSE(to_cpu(first.out), cpu.out, relative_to_scale(cpu.out, 1e-5));
  CHECK(exactly_equal(to_cpu(first.out), to_cpu(second.out)));
  CHECK(exactly_equal(to_cpu(first.lse), to_cpu(second.lse)));
}

TEST_CASE("cached_attention on the GPU: f64, head_dim > 128 and keys on another device are clear errors") {
  Generator gen(2);
  AttentionPattern pattern;
  pattern.query_offset = 4;
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, -1, 3}, {5});
  const Tensor q64 = mirror(random_tensor({1, 2, 1, 8}, DType::f64, gen));
  const Tensor k64 = mirror(random_tensor({1, 1, 5, 8}, DType::f64, gen));
  CHECK_THROWS_WITH_AS(ops::cached_attention(q64, {{k64, k64, positions}}, pattern),
                       doctest::Contains("f64 runs on the CPU only"), Error);
  const Tensor wide_q = mirror(random_tensor({1, 2, 1, 160}, DType::f32, gen));
  const Tensor wide_k = mirror(random_tensor({1, 1, 5, 160}, DType::f32, gen));
  CHECK_THROWS_WITH_AS(ops::cached_attention(wide_q, {{wide_k, wide_k, positions}}, pattern),
                       doctest::Contains("head_dim up to 128"), Error);
  const Tensor q = mirror(random_tensor({1, 2, 1, 8}, DType::f32, gen));
  const Tensor host_keys = random_tensor({1, 1, 5, 8}, DType::f32, gen);
  CHECK_THROWS_WITH_AS(ops::cached_attention(q, {{host_keys, host_keys, positions}}, pattern),
                       doctest::Contains("cached_attention"), Error);
  // Positions on the GPU with q and keys on the CPU: only the other way round is accepted.
  CHECK_THROWS_WITH_AS(ops::cached_attention(to_cpu(q), {{host_keys, host_keys, mirror(positions)}}, pattern),
                       doctest::Contains("run 0 positions is on cuda"), Error);
}
