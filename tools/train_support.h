// What every `lamina train` subcommand shares (tools/train.cpp: pretrain, sft, preference,
// reward; tools/train_online.cpp: grpo, rloo, ...): the training flags and their options, the
// output folder's rules, the model and tokenizer files a run reads and writes.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "models/llama/model.h"
#include "models/tokenizer/tokenizer.h"
#include "tools/args.h"
#include "train/trainer.h"

namespace lamina::cli {

// Validation is capped by tokens by default: a 5% split of a large corpus is hundreds of
// thousands of examples and took minutes per evaluation, while 64Ki tokens are plenty to follow
// the loss (the standard error of a mean over them is a fraction of a percent of it).
inline constexpr int64_t kDefaultValidationTokens = 65536;

// Which data flags a subcommand has: the language-model trainers' (packing, --seq-len,
// --format, the validation split), the pair trainers' (--validation FILE), or the online
// trainers' (their prompts per step replace --batch-size and --micro-batch-size).
enum class TrainerKind { language_model, pairs, online };

// The training knobs shared by every subcommand, their help showing `defaults`.
void add_training_flags(FlagParser& parser, TrainerKind kind, const train::TrainOptions& defaults = {});
// The options the flags (and an --options file) give, starting from `defaults`. Ranges are
// checked by TrainOptions::validate, so that flags and --options files get the same checks.
train::TrainOptions training_options(const FlagParser& parser, const train::TrainOptions& defaults = {});
// How the run treats its output folder; checked before any data is read. `input_flags` name the
// flags whose paths the run reads: none may lie in what the run removes or replaces.
train::RunStart run_start(const FlagParser& parser, const train::TrainOptions& options,
                          const std::vector<std::string>& input_flags);

// The model a run starts from: a Llama GGUF file (dequantized), or an HF folder; with --qlora
// an HF folder's projections are quantized to NF4 as they are read, one at a time, so that a
// model whose full-precision weights would not fit in memory (an 8B model on a 24 GB machine)
// still trains, in the dtype training computes in, as quantizing the loaded model would.
std::shared_ptr<llama::LlamaForCausalLM> load_start_model(const std::string& path, const train::TrainOptions& options);

// The tokenizer files that a trained model's folder gets, so that it is self-contained
// (`lamina generate --prompt` and `lamina chat` find the tokenizer there). Read when the run
// starts, not when the model is written at its end: by then the source may be gone.
struct TokenizerFiles {
  std::string tokenizer;                // tokenizer.json
  std::optional<std::string> settings;  // tokenizer_config.json, when there is one beside it
};
// The files of --tokenizer when given, else of the model: a folder's, or made from a GGUF file.
TokenizerFiles model_tokenizer_files(const std::string& model_path, const std::optional<std::string>& tokenizer_flag);
// A tokenizer.json (or the folder holding one) and the tokenizer_config.json beside it.
TokenizerFiles read_tokenizer_files(const std::string& source);
void write_tokenizer_files(const TokenizerFiles& files, const std::string& model_folder);

// A distributed run's ranks (RANK, WORLD_SIZE, ... as `lamina launch`, torchrun or SLURM set
// them: train/distributed/rendezvous.h) joined, and `trainer` set to train data parallel over
// them (Trainer::set_communicator): the CPU process group on the CPU, NCCL on CUDA. A single
// process (no such variables, or WORLD_SIZE=1) is left alone. A trainer whose objective cannot
// split its steps is an error before any connection is made.
void join_ranks(train::Trainer& trainer, const train::TrainOptions& options);

// The end of an online run (train grpo|..., train refuel): runs `trainer` from `start`, the
// tokenizer files written into every saved model folder, and prints one line: the steps, the
// reward at the first and last step, where the model, metrics and samples went.
void run_sampling_trainer(train::Trainer& trainer, const train::RunStart& start, const std::string& model_path,
                          const TokenizerFiles& files, const train::TrainOptions& options);

// A tokenizer with more ids than the model's vocabulary is an error naming both files.
void check_vocabulary(const tokenizer::Tokenizer& tok, const std::string& tokenizer_path, const llama::LlamaConfig& config,
                      const std::string& config_path);

// "a=1,b=x" as {{"a", "1"}, {"b", "x"}}; an item without '=' is a usage error naming `flag`.
std::vector<std::pair<std::string, std::string>> key_value_list(const std::string& text, const std::string& command,
                                                                const std::string& flag);

}  // namespace lamina::cli
