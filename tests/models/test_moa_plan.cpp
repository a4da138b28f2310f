// MoA plans (models/sparse/moa_plan.h): the elastic rule table of sparse-attention.md §1.2, the
// exact densities against the attention kernel's own mask predicate, resolution to per-head
// sinks and windows, the plan file and the uniform StreamingLLM baseline.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "models/sparse/moa_plan.h"
#include "ops/attention_pattern.h"
#include "scratch_dir.h"
#include "tensor/rng.h"

using namespace lamina;
using namespace lamina::sparse;

namespace {

// Allowed (query, key) pairs of one head over a causal sequence, counted by the kernels' own
// `allowed` predicate, key by key: an oracle that shares nothing with head_allowed_count.
int64_t brute_force_pairs(int64_t sink, int64_t window, int64_t length) {
  const ResolvedAttentionPattern pattern(AttentionPattern::sink_window(sink, window), 1, 1, length, length);
  int64_t pairs = 0;
  for (int64_t i = 0; i < length; ++i)
    for (int64_t j = 0; j < length; ++j) pairs += pattern.allowed(0, 0, i, j) ? 1 : 0;
  return pairs;
}

}  // namespace

TEST_CASE("moa elastic rules reproduce the span table of the spec (section 1.2)") {
  struct Row {
    double alpha, beta;
    int64_t spans[4];  // at N = 2048, 4096, 8192, 16384
  };
  const Row table[] = {
      {2048, 0, {2048, 2048, 2048, 2048}},
      {0, 0.25, {512, 1024, 2048, 4096}},
      {4096, 0.125, {2048, 4096, 5120, 6144}},
      {-2048, 0.5, {0, 0, 2048, 6144}},
  };
  const int64_t lengths[4] = {2048, 4096, 8192, 16384};
  for (const Row& row : table)
    for (int n = 0; n < 4; ++n) {
      const ElasticRule rule{row.alpha, row.beta};
      INFO("alpha " << row.alpha << " beta " << row.beta << " N " << lengths[n]);
      CHECK(rule.span(lengths[n]) == row.spans[n]);
      // The KV-cache density is S / N wherever the span holds the sink (the table's column).
      if (row.spans[n] >= kMoaSink)
        CHECK(double(head_allowed_count(rule.sink, rule.window(lengths[n]), lengths[n], DensityMeasure::kv_cache)) /
                  double(lengths[n]) ==
              doctest::Approx(double(row.spans[n]) / double(lengths[n])).epsilon(1e-15));
    }
  // The table's densities, read from it: (4096, 0.125) at 8k is 0.625, (-2048, 0.5) at 16k 0.375.
  CHECK(double(ElasticRule{4096, 0.125}.span(8192)) / 8192 == 0.625);
  CHECK(double(ElasticRule{-2048, 0.5}.span(16384)) / 16384 == 0.375);

  // Window = span - sink; a span that covers the input is dense; a span below the sink keeps
  // the sink with no window (the spec's rule, section 7).
  CHECK(ElasticRule{2048, 0}.window(2048) == kAllKeys);
  CHECK(ElasticRule{2048, 0}.window(4096) == 2048 - 64);
  CHECK(ElasticRule{-2048, 0.5}.window(4096) == 0);
  CHECK(head_allowed_count(64, 0, 4096, DensityMeasure::kv_cache) == 64);
  CHECK(ElasticRule{0, 0.25}.window(2048) == 512 - 64);
  // Spans round to the nearest key: 0.3 x 10 = 3.0000000000000004 must not become 4 or 2.
  CHECK(ElasticRule{0, 0.3, 0}.span(10) == 3);
  CHECK(ElasticRule{0.4, 0, 0}.span(10) == 0);
}

TEST_CASE("moa head densities equal the mask predicate counted pair by pair") {
  Generator generator(5);
  const std::vector<int64_t> sinks{0, 1, 4, 64, 200};
  const std::vector<int64_t> windows{0, 1, 3, 17, 64, 100, 150, kAllKeys};
  for (int64_t length : {1, 2, 7, 64, 65, 129}) {
    CHECK(dense_count(length, DensityMeasure::attention_pairs) == length * (length + 1) / 2);
    for (int64_t sink : sinks)
      for (int64_t window : windows) {
        INFO("sink " << sink << " window " << window << " length " << length);
        CHECK(head_allowed_count(sink, window, length, DensityMeasure::attention_pairs) ==
              brute_force_pairs(sink, window, length));
        // The cache keeps the keys the last query may see.
        const ResolvedAttentionPattern pattern(AttentionPattern::sink_window(sink, window), 1, 1, length, length);
        int64_t last_row = 0;
        for (int64_t j = 0; j < length; ++j) last_row += pattern.allowed(0, 0, length - 1, j) ? 1 : 0;
        CHECK(head_allowed_count(sink, window, length, DensityMeasure::kv_cache) == last_row);
      }
  }
}

