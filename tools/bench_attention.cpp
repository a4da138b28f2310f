// `lamina bench attention`: the fused attention (ops::flash_attention) against the
// materialising ops::attention, forward and backward, on the CPU. One JSON line per case.
//
// Cases: dense causal at T = 1K, 2K, 4K (8K, 16K with --long), each path timed; then at T = 4K
// (--sparse-length) sink 64 + window and 64 x 64 block-sparse patterns at 50%, 25% and 10%
// density, fused only. Shapes: batch 1, 8 query heads sharing 4 kv heads, D = 64, f32.
//
// GFLOP/s counts the useful work of the allowed (query, key) pairs only: 4 D flops per pair in
// the forward (Q K^T and P V), 10 D in the backward (five products), so a path that computes
// masked-out entries gets no credit for them. Density = allowed pairs / causal pairs;
// visited_tile_share = the kernel's visited 64 x 64 tiles / those of dense causal attention,
// the bound on the speed-up that tile skipping can give.
// Memory: peak_tensor_bytes is the allocator's high-water mark above the inputs during one
// forward + backward (what bench train reports). The materialising kernel also holds
// Tq x Tk score buffers outside the allocator (one per thread in the forward, two in the
// backward): scratch_bytes states them, so its footprint is their sum.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "ops/ops.h"
#include "tensor/parallel.h"
#include "tensor/storage.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

constexpr int64_t kHeads = 8, kKvHeads = 4, kHeadDim = 64, kBatch = 1;

struct AttentionInputs {
  Tensor q, k, v, grad_out;
};

AttentionInputs make_inputs(int64_t tokens) {
  Generator gen(1);
  return {uniform({kBatch, kHeads, tokens, kHeadDim}, -1, 1, gen), uniform({kBatch, kKvHeads, tokens, kHeadDim}, -1, 1, gen),
          uniform({kBatch, kKvHeads, tokens, kHeadDim}, -1, 1, gen), uniform({kBatch, kHeads, tokens, kHeadDim}, -1, 1, gen)};
}

struct PathResult {
  double forward_seconds = 0, backward_seconds = 0;
  int64_t peak_bytes = 0;
};

// Times forward and backward separately (the backward timed alone, after an untimed forward
// that produces its out and lse) and records the allocator peak of one forward + backward.
template <typename Forward, typename Backward>
PathResult run_path(const Forward& forward, const Backward& backward, double min_seconds) {
  PathResult result;
  result.forward_seconds = measure([&] { forward(); }, min_seconds).median_seconds;
  ops::AttentionResult saved;
  result.backward_seconds =
      measure_after([&] { saved = forward(); }, [&] { backward(saved); }, min_seconds).median_seconds;
  saved = {};
  const int64_t before = memory_stats(Device::cpu()).live_bytes;
  reset_peak_memory(Device::cpu());
  {
    const ops::AttentionResult once = forward();
    backward(once);
  }
  result.peak_bytes = memory_stats(Device::cpu()).peak_bytes - before;
  return result;
}

double pair_count(const AttentionPattern& pattern, int64_t tokens) {
  const ResolvedAttentionPattern resolved(pattern, kBatch, kHeads, tokens, tokens);
  return double(count_attention_tiles(resolved, 64, 64, true).allowed_pairs);
}

// Visited 64 x 64 tiles: what the kernel's time follows (partial tiles cost as much as full ones).
double visited_tiles(const AttentionPattern& pattern, int64_t tokens) {
  const ResolvedAttentionPattern resolved(pattern, kBatch, kHeads, tokens, tokens);
  return double(count_attention_tiles(resolved, 64, 64).visited);
}

void add_path(JsonLine& line, const std::string& prefix, const PathResult& path, double pairs) {
  line.add(prefix + "_forward_ms", path.forward_seconds * 1e3)
      .add(prefix + "_backward_ms", path.backward_seconds * 1e3)
      .add(prefix + "_forward_gflops", 4.0 * kHeadDim * pairs / path.forward_seconds / 1e9)
      .add(prefix + "_backward_gflops", 10.0 * kHeadDim * pairs / path.backward_seconds / 1e9)
      .add(prefix + "_peak_tensor_bytes", path.peak_bytes);
}

PathResult fused_path(const AttentionInputs& in, const AttentionPattern& pattern, double min_seconds) {
  return run_path([&] { return ops::flash_attention(in.q, in.k, in.v, pattern); },
                  [&](const ops::AttentionResult& saved) {
                    ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, saved.out, saved.lse, pattern);
                  },
                  min_seconds);
}

// A causal 64 x 64 block layout with every diagonal block on and random blocks below it, as
// many as give `density` of the causal blocks (diagonal blocks included).
Tensor random_block_layout(int64_t tokens, double density, uint64_t seed) {
  const int64_t blocks = tokens / 64;
  std::vector<uint8_t> bits(size_t(kHeads * blocks * blocks), 0);
  std::mt19937_64 rng(seed);
  for (int64_t h = 0; h < kHeads; ++h) {
    std::vector<int64_t> below;
    for (int64_t r = 0; r < blocks; ++r) {
      bits[size_t((h * blocks + r) * blocks + r)] = 1;
      for (int64_t c = 0; c < r; ++c) below.push_back(r * blocks + c);
    }
    std::shuffle(below.begin(), below.end(), rng);
    const int64_t wanted = std::max<int64_t>(0, int64_t(std::llround(density * double(blocks * (blocks + 1) / 2))) - blocks);
    for (int64_t n = 0; n < std::min<int64_t>(wanted, int64_t(below.size())); ++n)
      bits[size_t(h * blocks * blocks + below[size_t(n)])] = 1;
  }
  return Tensor::from_vector(bits, {kHeads, blocks, blocks}, DType::boolean);
}

