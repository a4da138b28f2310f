// A MoA plan file written by hand, in the format models/sparse/moa_plan.h reads, for the CLI
// tests of --attention-plan (eval ppl, train, generate).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>

#include "models/llama/config.h"
#include "tensor/io/json.h"

namespace lamina::testing {

// Every head of every layer keeps `sink` keys and a fixed span `span` (beta 0): a window of
// span - sink at any length above the span.
inline void write_fixed_span_plan(const std::filesystem::path& path, const llama::LlamaConfig& config, int64_t sink,
                                  int64_t span) {
  json::Array layers;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    json::Array heads;
    for (int64_t head = 0; head < config.num_attention_heads; ++head) {
      json::Value rule(json::Object{});
      rule.set("alpha", span);
      rule.set("beta", 0.0);
      rule.set("sink", sink);
      heads.push_back(rule);
    }
    layers.push_back(json::Value(heads));
  }
  json::Value plan(json::Object{});
  plan.set("format", "lamina-moa-plan");
  plan.set("version", 1);
  plan.set("layers", config.num_hidden_layers);
  plan.set("heads", config.num_attention_heads);
  plan.set("rules", json::Value(layers));
  std::ofstream(path) << plan.dump();
}

}  // namespace lamina::testing
