// The MoA plan search charged per KV group (plan_search.h, sparse-attention.md §4.3): under GQA a
// KV head's ring holds the widest window among its query heads, so a plan's KV-cache fraction
// (MoaPlan::kv_cache_fraction) is what llama::SparseKvCache really allocates, checked against the
// cache itself; the kv-group charge keeps that fraction within the budget exactly, with at most
// two rules per layer, deterministically and optimally on a case small enough to enumerate; the
// query-head charge still finds the plans it found before the kv-group charge existed; and the
// two charges part ways where one wide query head per group would open every ring.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "model_presets.h"
#include "models/llama/sparse_kv_cache.h"
#include "models/sparse/plan_search.h"
#include "tensor/rng.h"

using namespace lamina;
using namespace lamina::sparse;

namespace {

InfluenceProfile profile_of(std::vector<InfluenceLevel> levels) {
  InfluenceProfile profile;
  profile.layers = levels[0].layers();
  profile.heads = levels[0].heads();
  profile.block = levels[0].block();
  profile.levels = std::move(levels);
  return profile;
}

// One head in four (one per group of 4 query heads, a different one in each group and layer)
// is global: the same influence on every block; the others are local: ten times that on the
// sink block and the diagonal blocks, nothing elsewhere. Charged per query head, every group then
// pays for one wide head and three narrow ones; charged per group, each wide head opens a ring.
bool is_global(int64_t layer, int64_t head) { return head % 4 == (layer + head / 4) % 4; }

InfluenceLevel one_global_per_group(int64_t length, int64_t layers, int64_t heads) {
  InfluenceLevel level(length, layers, heads, 64);
  for (int64_t layer = 0; layer < layers; ++layer)
    for (int64_t head = 0; head < heads; ++head)
      for (int64_t r = 0; r < level.blocks(); ++r)
        for (int64_t c = 0; c <= r; ++c) {
          const bool near = c == 0 || c == r;
          level.set_block_mean(layer, head, r, c, is_global(layer, head) ? 1e-3 : (near ? 1e-2 : 0.0));
        }
  return level;
}

// Random influence, heavy-tailed, ten times larger on the sink and diagonal blocks (the same
// recipe that made the query-head golden plans below with the search as it was before). Signed
// (as `lamina sparse profile --signed` records it), a denser rule can lose more than a sparser one.
InfluenceProfile random_profile(uint64_t seed, int64_t layers, int64_t heads, const std::vector<int64_t>& lengths,
                                int64_t block, bool signed_values = false) {
  Generator generator{seed};
  std::vector<InfluenceLevel> levels;
  for (int64_t length : lengths) {
    InfluenceLevel level(length, layers, heads, block);
    for (int64_t layer = 0; layer < layers; ++layer)
      for (int64_t head = 0; head < heads; ++head)
        for (int64_t r = 0; r < level.blocks(); ++r)
          for (int64_t c = 0; c <= r; ++c) {
            const double x = uniform({1}, signed_values ? -1 : 0, 1, generator, DType::f64).item<double>();
            level.set_block_mean(layer, head, r, c, x * x * x * (c == 0 || c == r ? 10.0 : 1.0));
          }
    levels.push_back(std::move(level));
  }
  return profile_of(std::move(levels));
}

// The budget as the search promises it, in integers: ring slots of every layer and KV head at
// most density x layers x kv_heads x length (the fraction's numerator and denominator).
void check_kv_budget(const MoaPlan& plan, int64_t kv_heads, int64_t length, double density) {
  const int64_t slots = plan.kv_cache_slots(length, kv_heads);
  const int64_t group = plan.heads() / kv_heads;
  const auto budget = int64_t(std::floor(density * double(plan.layers() * plan.heads()) * double(length)));
  INFO("length " << length << ": " << slots << " ring slots x " << group << " query heads, budget " << budget);
  CHECK(slots * group <= budget);
  CHECK(plan.kv_cache_fraction(length, kv_heads) <= density);
}

void check_two_rules_per_layer(const MoaPlan& plan) {
  for (int64_t layer = 0; layer < plan.layers(); ++layer) {
    std::set<std::pair<double, double>> distinct;
    for (int64_t head = 0; head < plan.heads(); ++head)
      distinct.insert({plan.rule(layer, head).alpha, plan.rule(layer, head).beta});
    INFO("layer " << layer);
    CHECK(distinct.size() <= 2);
  }
}

std::vector<size_t> rule_indices(const MoaPlan& plan, const std::vector<ElasticRule>& candidates) {
  std::vector<size_t> indices;
  for (int64_t layer = 0; layer < plan.layers(); ++layer)
    for (int64_t head = 0; head < plan.heads(); ++head)
      for (size_t r = 0; r < candidates.size(); ++r)
        if (candidates[r] == plan.rule(layer, head)) indices.push_back(r);
  return indices;
}

llama::LlamaConfig gqa_config(int64_t layers, int64_t heads, int64_t kv_heads) {
  llama::LlamaConfig config = testing::tiny_llama_config(16);
  config.num_hidden_layers = layers;
  config.num_attention_heads = heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = 4;
  config.hidden_size = heads * 4;
  config.max_position_embeddings = 4096;
  return config;
}

}  // namespace