// Allowed pairs of causal sink + window over T tokens: row i sees min(i + 1, window) keys of its
// window plus the sinks that lie before that window.
double sink_window_pairs(int64_t tokens, int64_t sink, int64_t window) {
  double pairs = 0;
  for (int64_t i = 0; i < tokens; ++i) {
    const int64_t in_window = std::min(i + 1, window);
    pairs += double(in_window + std::min(sink, i + 1 - in_window));
  }
  return pairs;
}

// The smallest window whose share of the causal pairs reaches `density` (bisection).
int64_t window_for_density(int64_t tokens, int64_t sink, double density) {
  const double wanted = density * double(tokens) * double(tokens + 1) / 2;
  int64_t low = 0, high = tokens;
  while (low < high) {
    const int64_t middle = (low + high) / 2;
    if (sink_window_pairs(tokens, sink, middle) >= wanted) high = middle; else low = middle + 1;
  }
  return low;
}

}  // namespace

int run_bench_attention(const Arguments& args) {
  FlagParser parser("lamina bench attention",
                    "fused (flash) vs materialising attention: forward/backward time, GFLOP/s, peak memory, "
                    "and the fused kernel at 50/25/10% density");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_option("sparse-length", "T", "sequence length of the density cases", "4096");
  parser.add_switch("long", "also T = 8K and 16K (the materialising path only up to 8K)");
  parser.add_switch("quick", "shorter timing runs (noisier)");
  if (!parser.parse(args)) return 0;
  const int threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  ThreadCountGuard guard(threads);
  const double min_seconds = parser.is_set("quick") ? 0.2 : 1.0;
  const int64_t sparse_length = parser.int_value("sparse-length", 4096, 256, 1 << 17) / 64 * 64;

  std::vector<int64_t> lengths = {1024, 2048, 4096};
  if (parser.is_set("long")) lengths.insert(lengths.end(), {8192, 16384});
  for (int64_t tokens : lengths) {
    std::fprintf(stderr, "bench attention: dense causal, T = %lld\n", static_cast<long long>(tokens));
    const AttentionInputs in = make_inputs(tokens);
    const AttentionPattern causal = AttentionPattern::dense();
    const double pairs = pair_count(causal, tokens);
    const PathResult fused = fused_path(in, causal, min_seconds);
    JsonLine line;
    line.add("case", "dense_causal").add("tokens", tokens).add("heads", kHeads).add("kv_heads", kKvHeads)
        .add("head_dim", kHeadDim).add("threads", threads);
    add_path(line, "fused", fused, pairs);
    if (tokens <= 8192) {
      AttentionOptions options;
      options.causal = true;
      const PathResult dense = run_path(
          [&] { return ops::attention(in.q, in.k, in.v, options); },
          [&](const ops::AttentionResult& saved) {
            ops::attention_backward(in.grad_out, in.q, in.k, in.v, saved.out, saved.lse, options);
          },
          min_seconds);
      add_path(line, "materialised", dense, pairs);
      const int64_t busy_threads = std::min<int64_t>(threads, kBatch * kKvHeads);
      line.add("materialised_scratch_bytes", busy_threads * 2 * tokens * tokens * int64_t(sizeof(float)));
      line.add("speedup_forward_backward", (dense.forward_seconds + dense.backward_seconds) /
                                               (fused.forward_seconds + fused.backward_seconds));
    }
    line.print();
  }

  // Density cases: sink 64 + the window that keeps the wanted share of the causal pairs.
  const int64_t tokens = sparse_length;
  const AttentionInputs in = make_inputs(tokens);
  const double dense_pairs = pair_count(AttentionPattern::dense(), tokens);
  const double dense_tiles = visited_tiles(AttentionPattern::dense(), tokens);
  const PathResult dense = fused_path(in, AttentionPattern::dense(), min_seconds);
  const double dense_seconds = dense.forward_seconds + dense.backward_seconds;
  for (double density : {0.5, 0.25, 0.1}) {
    const int64_t window = window_for_density(tokens, 64, density);
    const std::pair<std::string, AttentionPattern> patterns[] = {
        {"sink_window", AttentionPattern::sink_window(64, window)},
        {"block_sparse", AttentionPattern::block_sparse(random_block_layout(tokens, density, 7), 64, 64)},
    };
    for (const auto& [name, pattern] : patterns) {
      std::fprintf(stderr, "bench attention: %s at %.0f%% density, T = %lld\n", name.c_str(), density * 100,
                   static_cast<long long>(tokens));
      const double pairs = pair_count(pattern, tokens);
      const PathResult sparse = fused_path(in, pattern, min_seconds);
      JsonLine line;
      line.add("case", name).add("tokens", tokens).add("target_density", density).add("density", pairs / dense_pairs)
          .add("visited_tile_share", visited_tiles(pattern, tokens) / dense_tiles);
      if (name == "sink_window") line.add("sink", int64_t(64)).add("window", window);
      add_path(line, "fused", sparse, pairs);
      line.add("fused_dense_forward_backward_ms", dense_seconds * 1e3)
          .add("speedup_vs_fused_dense", dense_seconds / (sparse.forward_seconds + sparse.backward_seconds));
      line.print();
    }
  }
  return 0;
}

}  // namespace lamina::cli
