// The subcommands of the lamina executable. Each takes the arguments after its own name and
// returns the process exit status; usage mistakes throw cli::UsageError (see tools/args.h).
#pragma once

#include <string>
#include <vector>

namespace lamina::cli {

using Arguments = std::vector<std::string>;

int run_version(const Arguments& args);
int run_info(const Arguments& args);
int run_bench(const Arguments& args);  // dispatches to the bench suites (tools/bench.cpp)
int run_demo(const Arguments& args);
int run_tokenize(const Arguments& args);    // tools/tokenize.cpp
int run_detokenize(const Arguments& args);  // tools/tokenize.cpp
int run_generate(const Arguments& args);
int run_chat(const Arguments& args);  // tools/generate.cpp
int run_train(const Arguments& args);  // tools/train.cpp
int run_plot(const Arguments& args);   // tools/train.cpp
int run_preference_loss(const Arguments& args);  // tools/preference_loss.cpp
int run_eval(const Arguments& args);   // tools/eval.cpp: eval ppl, ...
int run_score(const Arguments& args);  // tools/eval.cpp
class FlagParser;
int run_reward_score(const FlagParser& parser);  // tools/score_reward.cpp: score --reward-model
// Whether `path` is a reward-model folder: config.json's architectures name LlamaForSequenceClassification.
bool is_reward_model_folder(const std::string& path);  // tools/score_reward.cpp
int run_convert(const Arguments& args);  // tools/convert.cpp: HF folder <-> GGUF
int run_quantize(const Arguments& args);  // tools/quantize.cpp: GGUF block formats, NF4 / FP4 checkpoints
int run_lora(const Arguments& args);      // tools/lora.cpp: lora merge, lora extract, lora route (tools/lora_route.cpp)
int run_mutate(const Arguments& args);        // tools/mutate.cpp: CycleQD's SVD mutation
int run_expand(const Arguments& args);        // tools/expand.cpp: LLaMA Pro block expansion
int run_extend_vocab(const Arguments& args);  // tools/expand.cpp: add tokens, grow the embedding and head
int run_merge_models(const Arguments& args);  // tools/merge.cpp: merge models by a recipe (linear, SLERP, TIES, DARE)
int run_launch(const Arguments& args);    // tools/launch.cpp: start N local ranks of a command (torchrun's conventions)
int run_checkpoint(const Arguments& args);  // tools/checkpoint.cpp: checkpoint consolidate (ZeRO shards)
int run_sparse(const Arguments& args);    // tools/sparse.cpp: sparse profile|plan|uniform (MoA)

// The bench suites, each in its own file.
int run_bench_ops(const Arguments& args);
int run_bench_generate(const Arguments& args);
int run_bench_train(const Arguments& args);  // tools/bench_train.cpp
int run_bench_tokenizer(const Arguments& args);  // tools/bench_tokenizer.cpp
int run_bench_preference(const Arguments& args);  // tools/bench_preference.cpp
int run_bench_attention(const Arguments& args);  // tools/bench_attention.cpp
int run_bench_allreduce(const Arguments& args);  // tools/bench_allreduce.cpp

}  // namespace lamina::cli
