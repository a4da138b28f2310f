#include "tools/attention_plan_option.h"

namespace lamina::cli {

void add_attention_plan_option(FlagParser& parser, const std::string& length_rule) {
  parser.add_option("attention-plan", "FILE",
                    "sparse attention: a MoA plan (lamina sparse plan|uniform) resolved for " + length_rule +
                        "; each head keeps its sink and window",
                    "dense attention");
}

std::optional<sparse::MoaPlan> read_attention_plan(const FlagParser& parser, const llama::LlamaConfig& config) {
  const std::optional<std::string> path = parser.value("attention-plan");
  if (!path) return std::nullopt;
  sparse::MoaPlan plan = sparse::MoaPlan::read(*path);
  plan.check_fits(config, "--attention-plan " + *path);
  return plan;
}

double apply_attention_plan(llama::LlamaModel& trunk, const llama::LlamaConfig& config, const sparse::MoaPlan& plan,
                            int64_t length) {
  llama::SparseAttention resolved = plan.resolve(length);
  resolved.check(config);
  trunk.sparse_attention = std::move(resolved);
  return plan.density(length);
}

void add_rope_positions_option(FlagParser& parser) {
  parser.add_option("rope-positions", "original|cache-slot",
                    "with --attention-plan: the RoPE positions of the ring caches' keys. original (MoA): each key "
                    "keeps its position in the text; cache-slot (StreamingLLM): keys are cached before RoPE and "
                    "rotated at every step by their place in the cache (sinks first, then the window oldest first, "
                    "the new token last), so every query-key distance stays within the cache's size and, when "
                    "every head's sink + window fits the model's context, generation runs past that context (the "
                    "prompt must still fit it)",
                    "original");
}

llama::RopePositions read_rope_positions(const FlagParser& parser, const std::string& command) {
  const std::optional<std::string> value = parser.value("rope-positions");
  if (!value) return llama::RopePositions::original;
  if (!parser.is_set("attention-plan"))
    throw UsageError(command + ": --rope-positions only applies with --attention-plan (dense attention keeps every "
                     "key at its own position)",
                     "add --attention-plan FILE, or drop --rope-positions");
  if (*value == "original") return llama::RopePositions::original;
  if (*value == "cache-slot") return llama::RopePositions::cache_slot;
  throw UsageError(command + ": --rope-positions must be 'original' or 'cache-slot', got '" + *value + "'",
                   "run '" + command + " --help'");
}

}  // namespace lamina::cli
