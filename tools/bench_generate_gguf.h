// The GGUF cases of `lamina bench generate` (tools/bench_generate_gguf.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/llama/config.h"

namespace lamina::cli {

struct GgufBenchOptions {
  int64_t prompt_tokens = 512;  // llama-bench's pp512
  int64_t decode_tokens = 128;  // llama-bench's tg128
  std::vector<int> threads = {1, 2};
  double min_seconds = 0.5;
  bool profile = false;  // one line per op of the decode step
  bool process = true;   // the fresh-process cases (first token, peak RSS)
};

// The cases of a GGUF file computing with its weights as stored, named `name`_t<T> and
// `name`_process (see the .cpp's opening comment). A file with matrices lamina has no quantized
// kernel for prints one "skipped" line.
void bench_gguf_model(const std::string& path, const std::string& name, const GgufBenchOptions& options);

// A random Llama of Llama 3.2 1B's shape (1.24B parameters), written to `path` in Q4_0.
llama::LlamaConfig synthetic_1b_config();
void write_synthetic_1b_gguf(const std::string& path);

}  // namespace lamina::cli