TEST_CASE("moa kv-cache fraction is what the ring-buffer cache allocates against a dense one") {
  // 2 layers x 8 query heads on 2 KV heads. Layer 0: a group of three short windows and one
  // growing one, and a sink-only group. Layer 1: a dense head beside sink-only ones, and a group
  // whose widest sink (24) and widest window (56) come from different heads.
  const ElasticRule short_window{40, 0, 16}, growing{0, 0.5, 16}, sink_only{-100, 0, 16}, dense{1000, 1, 16};
  const ElasticRule narrow_sink{64, 0, 8}, wide_sink{30, 0, 24};
  const MoaPlan plan({{short_window, short_window, short_window, growing, sink_only, sink_only, sink_only, sink_only},
                      {dense, sink_only, sink_only, sink_only, narrow_sink, wide_sink, wide_sink, wide_sink}});
  const llama::LlamaConfig config = gqa_config(2, 8, 2);

  // By hand at 300: rings of 16 + 134, 16, 300 and 24 + 56 slots over 2 x 2 x 300.
  CHECK(plan.kv_cache_slots(300, 2) == 150 + 16 + 300 + 80);
  CHECK(plan.kv_cache_fraction(300, 2) == 546.0 / 1200.0);
  // The query-head average is smaller: per head 40, 40, 40, 150, 16 x 4, 300, 16 x 3, 64, 30 x 3.
  CHECK(plan.density(300, DensityMeasure::kv_cache) == (270.0 + 64 + 348 + 154) / 4800.0);
  // One KV head per query head: the rings are the heads' own spans, the kv-cache density.
  CHECK(plan.kv_cache_fraction(300, 8) == plan.density(300, DensityMeasure::kv_cache));

  // Lengths where the sinks fill the input, where windows are clipped, and long ones.
  for (int64_t length : {10, 20, 100, 300, 1000}) {
    INFO("length " << length);
    const llama::SparseKvCache cache(config, plan.resolve(length), 2, length);
    const llama::SparseKvCache dense_cache(config, llama::SparseAttention{}, 2, length);
    CHECK(dense_cache.bytes() == 2 * 2 * 2 * 2 * length * 4 * 4);  // K and V, batch, layers, kv heads, f32
    CHECK(double(cache.bytes()) / double(dense_cache.bytes()) == plan.kv_cache_fraction(length, 2));
    int64_t capacities = 0;
    for (int64_t layer = 0; layer < 2; ++layer)
      for (int64_t kv_head = 0; kv_head < 2; ++kv_head) capacities += cache.capacity(layer, kv_head);
    CHECK(capacities == plan.kv_cache_slots(length, 2));
    CHECK(plan.kv_cache_fraction(length, 2) >= plan.density(length, DensityMeasure::kv_cache));
  }

  CHECK_THROWS_WITH_AS(plan.kv_cache_fraction(300, 3), doctest::Contains("do not split into 3 KV heads"), Error);
  CHECK_THROWS_WITH_AS(plan.kv_cache_fraction(300, 0), doctest::Contains("do not split into 0 KV heads"), Error);
}

TEST_CASE("moa search charged per kv group keeps the kv-cache fraction within the budget") {
  const int64_t layers = 4, heads = 8, kv_heads = 2;
  const InfluenceProfile profile =
      profile_of({one_global_per_group(512, layers, heads), one_global_per_group(1024, layers, heads)});
  for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{1024}, std::vector<int64_t>{512, 1024}})
    for (double density : {0.25, 0.4, 0.6, 0.85}) {
      INFO(lengths.size() << " lengths, density " << density);
      const SearchProblem problem = problem_from_profile(profile, lengths, candidate_rules(0.125));
      SearchOptions options;
      options.density = density;
      options.measure = DensityMeasure::kv_cache;
      options.charge = DensityCharge::kv_group;
      options.kv_heads = kv_heads;
      const SearchResult result = search_plan(problem, options);
      check_two_rules_per_layer(result.plan);
      REQUIRE(result.kv_fraction.size() == lengths.size());
      for (size_t n = 0; n < lengths.size(); ++n) {
        check_kv_budget(result.plan, kv_heads, lengths[n], density);
        CHECK(result.kv_fraction[n] == result.plan.kv_cache_fraction(lengths[n], kv_heads));
        CHECK(result.density[n] == result.plan.density(lengths[n], DensityMeasure::kv_cache));
        CHECK(result.loss[n] == doctest::Approx(plan_loss(profile, {lengths[n]}, result.plan)[0]).epsilon(1e-9));
      }
      // Deterministic: the same problem gives the same plan.
      const SearchResult again = search_plan(problem, options);
      CHECK(again.plan.rules() == result.plan.rules());
      CHECK(again.total_loss == result.total_loss);
    }
}

