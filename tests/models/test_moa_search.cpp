// MoA plan search (models/sparse/plan_search.h) on synthetic influence: the density budget holds
// exactly (on integer key counts) at every length, no layer uses more than two rules, the result
// is deterministic and optimal on a case small enough to enumerate, and on heads built to be
// local or global it loses far less than the uniform StreamingLLM plan of the same density.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "models/sparse/plan_search.h"
#include "tensor/rng.h"

using namespace lamina;
using namespace lamina::sparse;

namespace {

// Whether (layer, head) is a global head in the synthetic profiles below.
bool is_global(int64_t layer, int64_t head) { return (layer + head) % 3 == 0; }

// Local heads: all their influence is on the diagonal blocks (keys less than 64 back) and on the
// sink block, ten times a global head's, which has the same influence on every block.
InfluenceLevel local_and_global_level(int64_t length, int64_t layers, int64_t heads) {
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

InfluenceProfile profile_of(std::vector<InfluenceLevel> levels) {
  InfluenceProfile profile;
  profile.layers = levels[0].layers();
  profile.heads = levels[0].heads();
  profile.block = levels[0].block();
  profile.levels = std::move(levels);
  return profile;
}

// The plan's allowed keys against the budget, in integers, as the search promises.
void check_budget(const MoaPlan& plan, int64_t length, double density, DensityMeasure measure) {
  int64_t allowed = 0;
  for (int64_t layer = 0; layer < plan.layers(); ++layer)
    for (int64_t head = 0; head < plan.heads(); ++head) {
      const ElasticRule& rule = plan.rule(layer, head);
      allowed += head_allowed_count(rule.sink, rule.window(length), length, measure);
    }
  const auto budget =
      int64_t(std::floor(density * double(plan.layers() * plan.heads()) * double(dense_count(length, measure))));
  INFO("length " << length << ": " << allowed << " keys allowed, budget " << budget);
  CHECK(allowed <= budget);
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

}  // namespace

TEST_CASE("moa candidate rules are the spec's 6 x 9 grid, scaled") {
  const std::vector<ElasticRule> grid = candidate_rules();
  REQUIRE(grid.size() == 54);
  CHECK(grid.front() == ElasticRule{-2048, 0, 64});
  CHECK(grid[9] == ElasticRule{0, 0, 64});
  CHECK(grid.back() == ElasticRule{8192, 1, 64});
  CHECK(grid[13].beta == 0.5);
  const std::vector<ElasticRule> short_grid = candidate_rules(0.125, 16);
  CHECK(short_grid.front() == ElasticRule{-256, 0, 16});
  CHECK(short_grid.back() == ElasticRule{1024, 1, 16});
}

TEST_CASE("moa search keeps the budget and two rules per layer, and beats the uniform plan") {
  const int64_t length = 1024, layers = 4, heads = 6;
  const InfluenceProfile profile = profile_of({local_and_global_level(length, layers, heads)});
  for (DensityMeasure measure : {DensityMeasure::attention_pairs, DensityMeasure::kv_cache})
    for (double density : {0.3, 0.5, 0.7}) {
      INFO("measure " << std::string(density_measure_name(measure)) << " density " << density);
      const SearchProblem problem = problem_from_profile(profile, {length}, candidate_rules(0.125));
      SearchOptions options;
      options.density = density;
      options.measure = measure;
      const SearchResult result = search_plan(problem, options);
      check_budget(result.plan, length, density, measure);
      check_two_rules_per_layer(result.plan);
      CHECK(result.density[0] <= density);
      CHECK(result.density[0] == result.plan.density(length, measure));
      // The reported loss is the profile's loss of the plan.
      CHECK(result.loss[0] == doctest::Approx(plan_loss(profile, {length}, result.plan)[0]).epsilon(1e-9));

      // Deterministic: the same problem gives the same plan.
      const SearchResult again = search_plan(problem, options);
      CHECK(again.plan.rules() == result.plan.rules());
      CHECK(again.total_loss == result.total_loss);

      // The uniform plan of the same density cuts every global head as much as every local one.
      const MoaPlan uniform = uniform_plan(layers, heads, density, length, kMoaSink, measure);
      const double uniform_loss = plan_loss(profile, {length}, uniform)[0];
      INFO("moa loss " << result.loss[0] << ", uniform loss " << uniform_loss);
      CHECK(result.loss[0] < uniform_loss);
      // Once the local heads' short spans leave room, by far: they need 0.23 of the pairs
      // (0.125 of the cache) each, the global heads get the rest.
      if (density >= 0.5) CHECK(result.loss[0] < 0.5 * uniform_loss);
      // The global heads got more keys than the local ones, on average.
      double global_span = 0, local_span = 0;
      int64_t global_count = 0, local_count = 0;
      for (int64_t layer = 0; layer < layers; ++layer)
        for (int64_t head = 0; head < heads; ++head) {
          const double span = double(result.plan.rule(layer, head).span(length));
          (is_global(layer, head) ? global_span : local_span) += span;
          ++(is_global(layer, head) ? global_count : local_count);
        }
      CHECK(global_span / double(global_count) > local_span / double(local_count));
    }
}

TEST_CASE("moa search finds the optimum of a case small enough to enumerate") {
  // 2 layers x 3 heads, 4 candidate rules, random positive influence at length 128.
  const int64_t length = 128, layers = 2, heads = 3;
  Generator generator(21);
  InfluenceLevel level(length, layers, heads, 16);
  for (int64_t layer = 0; layer < layers; ++layer)
    for (int64_t head = 0; head < heads; ++head)
      for (int64_t r = 0; r < level.blocks(); ++r)
        for (int64_t c = 0; c <= r; ++c)
          level.set_block_mean(layer, head, r, c, uniform({1}, 0, 1, generator, DType::f64).item<double>());
  const InfluenceProfile profile = profile_of({level});
  const std::vector<ElasticRule> rules{{16, 0, 16}, {0, 0.25, 16}, {32, 0.25, 16}, {0, 0.75, 16}};
  const SearchProblem problem = problem_from_profile(profile, {length}, rules);
  const int64_t dense = dense_count(length, DensityMeasure::attention_pairs);
  for (double density : {0.3, 0.45, 0.6, 0.8}) {
    INFO("density " << density);
    SearchOptions options;
    options.density = density;
    options.resolution = layers * heads * dense;  // one unit per key pair: the knapsack is exact
    const SearchResult result = search_plan(problem, options);

    const auto budget = int64_t(std::floor(density * double(layers * heads * dense)));
    double best = INFINITY;
    // Every assignment of 4 rules to 6 heads with at most two distinct rules per layer.
    for (int64_t code = 0; code < 4096; ++code) {
      int64_t allowed = 0;
      double loss = 0;
      bool two_rules = true;
      for (int64_t layer = 0; layer < layers; ++layer) {
        std::set<int64_t> used;
        for (int64_t head = 0; head < heads; ++head) {
          const int64_t rule = (code >> (2 * (layer * heads + head))) & 3;
          used.insert(rule);
          allowed += head_allowed_count(16, rules[size_t(rule)].window(length), length,
                                        DensityMeasure::attention_pairs);
          loss += problem.at(0, layer, head, size_t(rule));
        }
        two_rules = two_rules && used.size() <= 2;
      }
      if (two_rules && allowed <= budget) best = std::min(best, loss);
    }
    REQUIRE(std::isfinite(best));
    CHECK(result.total_loss == doctest::Approx(best).epsilon(1e-12));
    check_two_rules_per_layer(result.plan);
  }
}

TEST_CASE("moa search over several lengths keeps the budget at each of them") {
  const int64_t layers = 3, heads = 4;
  const InfluenceProfile profile =
      profile_of({local_and_global_level(512, layers, heads), local_and_global_level(1024, layers, heads)});
  const SearchProblem problem = problem_from_profile(profile, {512, 1024}, candidate_rules(0.125));
  for (double density : {0.35, 0.5, 0.75}) {
    INFO("density " << density);
    SearchOptions options;
    options.density = density;
    const SearchResult result = search_plan(problem, options);
    REQUIRE(result.density.size() == 2);
    for (int64_t length : {512, 1024}) {
      int64_t allowed = 0;
      for (int64_t layer = 0; layer < layers; ++layer)
        for (int64_t head = 0; head < heads; ++head) {
          const ElasticRule& rule = result.plan.rule(layer, head);
          allowed += head_allowed_count(rule.sink, rule.window(length), length, DensityMeasure::attention_pairs);
        }
      CHECK(allowed <= int64_t(std::floor(density * double(layers * heads) *
                                          double(dense_count(length, DensityMeasure::attention_pairs)))));
    }
    check_two_rules_per_layer(result.plan);
    CHECK(result.total_loss == doctest::Approx(result.loss[0] + result.loss[1]));
  }
}

TEST_CASE("moa search refuses a budget below the sink alone and malformed problems") {
  const InfluenceProfile profile = profile_of({local_and_global_level(1024, 1, 2)});
  const SearchProblem problem = problem_from_profile(profile, {1024}, candidate_rules(0.125));
  SearchOptions options;
  options.density = 0.05;  // the 64 sink keys alone take 0.12 at 1024
  CHECK_THROWS_WITH_AS(search_plan(problem, options), doctest::Contains("no plan fits density 0.05"), Error);
  options.density = 1.5;
  CHECK_THROWS_WITH_AS(search_plan(problem, options), doctest::Contains("not in (0, 1]"), Error);
  CHECK_THROWS_WITH_AS(problem_from_profile(profile, {2048}, candidate_rules()), doctest::Contains("no length level 2048"),
                       Error);
}
