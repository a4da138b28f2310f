// `--attention-plan FILE`, shared by generate, chat, eval ppl and train: a MoA plan file
// (models/sparse/moa_plan.h, written by `lamina sparse plan|uniform`) whose elastic rules are
// resolved for the length a command works at and set on the model as its sparse attention; and
// `--rope-positions original|cache-slot` (generate and chat), the ring caches' RoPE mode.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "models/llama/model.h"
#include "models/llama/sparse_kv_cache.h"
#include "models/sparse/moa_plan.h"
#include "tools/args.h"

namespace lamina::cli {

// Adds the option; `length_rule` says, for --help, which length the command resolves the plan at.
void add_attention_plan_option(FlagParser& parser, const std::string& length_rule);
// The plan when --attention-plan is set, checked against the model's layers and heads.
std::optional<sparse::MoaPlan> read_attention_plan(const FlagParser& parser, const llama::LlamaConfig& config);
// Resolves `plan` for inputs of `length` tokens and makes it the model's attention (every layer,
// every head); returns its density at that length (attention pairs over causal pairs).
double apply_attention_plan(llama::LlamaModel& trunk, const llama::LlamaConfig& config, const sparse::MoaPlan& plan,
                            int64_t length);

// Adds --rope-positions original|cache-slot (decoding under --attention-plan only).
void add_rope_positions_option(FlagParser& parser);
// Its value; `command` ("lamina generate") names the command in errors. Set without
// --attention-plan, or with another value, it is a usage error.
llama::RopePositions read_rope_positions(const FlagParser& parser, const std::string& command);

}  // namespace lamina::cli