TEST_CASE("moa plans resolve per head and report the exact average density") {
  // Two layers of three heads with different rules, at a length where each differs.
  const std::vector<std::vector<ElasticRule>> rules{
      {{40, 0, 8}, {0, 0.5, 8}, {-100, 1, 4}},
      {{1000, 0, 8}, {10, 0.125, 2}, {0, 0, 3}},
  };
  const MoaPlan plan(rules);
  const int64_t length = 90;
  const llama::SparseAttention resolved = plan.resolve(length);
  REQUIRE(resolved.sinks.size() == 2);
  REQUIRE(resolved.windows.size() == 2);
  const std::vector<int64_t> expected_windows[2] = {{32, 45 - 8, 0}, {kAllKeys, 21 - 2, 0}};
  int64_t allowed = 0;
  for (int64_t layer = 0; layer < 2; ++layer)
    for (int64_t head = 0; head < 3; ++head) {
      INFO("layer " << layer << " head " << head);
      CHECK(resolved.sinks[size_t(layer)][size_t(head)] == rules[size_t(layer)][size_t(head)].sink);
      CHECK(resolved.windows[size_t(layer)][size_t(head)] == expected_windows[layer][size_t(head)]);
      allowed += brute_force_pairs(resolved.sinks[size_t(layer)][size_t(head)],
                                   resolved.windows[size_t(layer)][size_t(head)], length);
    }
  CHECK(plan.density(length) == double(allowed) / (6.0 * double(length * (length + 1) / 2)));
  // A dense plan has density 1 at any length; the density grows with the length for the late
  // grower (-100, 1).
  CHECK(MoaPlan({{{0, 1}}}).density(500) == 1.0);
  CHECK(MoaPlan({{{-100, 1, 4}}}).density(300) > MoaPlan({{{-100, 1, 4}}}).density(120));
}

TEST_CASE("moa plan files round-trip and bad ones are refused with the place named") {
  testing::ScratchDir dir("moa-plan");
  const MoaPlan plan({{{2048, 0.25, 64}, {-2048, 1, 0}}, {{0.5, 0.125, 64}, {8192, 0, 16}}});
  json::Object extra{{"density", json::Value(0.5)}};
  plan.write(dir / "plan.json", extra);
  const MoaPlan back = MoaPlan::read(dir / "plan.json");
  CHECK(back.rules() == plan.rules());
  CHECK(json::parse_file(dir / "plan.json").at("density").as_double() == 0.5);

  const auto refuse = [&](const std::string& text, const std::string& expected) {
    std::ofstream(dir / "bad.json") << text;
    try {
      MoaPlan::read(dir / "bad.json");
      FAIL("accepted: " << text);
    } catch (const Error& error) {
      INFO(error.what());
      CHECK(std::string(error.what()).find(expected) != std::string::npos);
      CHECK(std::string(error.what()).find("bad.json") != std::string::npos);
    }
  };
  refuse(R"({"format": "other"})", "not a MoA plan");
  refuse(R"({"format": "lamina-moa-plan", "version": 2, "layers": 1, "heads": 1, "rules": [[{"alpha": 0, "beta": 0}]]})",
         "version 2");
  refuse(R"({"format": "lamina-moa-plan", "version": 1, "layers": 1, "heads": 2, "rules": [[{"alpha": 0, "beta": 0}]]})",
         "rules[0] has 1 heads");
  refuse(R"({"format": "lamina-moa-plan", "version": 1, "layers": 1, "heads": 1, "rules": [[{"alpha": 0, "beta": 1.5}]]})",
         "rules[0][0]: beta 1.5");
  refuse(R"({"format": "lamina-moa-plan", "version": 1, "layers": 1, "heads": 1, "rules": [[{"alpha": 0, "beta": 0, "sink": -1}]]})",
         "sink -1");
  refuse(R"({"format": "lamina-moa-plan", "version": 1, "layers": 1, "heads": 1, "rules": [[{"beta": 0}]]})", "alpha");

  llama::LlamaConfig config;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 3;
  CHECK_THROWS_WITH_AS(plan.check_fits(config, "plan.json"), doctest::Contains("2 layers of 2 heads"), Error);
}

TEST_CASE("moa uniform plans take the widest window within the density") {
  for (DensityMeasure measure : {DensityMeasure::attention_pairs, DensityMeasure::kv_cache})
    for (int64_t length : {256, 1000, 4096})
      for (double density : {0.1, 0.25, 0.5, 0.9, 1.0}) {
        INFO("measure " << std::string(density_measure_name(measure)) << " length " << length << " density "
                        << density);
        if (head_allowed_count(64, 0, length, measure) > int64_t(density * double(dense_count(length, measure)))) {
          CHECK_THROWS_AS(uniform_plan(3, 2, density, length, 64, measure), Error);
          continue;
        }
        const MoaPlan plan = uniform_plan(3, 2, density, length, 64, measure);
        CHECK(plan.layers() == 3);
        CHECK(plan.heads() == 2);
        const ElasticRule& rule = plan.rule(0, 0);
        for (int64_t layer = 0; layer < 3; ++layer)
          for (int64_t head = 0; head < 2; ++head) CHECK(plan.rule(layer, head) == rule);
        CHECK(plan.density(length, measure) <= density);
        // One more key of window would break the budget (unless the plan is already dense).
        const int64_t window = rule.window(length);
        if (window != kAllKeys) {
          const double wider = double(head_allowed_count(64, window + 1, length, measure)) /
                               double(dense_count(length, measure));
          CHECK(wider > density);
        } else {
          CHECK(density == 1.0);
        }
      }
  // A budget below the sink alone cannot be met.
  CHECK_THROWS_WITH_AS(uniform_plan(1, 1, 0.01, 512, 64), doctest::Contains("below what the 64 sink keys"), Error);
  CHECK_THROWS_WITH_AS(uniform_plan(1, 1, 0, 512, 64), doctest::Contains("not in (0, 1]"), Error);
}