TEST_CASE("moa search charged per kv group finds the optimum of a case small enough to enumerate") {
  // 2 layers x 4 query heads on 2 KV heads, 4 rules, random signed influence at length 128 (so
  // that inside an open group some heads are better off on the sparser rule): against every one
  // of the 4^8 assignments with at most two rules per layer and its rings within the budget.
  const int64_t length = 128, layers = 2, heads = 4, kv_heads = 2, group = 2;
  const InfluenceProfile profile = random_profile(33, layers, heads, {length}, 16, true);
  const std::vector<ElasticRule> rules{{16, 0, 16}, {0, 0.25, 16}, {40, 0.25, 16}, {0, 0.75, 16}};
  const SearchProblem problem = problem_from_profile(profile, {length}, rules);
  for (double density : {0.2, 0.3, 0.45, 0.6, 0.8}) {
    INFO("density " << density);
    SearchOptions options;
    options.density = density;
    options.measure = DensityMeasure::kv_cache;
    options.charge = DensityCharge::kv_group;
    options.kv_heads = kv_heads;
    options.resolution = layers * heads * length;  // one unit per key: the knapsack is exact
    const SearchResult result = search_plan(problem, options);

    const auto budget = int64_t(std::floor(density * double(layers * heads * length)));
    double best = INFINITY;
    for (int64_t code = 0; code < 65536; ++code) {
      int64_t slots = 0;
      double loss = 0;
      bool two_rules = true;
      for (int64_t layer = 0; layer < layers; ++layer) {
        std::set<int64_t> used;
        for (int64_t kv_head = 0; kv_head < kv_heads; ++kv_head) {
          int64_t widest = 0;  // the rules share one sink, so the ring is the widest span
          for (int64_t h = 0; h < group; ++h) {
            const int64_t head = kv_head * group + h;
            const int64_t rule = (code >> (2 * (layer * heads + head))) & 3;
            used.insert(rule);
            const int64_t window = rules[size_t(rule)].window(length);
            const int64_t span = window == kAllKeys ? length : std::min(length, 16 + window);
            widest = std::max(widest, span);
            loss += problem.at(0, layer, head, size_t(rule));
          }
          slots += widest;
        }
        two_rules = two_rules && used.size() <= 2;
      }
      if (two_rules && slots * group <= budget) best = std::min(best, loss);
    }
    REQUIRE(std::isfinite(best));
    CHECK(result.total_loss == doctest::Approx(best).epsilon(1e-12));
    check_kv_budget(result.plan, kv_heads, length, density);
    check_two_rules_per_layer(result.plan);
  }
}

TEST_CASE("moa search charged per query head finds the plans it found before the kv-group charge") {
  // Golden plans (candidate indices, layer-major) recorded from the search as it was before the
  // kv-group charge was added, on random_profile's influence with the grid scaled to 512 and
  // sinks of 16; the second and third need the multiplier for the shorter length.
  const std::vector<ElasticRule> candidates = candidate_rules(512.0 / 8192.0, 16);
  struct Golden {
    uint64_t seed;
    int64_t layers, heads;
    std::vector<int64_t> lengths;
    DensityMeasure measure;
    std::vector<size_t> plan;
  };
  const Golden goldens[] = {
      {1, 3, 6, {512}, DensityMeasure::attention_pairs, {4, 17, 17, 4, 17, 4, 3, 3, 3, 3, 3, 5, 3, 3, 16, 3, 16, 3}},
      {4, 2, 6, {256, 512}, DensityMeasure::attention_pairs, {10, 17, 17, 17, 10, 10, 10, 10, 10, 17, 10, 10}},
      {4, 2, 6, {256, 512}, DensityMeasure::kv_cache, {20, 8, 20, 20, 20, 20, 6, 12, 6, 6, 6, 12}},
  };
  for (const Golden& golden : goldens) {
    INFO("seed " << golden.seed << ", measure " << std::string(density_measure_name(golden.measure)));
    const InfluenceProfile profile = random_profile(golden.seed, golden.layers, golden.heads, golden.lengths, 32);
    const SearchProblem problem = problem_from_profile(profile, golden.lengths, candidates);
    SearchOptions options;
    options.density = 0.5;
    options.measure = golden.measure;
    const SearchResult result = search_plan(problem, options);
    CHECK(rule_indices(result.plan, candidates) == golden.plan);
    CHECK(result.kv_fraction.empty());  // no KV heads given
    if (golden.lengths.size() == 1) CHECK(result.multiplier == 0);
    else CHECK(result.multiplier > 0);

    // Knowing the KV heads only adds the report: the same plan.
    options.kv_heads = 2;
    const SearchResult reported = search_plan(problem, options);
    CHECK(reported.plan.rules() == result.plan.rules());
    REQUIRE(reported.kv_fraction.size() == golden.lengths.size());
    for (size_t n = 0; n < golden.lengths.size(); ++n)
      CHECK(reported.kv_fraction[n] == result.plan.kv_cache_fraction(golden.lengths[n], 2));
  }
}

