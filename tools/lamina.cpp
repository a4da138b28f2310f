// lamina: one executable, many subcommands.
//
// Exit status: 0 success, 1 a failure while running (any lamina::Error or other exception),
// 2 a usage mistake (unknown subcommand or flag, missing value).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "train/metrics.h"

namespace lamina::cli {
namespace {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(const Arguments& args);
};

// Every subcommand, in the order `lamina help` lists them.
constexpr Subcommand kSubcommands[] = {
    {"demo", "pretrain, fine-tune and test a small Llama on data it generates (CPU, a few minutes)", run_demo},
    {"generate", "continue a prompt with a Llama model folder (greedy or sampled)", run_generate},
    {"chat", "talk with an Instruct model folder, answers streamed", run_chat},
    {"train", "pretrain or fine-tune (SFT) a Llama model, with checkpoints and exact resume", run_train},
    {"launch", "start N local ranks of a command with torchrun's RANK, WORLD_SIZE, ...: lamina launch --nproc 2 -- lamina train ...", run_launch},
    {"plot", "draw the loss curve of a training run's metrics.jsonl as SVG", run_plot},
    {"eval", "evaluate a model (actions: ppl, perplexity on a text or JSONL file)", run_eval},
    {"score", "per-token log-probabilities of a text or of token ids under a model, as JSON", run_score},
    {"tokenize", "Llama-3 token ids of a text (--tokenizer PATH, --text or stdin)", run_tokenize},
    {"detokenize", "the text of Llama-3 token ids (--tokenizer PATH, --ids or stdin)", run_detokenize},
    {"preference-loss", "a preference loss (DPO, KTO, GRPO, ...) on JSON inputs: loss, gradients, metrics", run_preference_loss},
    {"convert", "convert a Llama model between a Hugging Face folder and a GGUF file (f32/f16/bf16/q8_0/q4_0/q4_1/q4_k/q6_k)", run_convert},
    {"quantize", "quantize a model: to a GGUF file (q8_0/q4_0/q4_1/q4_k/q6_k) or a bitsandbytes NF4/FP4 folder", run_quantize},
    {"lora", "LoRA adapters (PEFT folders): merge into a model, extract from a fine-tuned model (SVD), route several (MeteoRA)", run_lora},
    {"mutate", "scale a model's singular values by random factors (CycleQD's SVD mutation)", run_mutate},
    {"merge", "merge models by a JSON recipe: linear, task arithmetic, SLERP, TIES, DARE (streamed)", run_merge_models},
    {"expand", "insert zero-output copies of decoder blocks (LLaMA Pro): same logits, new blocks to train", run_expand},
    {"extend-vocab", "add tokens to a model's tokenizer, embedding and head (old logits unchanged)", run_extend_vocab},
    {"checkpoint", "training checkpoints: consolidate a ZeRO run's optimizer shards into one state", run_checkpoint},
    {"sparse", "MoA sparse attention: profile heads, search a plan at a density, uniform baseline", run_sparse},
    {"bench", "benchmarks that print one JSON line per case (suites: ops, generate, train, tokenizer, preference, attention, allreduce)", run_bench},
    {"info", "version, build type, CPU threads and whether the CUDA backend was built", run_info},
    {"version", "print the version", run_version},
};

void print_help(std::FILE* out) {
  std::fprintf(out,
               "usage: lamina <subcommand> [flags]\n\n"
               "lamina: run and fine-tune Llama-3 models on tensors, autograd and kernels written from\n"
               "scratch (the preference losses are here; their trainer is not yet).\n\n"
               "subcommands:\n");
  for (const Subcommand& command : kSubcommands) std::fprintf(out, "  %-10s %s\n", command.name, command.summary);
  std::fprintf(out,
               "  %-10s %s\n\n"
               "Run 'lamina <subcommand> --help' (or 'lamina help <subcommand>') for its flags.\n",
               "help", "show this help; 'lamina --version' prints the version");
}

int dispatch(const Arguments& args) {
  if (args.empty()) {
    print_help(stderr);
    throw UsageError("no subcommand given", "try 'lamina demo'");
  }
  const std::string& name = args[0];
  if (name == "help" || name == "--help") {
    if (args.size() > 1 && args[1].rfind("-", 0) != 0) return dispatch({args[1], "--help"});  // help <subcommand>
    print_help(stdout);
    return 0;
  }
  if (name == "--version") return run_version({});

  std::vector<std::string> names;
  for (const Subcommand& command : kSubcommands) {
    if (name == command.name) return command.run(Arguments(args.begin() + 1, args.end()));
    names.push_back(command.name);
  }
  const std::string suggestion = closest_match(name, names);
  const std::string what = name.rfind("-", 0) == 0 ? "unknown flag '" : "unknown subcommand '";
  throw UsageError(what + name + "'" + (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   "run 'lamina help' to list the subcommands");
}

}  // namespace
}  // namespace lamina::cli

namespace {

// $LAMINA_PEAK_RSS_FILE: where this process writes its peak RSS in bytes when it exits (how
// `bench generate` reads the peak of the `lamina generate` processes it starts).
void write_peak_rss_at_exit() {
  if (std::getenv("LAMINA_PEAK_RSS_FILE") == nullptr) return;
  std::atexit([] {
    if (std::FILE* out = std::fopen(std::getenv("LAMINA_PEAK_RSS_FILE"), "w")) {
      std::fprintf(out, "%lld\n", static_cast<long long>(lamina::train::peak_rss_bytes()));
      std::fclose(out);
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  write_peak_rss_at_exit();
  try {
    return lamina::cli::dispatch(lamina::cli::Arguments(argv + 1, argv + argc));
  } catch (const lamina::cli::UsageError& error) {
    std::fprintf(stderr, "error: %s\nhint: %s\n", error.what(), error.hint().c_str());
    return 2;
  } catch (const lamina::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (const std::bad_alloc& error) {
    // lamina's operator new says what it could not allocate; a bare std::bad_alloc (from
    // elsewhere) only says "std::bad_alloc".
    const bool described = std::strstr(error.what(), "memory") != nullptr;
    std::fprintf(stderr, "error: %s%s%s\n", described ? "" : "out of memory (", error.what(), described ? "" : ")");
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "error: an unknown exception escaped the subcommand\n");
    return 1;
  }
}
