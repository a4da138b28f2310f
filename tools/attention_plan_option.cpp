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

}  // namespace lamina::cli
