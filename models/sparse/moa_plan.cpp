// MoA plans: elastic rules, their densities, the plan file and the uniform baseline (moa_plan.h).
#include "models/sparse/moa_plan.h"

#include <algorithm>
#include <cmath>

#include "ops/attention_pattern.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"

namespace lamina::sparse {

int64_t ElasticRule::span(int64_t length) const {
  const double raw = std::round(alpha + beta * double(length));
  if (raw <= 0) return 0;
  if (raw >= double(length)) return length;
  return int64_t(raw);
}

int64_t ElasticRule::window(int64_t length) const {
  const int64_t keys = span(length);
  if (keys >= length) return kAllKeys;
  return std::max<int64_t>(0, keys - sink);
}

DensityMeasure density_measure_from_name(const std::string& name, const std::string& what) {
  if (name == "pairs") return DensityMeasure::attention_pairs;
  if (name == "kv-cache") return DensityMeasure::kv_cache;
  throw Error(str_cat(what, ": unknown density measure '", name, "' (expected pairs or kv-cache)"));
}

const char* density_measure_name(DensityMeasure measure) {
  return measure == DensityMeasure::attention_pairs ? "pairs" : "kv-cache";
}

int64_t head_allowed_count(int64_t sink, int64_t window, int64_t length, DensityMeasure measure) {
  LAMINA_CHECK(sink >= 0 && window >= 0 && length >= 0, "head_allowed_count: negative sink ", sink, ", window ",
               window, " or length ", length);
  // Query i sees the keys j <= i with j < sink or i - j < window: all i + 1 of them while the gap
  // [sink, i - window] is empty, else sink + window. `reach` = sink + window, saturated.
  const int64_t reach = window >= length || sink >= length ? length : std::min(length, sink + window);
  if (measure == DensityMeasure::kv_cache) return reach;
  // sum over i of min(i + 1, reach) = reach (reach + 1) / 2 + (length - reach) reach.
  return reach * (reach + 1) / 2 + (length - reach) * reach;
}

int64_t dense_count(int64_t length, DensityMeasure measure) {
  return measure == DensityMeasure::kv_cache ? length : length * (length + 1) / 2;
}

int64_t kv_group_slots(std::span<const ElasticRule> rules, int64_t length) {
  LAMINA_CHECK(!rules.empty() && length >= 1, "kv_group_slots: ", rules.size(), " rules at length ", length);
  // The cache's own sizing (sparse_kv_cache.cpp): widest sink and widest window taken apart,
  // so two heads of different sinks can need more slots than either alone.
  int64_t widest_sink = 0, widest_window = 0;
  for (const ElasticRule& rule : rules) {
    widest_sink = std::max(widest_sink, rule.sink);
    widest_window = std::max(widest_window, rule.window(length));
  }
  const int64_t sink = std::min(widest_sink, length);
  return sink + std::min(widest_window, length - sink);
}

MoaPlan::MoaPlan(std::vector<std::vector<ElasticRule>> rules) : rules_(std::move(rules)) {
  LAMINA_CHECK(!rules_.empty(), "MoaPlan: a plan needs at least one layer");
  for (size_t layer = 0; layer < rules_.size(); ++layer) {
    LAMINA_CHECK(!rules_[layer].empty() && rules_[layer].size() == rules_[0].size(), "MoaPlan: layer ", layer,
                 " has ", rules_[layer].size(), " heads, layer 0 has ", rules_[0].size());
    for (size_t head = 0; head < rules_[layer].size(); ++head) {
      const ElasticRule& rule = rules_[layer][head];
      LAMINA_CHECK(std::isfinite(rule.alpha) && std::isfinite(rule.beta) && rule.beta >= 0 && rule.beta <= 1 &&
                       rule.sink >= 0,
                   "MoaPlan: layer ", layer, " head ", head, " has alpha ", rule.alpha, ", beta ", rule.beta,
                   ", sink ", rule.sink, " (alpha finite, beta in [0, 1], sink >= 0)");
    }
  }
}

llama::SparseAttention MoaPlan::resolve(int64_t length) const {
  LAMINA_CHECK(length >= 1, "MoaPlan::resolve: length ", length, " is not positive");
  llama::SparseAttention attention;
  for (const auto& layer : rules_) {
    std::vector<int64_t> sinks, windows;
    for (const ElasticRule& rule : layer) {
      sinks.push_back(rule.sink);
      windows.push_back(rule.window(length));
    }
    attention.sinks.push_back(std::move(sinks));
    attention.windows.push_back(std::move(windows));
  }
  return attention;
}

double MoaPlan::density(int64_t length, DensityMeasure measure) const {
  LAMINA_CHECK(length >= 1 && !rules_.empty(), "MoaPlan::density: length ", length, " of a plan of ", layers(),
               " layers");
  // Integer sums stay exact up to 2^63: 1024 heads at N = 2^20 is about 2^59.
  int64_t allowed = 0;
  for (const auto& layer : rules_)
    for (const ElasticRule& rule : layer)
      allowed += head_allowed_count(rule.sink, rule.window(length), length, measure);
  return double(allowed) / (double(dense_count(length, measure)) * double(layers() * heads()));
}

int64_t MoaPlan::kv_cache_slots(int64_t length, int64_t kv_heads) const {
  LAMINA_CHECK(length >= 1 && !rules_.empty(), "MoaPlan::kv_cache_slots: length ", length, " of a plan of ",
               layers(), " layers");
  if (kv_heads < 1 || heads() % kv_heads != 0)
    throw Error(str_cat("MoA plan: ", heads(), " query heads per layer do not split into ", kv_heads, " KV heads"));
  const size_t group = size_t(heads() / kv_heads);
  int64_t slots = 0;
  for (const auto& layer : rules_)
    for (size_t first = 0; first < layer.size(); first += group)
      slots += kv_group_slots(std::span<const ElasticRule>(layer.data() + first, group), length);
  return slots;
}

double MoaPlan::kv_cache_fraction(int64_t length, int64_t kv_heads) const {
  const int64_t slots = kv_cache_slots(length, kv_heads);
  return double(slots) / (double(length) * double(layers() * kv_heads));
}

void MoaPlan::check_fits(const llama::LlamaConfig& config, const std::string& what) const {
  if (layers() != config.num_hidden_layers || heads() != config.num_attention_heads)
    throw Error(str_cat(what, ": the plan has ", layers(), " layers of ", heads(), " heads, the model ",
                        config.num_hidden_layers, " layers of ", config.num_attention_heads, " query heads"));
}

json::Value MoaPlan::to_json(const json::Object& extra) const {
  json::Value root(json::Object{});
  root.set("format", "lamina-moa-plan");
  root.set("version", int64_t(1));
  root.set("layers", layers());
  root.set("heads", heads());
  for (const auto& [key, value] : extra) root.set(key, value);
  json::Array layers_json;
  for (const auto& layer : rules_) {
    json::Array heads_json;
    for (const ElasticRule& rule : layer) {
      json::Value head(json::Object{});
      // Integral alphas are written as integers, the way a user writes them.
      if (rule.alpha == std::floor(rule.alpha) && std::abs(rule.alpha) < 1e15) head.set("alpha", int64_t(rule.alpha));
      else head.set("alpha", rule.alpha);
      head.set("beta", rule.beta);
      head.set("sink", rule.sink);
      heads_json.push_back(std::move(head));
    }
    layers_json.push_back(std::move(heads_json));
  }
  root.set("rules", std::move(layers_json));
  return root;
}

MoaPlan MoaPlan::from_json(const json::Value& value, const std::string& what) {
  const json::Value* format = value.find("format", what);
  if (!format || !format->is_string() || format->as_string() != "lamina-moa-plan")
    throw Error(what + ": not a MoA plan (\"format\" must be \"lamina-moa-plan\")");
  const int64_t version = value.at("version", what).as_int64(what + ": version");
  if (version != 1) throw Error(str_cat(what, ": plan version ", version, " is not supported (only 1)"));
  const int64_t layer_count = value.at("layers", what).as_int64(what + ": layers");
  const int64_t head_count = value.at("heads", what).as_int64(what + ": heads");
  const json::Array& layers_json = value.at("rules", what).as_array(what + ": rules");
  if (layer_count < 1 || head_count < 1 || int64_t(layers_json.size()) != layer_count)
    throw Error(str_cat(what, ": \"rules\" has ", layers_json.size(), " layers; \"layers\" says ", layer_count,
                        " and \"heads\" ", head_count, " (both at least 1)"));
  std::vector<std::vector<ElasticRule>> rules;
  for (int64_t layer = 0; layer < layer_count; ++layer) {
    const std::string layer_what = str_cat(what, ": rules[", layer, "]");
    const json::Array& heads_json = layers_json[size_t(layer)].as_array(layer_what);
    if (int64_t(heads_json.size()) != head_count)
      throw Error(str_cat(layer_what, " has ", heads_json.size(), " heads; \"heads\" says ", head_count));
    std::vector<ElasticRule> layer_rules;
    for (int64_t head = 0; head < head_count; ++head) {
      const std::string head_what = str_cat(layer_what, "[", head, "]");
      const json::Value& head_json = heads_json[size_t(head)];
      head_json.as_object(head_what);
      ElasticRule rule;
      rule.alpha = head_json.at("alpha", head_what).as_double(head_what + ": alpha");
      rule.beta = head_json.at("beta", head_what).as_double(head_what + ": beta");
      if (const json::Value* sink = head_json.find("sink", head_what)) rule.sink = sink->as_int64(head_what + ": sink");
      if (!(rule.beta >= 0 && rule.beta <= 1)) throw Error(str_cat(head_what, ": beta ", rule.beta, " is not in [0, 1]"));
      if (rule.sink < 0) throw Error(str_cat(head_what, ": sink ", rule.sink, " is negative"));
      layer_rules.push_back(rule);
    }
    rules.push_back(std::move(layer_rules));
  }
  return MoaPlan(std::move(rules));
}

MoaPlan MoaPlan::read(const std::string& path) { return from_json(json::parse_file(path), path); }

void MoaPlan::write(const std::string& path, const json::Object& extra) const {
  io::write_file_atomically(path, to_json(extra).dump(1) + "\n");
}

MoaPlan uniform_plan(int64_t layers, int64_t heads, double density, int64_t length, int64_t sink,
                     DensityMeasure measure) {
  LAMINA_CHECK(layers >= 1 && heads >= 1 && length >= 1 && sink >= 0, "uniform_plan: ", layers, " layers, ", heads,
               " heads, length ", length, ", sink ", sink);
  if (!(density > 0 && density <= 1))
    throw Error(str_cat("uniform plan: density ", density, " is not in (0, 1]"));
  // The budget in whole keys: allowed <= density x dense, compared as integers once rounded down.
  const auto budget = int64_t(std::floor(density * double(dense_count(length, measure))));
  if (head_allowed_count(sink, 0, length, measure) > budget)
    throw Error(str_cat("uniform plan: density ", density, " at length ", length, " is below what the ", sink,
                        " sink keys alone take (",
                        double(head_allowed_count(sink, 0, length, measure)) / double(dense_count(length, measure)),
                        ")"));
  // The allowed count grows with the window: binary search the largest window within budget.
  int64_t low = 0, high = length;  // allowed(low) <= budget; the answer is in [low, high]
  while (low < high) {
    const int64_t middle = low + (high - low + 1) / 2;
    if (head_allowed_count(sink, middle, length, measure) <= budget) low = middle;
    else high = middle - 1;
  }
  ElasticRule rule;
  rule.alpha = double(std::min(length, sink + low));
  rule.beta = 0;
  rule.sink = sink;
  return MoaPlan(std::vector<std::vector<ElasticRule>>(size_t(layers), std::vector<ElasticRule>(size_t(heads), rule)));
}

}  // namespace lamina::sparse