TEST_CASE("moa search charged per query head overspends the kv cache where the kv-group charge does not") {
  // One global head per group of 4: charged per query head, the global heads get wide rules and
  // every ring is as wide as its global head, so the cache passes the budget; charged per KV
  // group, the plan keeps the cache within it, and picks differently.
  const int64_t length = 1024, layers = 4, heads = 8, kv_heads = 2;
  const InfluenceProfile profile = profile_of({one_global_per_group(length, layers, heads)});
  const SearchProblem problem = problem_from_profile(profile, {length}, candidate_rules(0.125));
  const double density = 0.4;
  SearchOptions options;
  options.density = density;
  options.measure = DensityMeasure::kv_cache;
  options.kv_heads = kv_heads;
  const SearchResult per_query_head = search_plan(problem, options);
  options.charge = DensityCharge::kv_group;
  const SearchResult per_group = search_plan(problem, options);

  INFO("query-head charge: density " << per_query_head.density[0] << ", kv fraction " << per_query_head.kv_fraction[0]
                                     << "; kv-group charge: density " << per_group.density[0] << ", kv fraction "
                                     << per_group.kv_fraction[0]);
  CHECK(per_query_head.density[0] <= density);
  CHECK(per_query_head.kv_fraction[0] > density);
  CHECK(per_group.kv_fraction[0] <= density);
  CHECK(per_group.plan.rules() != per_query_head.plan.rules());
  // The tighter budget costs loss, and the kv-group plan is no denser per head than its rings.
  CHECK(per_group.total_loss > per_query_head.total_loss);
  CHECK(per_group.density[0] <= per_group.kv_fraction[0]);
  // What the cache allocates for each plan, measured on the cache.
  const llama::LlamaConfig config = gqa_config(layers, heads, kv_heads);
  const llama::SparseKvCache dense_cache(config, llama::SparseAttention{}, 1, length);
  for (const SearchResult* result : {&per_query_head, &per_group}) {
    const llama::SparseKvCache cache(config, result->plan.resolve(length), 1, length);
    CHECK(double(cache.bytes()) / double(dense_cache.bytes()) == result->kv_fraction[0]);
  }

  // With one KV head per query head the two charges are the same budget.
  options.kv_heads = heads;
  const SearchResult mha_group = search_plan(problem, options);
  options.charge = DensityCharge::query_head;
  const SearchResult mha_head = search_plan(problem, options);
  CHECK(mha_group.total_loss == doctest::Approx(mha_head.total_loss).epsilon(1e-12));
  CHECK(mha_group.kv_fraction[0] == mha_group.density[0]);
}

TEST_CASE("moa search charged per kv group refuses what it cannot charge") {
  const InfluenceProfile profile = profile_of({one_global_per_group(512, 1, 8)});
  const SearchProblem problem = problem_from_profile(profile, {512}, candidate_rules(0.0625));
  SearchOptions options;
  options.charge = DensityCharge::kv_group;
  options.measure = DensityMeasure::kv_cache;
  CHECK_THROWS_WITH_AS(search_plan(problem, options), doctest::Contains("needs the model's KV heads"), Error);
  options.kv_heads = 3;
  CHECK_THROWS_WITH_AS(search_plan(problem, options), doctest::Contains("do not split into 3 KV heads"), Error);
  options.kv_heads = 2;
  options.measure = DensityMeasure::attention_pairs;
  CHECK_THROWS_WITH_AS(search_plan(problem, options), doctest::Contains("must be kv-cache, not pairs"), Error);
  options.measure = DensityMeasure::kv_cache;
  options.density = 0.05;  // a 64-key sink is 0.125 of 512 keys
  CHECK_THROWS_WITH_AS(search_plan(problem, options), doctest::Contains("no plan fits density 0.05"), Error);

  CHECK(density_charge_from_name("kv-group", "test") == DensityCharge::kv_group);
  CHECK(std::string(density_charge_name(DensityCharge::query_head)) == "query-head");
  CHECK_THROWS_WITH_AS(density_charge_from_name("per-head", "--charge"),
                       doctest::Contains("--charge: unknown density charge 'per-head'"), Error);
}
