// `lamina bench <suite>`: fixed, named benchmark cases that print one JSON line each, so
// numbers are comparable across machines and commits.
#include <cstdio>

#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {


namespace {

struct BenchSuite {
  const char* name;
  const char* summary;
  int (*run)(const Arguments& args);
};

constexpr BenchSuite kSuites[] = {
    {"ops", "op throughput: matmul vs Eigen (cuBLASLt on a GPU), memory-bound ops vs memcpy", run_bench_ops},
    {"generate", "Llama prefill/decode tokens/s vs the memory-bandwidth bound", run_bench_generate},
    {"train", "training-step tokens/s of a ~30M Llama, with and without activation checkpointing", run_bench_train},
    {"tokenizer", "Llama-3 tokenizer encode/decode MB/s on one thread (--tokenizer PATH)", run_bench_tokenizer},
    {"preference", "DPO-step tokens/s on the bench train model; the policy vs reference time split", run_bench_preference},
    {"attention", "fused vs materialising attention fwd+bwd: time, GFLOP/s, peak memory; sparse at 50/25/10% density",
     run_bench_attention},
    {"allreduce", "CPU process group all_reduce between --ranks local processes: GB/s by size vs memcpy",
     run_bench_allreduce},
};

void print_bench_help() {
  std::printf("usage: lamina bench <suite> [flags]\n\nsuites:\n");
  for (const BenchSuite& suite : kSuites) std::printf("  %-10s %s\n", suite.name, suite.summary);
  std::printf("\nRun 'lamina bench <suite> --help' for a suite's flags.\n");
}

}  // namespace

int run_bench(const Arguments& args) {
  if (args.empty()) throw UsageError("lamina bench: no suite given", "run 'lamina bench --help' to list the suites");
  if (args[0] == "--help" || args[0] == "help") {
    print_bench_help();
    return 0;
  }
  if (args[0].rfind("-", 0) == 0) {
    throw UsageError("lamina bench: expected a suite name before flags, got '" + args[0] + "'",
                     "run 'lamina bench --help' to list the suites");
  }
  std::vector<std::string> names;
  for (const BenchSuite& suite : kSuites) {
    if (args[0] == suite.name) return suite.run(Arguments(args.begin() + 1, args.end()));
    names.push_back(suite.name);
  }
  const std::string suggestion = closest_match(args[0], names);
  throw UsageError("lamina bench: unknown suite '" + args[0] + "'" +
                       (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   "run 'lamina bench --help' to list the suites");
}

}  // namespace lamina::cli
