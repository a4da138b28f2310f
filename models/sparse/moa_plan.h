// MoA plans (sparse-attention.md §1.2, §7): every query head of every layer gets an elastic rule,
// a span that grows with the input length N,
//
//   S(N) = clip(round(alpha + beta * N), 0, N)
//
// kept as the first `sink` keys (64 by default, MoA's sink block) plus a sliding window of
// max(0, S - sink) keys. When the span is smaller than the sink the sink stays and the window is
// empty (our reading of what the paper leaves open, §7); a span that reaches N is dense.
// resolve(N) turns a plan into the llama::SparseAttention the model runs for one length.
//
// Plan file (JSON, written by `lamina sparse plan|uniform`):
//   {
//     "format": "lamina-moa-plan", "version": 1,
//     "layers": L, "heads": H,                 // query heads per layer
//     "rules": [                               // [L][H]
//       [ {"alpha": 2048, "beta": 0.25, "sink": 64}, ... ],
//       ...
//     ],
//     ... any other members (what made the plan: "density", "lengths", "method", "charge";
//         what it costs: "plan_density", "kv_cache_fraction") are kept for the reader and
//         ignored here.
//   }
// "sink" may be left out (64). alpha is any finite number, beta in [0, 1], sink >= 0.
//
// Density, two measures (both exact, from integer counts):
// - attention pairs: the (query, key) pairs the mask allows over all N queries of a causal
//   sequence, divided by the causal pairs N (N + 1) / 2: what prefill computes;
// - KV cache: keys kept once the sequence is N long, min(S', N) / N with S' = sink + window:
//   what decoding stores (MoA's definition of density).
// Both average over query heads. Under GQA the memory is not that average: llama::SparseKvCache
// gives each KV head one ring for all the query heads sharing it, sized by their widest sink and
// widest window (sparse-attention.md §4.3), so kv_cache_fraction() reports what the cache really
// allocates against a dense one, and the plan search can budget that instead (plan_search.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "models/llama/config.h"
#include "models/llama/model.h"
#include "tensor/io/json.h"

namespace lamina::sparse {

constexpr int64_t kMoaSink = 64;

struct ElasticRule {
  double alpha = 0;
  double beta = 1;
  int64_t sink = kMoaSink;

  // clip(round(alpha + beta N), 0, N): the keys a query at the end of a length-N input sees.
  int64_t span(int64_t length) const;
  // max(0, span - sink), or kAllKeys when the span covers the whole input (a dense head).
  int64_t window(int64_t length) const;
  bool operator==(const ElasticRule& other) const = default;
};

enum class DensityMeasure { attention_pairs, kv_cache };
// "pairs" or "kv-cache"; anything else is an Error naming `what`.
DensityMeasure density_measure_from_name(const std::string& name, const std::string& what);
const char* density_measure_name(DensityMeasure measure);

// The keys one head with `sink` and `window` (kAllKeys = dense) lets a causal sequence of
// `length` tokens attend, summed over the queries (pairs) or kept at its end (kv-cache): the
// numerator of its density. Query i sees min(i + 1, sink + window) keys.
int64_t head_allowed_count(int64_t sink, int64_t window, int64_t length, DensityMeasure measure);
// The denominator: N (N + 1) / 2 causal pairs, or N cache slots.
int64_t dense_count(int64_t length, DensityMeasure measure);

// Slots of the ring that llama::SparseKvCache gives one KV head whose query heads run `rules`,
// for inputs of `length` tokens: the widest sink and the widest window among them, each cut to
// what `length` positions can fill (a dense head keeps all `length`). At most `length`.
int64_t kv_group_slots(std::span<const ElasticRule> rules, int64_t length);

class MoaPlan {
 public:
  MoaPlan() = default;
  // rules[layer][head]; every layer must have the same number of heads (at least one).
  explicit MoaPlan(std::vector<std::vector<ElasticRule>> rules);

  int64_t layers() const { return int64_t(rules_.size()); }
  int64_t heads() const { return rules_.empty() ? 0 : int64_t(rules_[0].size()); }
  const ElasticRule& rule(int64_t layer, int64_t head) const { return rules_[size_t(layer)][size_t(head)]; }
  const std::vector<std::vector<ElasticRule>>& rules() const { return rules_; }

  // Sinks and windows for inputs of `length` tokens (prompt + new tokens).
  llama::SparseAttention resolve(int64_t length) const;
  // Allowed over dense, averaged over every head, exact: the sum of every head's allowed count
  // divided by heads x dense_count.
  double density(int64_t length, DensityMeasure measure = DensityMeasure::attention_pairs) const;
  // The KV cache of this plan against a dense one, for inputs of `length` tokens on a model of
  // `kv_heads` KV heads per layer (heads() a multiple of it): the slots of every ring
  // (kv_group_slots of each KV head's query heads) over layers x kv_heads x length. It is
  // SparseKvCache::bytes() of resolve(length) at max_length = length over the dense cache's
  // bytes, exactly, and at least density(length, kv_cache): a ring is as wide as its widest head.
  double kv_cache_fraction(int64_t length, int64_t kv_heads) const;
  // Its numerator: the ring slots of every layer and KV head.
  int64_t kv_cache_slots(int64_t length, int64_t kv_heads) const;
  // Throws unless the plan has config's layers and query heads.
  void check_fits(const llama::LlamaConfig& config, const std::string& what) const;

  // The plan file; `extra` members ("density", "lengths", ...) go before "rules", where a
  // reader sees them first.
  json::Value to_json(const json::Object& extra = {}) const;
  static MoaPlan from_json(const json::Value& value, const std::string& what);
  static MoaPlan read(const std::string& path);
  // Written to a temporary name and renamed: never a half-written plan.
  void write(const std::string& path, const json::Object& extra = {}) const;

 private:
  std::vector<std::vector<ElasticRule>> rules_;
};

// StreamingLLM's uniform baseline: every head of `layers` x `heads` keeps `sink` keys and one
// window, the largest whose density at `length` is at most `density` (the uniform plan never
// uses more than the budget). Stored as rules with beta 0 (a fixed span), so it resolves to the
// same window at `length` and stays fixed at other lengths. Throws when even the sink alone
// (window 0) is above the budget.
MoaPlan uniform_plan(int64_t layers, int64_t heads, double density, int64_t length, int64_t sink = kMoaSink,
                     DensityMeasure measure = DensityMeasure::attention_pairs);

}  // namespace lamina::sparse
