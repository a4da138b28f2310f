// The GGUF cases of `lamina bench generate`: a model read from a GGUF file and computing with its
// weights as stored (gguf::load_llama_gguf_quantized), measured the way llama.cpp's llama-bench
// measures the same file, so that the two can be put side by side:
//   <name>_t<T>      prefill of a P-token prompt (default 512: llama-bench's pp512) and D decode
//                    steps from a one-token context (default 128: tg128), batch 1, T threads, in
//                    this process; and the same prefill in the chunks `lamina generate` takes
//                    for this file by default (generate::memory_lean_prefill_chunk_tokens);
//   <name>_process   a fresh `lamina generate` process (what a user runs): its wall time to the
//                    first new token from process start (a 16-token prompt, one new token), and its
//                    peak RSS for the P-token prompt and D new tokens, against the target of the
//                    file's size plus the KV cache plus 10%.
// --profile adds one line per op of the decode step (tensor/profiler.h), largest first.
// `--synthetic-1b FILE` writes (once) and measures a random Llama-3-shaped model of 1.24B
// parameters (Llama 3.2 1B's shape) in Q4_0.
#include "tools/bench_generate_gguf.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include "autograd/autograd.h"
#include "models/generate/generate.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "tensor/error.h"
#include "tensor/parallel.h"
#include "tools/bench_support.h"

extern char** environ;

namespace lamina::cli {
namespace {

// f32 keys and values of `tokens` positions, batch 1.
int64_t kv_bytes(const llama::LlamaConfig& config, int64_t tokens) {
  return 2 * config.num_hidden_layers * tokens * config.num_key_value_heads * config.head_dim * int64_t(sizeof(float));
}

std::string ids_text(const Tensor& ids) {
  std::string text;
  for (int64_t i = 0; i < ids.numel(); ++i) {
    if (i > 0) text += ' ';
    text += std::to_string(ids.data<int64_t>()[i]);
  }
  return text;
}

struct ChildRun {
  double seconds = 0;
  int64_t peak_rss_bytes = 0;
  int status = -1;
};

// Runs this executable with `args` (LAMINA_NUM_THREADS set to `threads`), its output discarded;
// the wall time from spawn to exit and the child's peak RSS (wait4's ru_maxrss).
ChildRun run_self(const std::vector<std::string>& args, int threads) {
  std::error_code error;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", error).string();
  LAMINA_CHECK(!error, "bench generate: cannot find this executable (/proc/self/exe): ", error.message());
  std::vector<std::string> storage = {self};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // The child writes its own peak RSS at exit (tools/lamina.cpp): wait4's ru_maxrss would carry
  // this process's peak across the spawn.
  char rss_path[] = "/tmp/lamina-bench-rss-XXXXXX";
  const int rss_fd = ::mkstemp(rss_path);
  LAMINA_CHECK(rss_fd >= 0, "bench generate: cannot create a temporary file: ", std::strerror(errno));
  ::close(rss_fd);
  std::vector<std::string> environment_storage = {"LAMINA_NUM_THREADS=" + std::to_string(threads),
                                                  std::string("LAMINA_PEAK_RSS_FILE=") + rss_path};
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    if (text.rfind("LAMINA_NUM_THREADS=", 0) != 0 && text.rfind("LAMINA_PEAK_RSS_FILE=", 0) != 0)
      environment_storage.push_back(text);
  }
  std::vector<char*> envp;
  for (std::string& entry : environment_storage) envp.push_back(entry.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const auto start = std::chrono::steady_clock::now();
  const int spawned = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  LAMINA_CHECK(spawned == 0, "bench generate: cannot start ", self, ": ", std::strerror(spawned));
  int status = 0;
  struct rusage usage {};
  LAMINA_CHECK(::wait4(pid, &status, 0, &usage) == pid, "bench generate: wait4 failed");
  ChildRun run;
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (std::FILE* in = std::fopen(rss_path, "r")) {
    long long bytes = 0;
    if (std::fscanf(in, "%lld", &bytes) == 1) run.peak_rss_bytes = bytes;
    std::fclose(in);
  }
  std::remove(rss_path);
  return run;
}

void bench_in_process(const llama::LlamaForCausalLM& model, const std::string& name, int threads, int64_t file_bytes,
                      const GgufBenchOptions& options) {
  ThreadCountGuard thread_guard(threads);
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig& config = model.config();
  const int64_t prompt = options.prompt_tokens, decode = options.decode_tokens;
  Generator generator(11);
  const Tensor ids = randint(3, config.vocab_size, {1, prompt}, generator);
  const Tensor step_ids = randint(3, config.vocab_size, {1, 1}, generator);
  llama::ForwardOptions forward;
  forward.last_position_only = true;
  std::optional<llama::KvCache> cache;
  const auto prefill = [&] {
    cache.emplace(config, 1, prompt + decode);
    forward.cache = &*cache;
    model.forward(ids, forward);
  };
  // The same prompt in the chunks `lamina generate` uses for this file by default (smaller ones
  // for a small model, to keep its peak memory near the file's size): their cost against the
  // one-pass prefill above, in this run.
  const int64_t chunk = generate::memory_lean_prefill_chunk_tokens(config, file_bytes);
  const auto chunked_prefill = [&] {
    cache.emplace(config, 1, prompt + decode);
    forward.cache = &*cache;
    for (int64_t start = 0; start < prompt; start += chunk) {  // as generate::generate: the head on the last chunk only
      const int64_t end = std::min(prompt, start + chunk);
      if (end < prompt)
        model.hidden_states(ids.slice(1, start, end), forward);
      else
        model.forward(ids.slice(1, start, end), forward);
    }
  };
  const auto decode_steps = [&] {
    for (int64_t step = 0; step < decode; ++step) model.forward(step_ids, forward);
  };
  // Decode as llama-bench's tg runs it: from an (almost) empty context, one token in the cache,
  // so that the steps attend to 1 .. D keys.
  const Tensor first_id = ids.slice(1, 0, 1);
  const auto start_sequence = [&] {
    cache.emplace(config, 1, prompt + decode);
    forward.cache = &*cache;
    model.forward(first_id, forward);
  };
  const Timing prefill_timing = measure(prefill, options.min_seconds);
  const Timing chunked_prefill_timing = measure(chunked_prefill, options.min_seconds);
  const Timing decode_timing = measure_after(start_sequence, decode_steps, options.min_seconds);
  const std::string case_name = name + "_t" + std::to_string(threads);
  JsonLine()
      .add("bench", "generate")
      .add("case", case_name)
      .add("weights", "as stored")
      .add("threads", threads)
      .add("batch", 1)
      .add("prompt_tokens", prompt)
      .add("decode_tokens", decode)
      .add("stat", "median")
      .add("prefill_tokens_per_s", double(prompt) / prefill_timing.median_seconds)
      .add("prefill_chunk_tokens", chunk)
      .add("prefill_chunked_tokens_per_s", double(prompt) / chunked_prefill_timing.median_seconds)
      .add("decode_tokens_per_s", double(decode) / decode_timing.median_seconds)
      .add("decode_step_ms", decode_timing.median_seconds / double(decode) * 1e3)
      .add("file_bytes", file_bytes)
      .add("kv_cache_bytes", kv_bytes(config, prompt + decode))
      .print();
  if (options.profile) {
    // The decode step alone, as timed above: from a one-token context on.
    start_sequence();
    int64_t steps = 0;
    print_step_profile(
        "generate",
        [&] {
          if (++steps > decode) {  // keep the cache within its capacity
            start_sequence();
            steps = 1;
          }
          model.forward(step_ids, forward);
        },
        options.min_seconds, case_name + "_decode_step");
  }
}

void bench_process(const std::string& path, const llama::LlamaConfig& config, const std::string& name, int threads,
                   int64_t file_bytes, const GgufBenchOptions& options) {
  Generator generator(12);
  const std::string short_prompt = ids_text(randint(3, config.vocab_size, {16}, generator));
  const std::string long_prompt = ids_text(randint(3, config.vocab_size, {options.prompt_tokens}, generator));
  // Time to the first token: the whole process (start, mapping, tokenizer, a 16-token prefill,
  // one token), best of 3 (the first run also warms the page cache).
  std::vector<double> first_token;
  for (int run = 0; run < 3; ++run) {
    const ChildRun child =
        run_self({"generate", "--model", path, "--prompt-ids", short_prompt, "--max-new-tokens", "1"}, threads);
    LAMINA_CHECK(child.status == 0, "bench generate: `lamina generate --model ", path, "` failed (exit ", child.status, ")");
    first_token.push_back(child.seconds);
  }
  const ChildRun full = run_self({"generate", "--model", path, "--prompt-ids", long_prompt, "--max-new-tokens",
                                  std::to_string(options.decode_tokens), "--no-stop"},
                                 threads);
  LAMINA_CHECK(full.status == 0, "bench generate: `lamina generate --model ", path, "` failed (exit ", full.status, ")");
  const int64_t kv = kv_bytes(config, options.prompt_tokens + options.decode_tokens);
  const double rss_target = 1.1 * double(file_bytes + kv);
  JsonLine()
      .add("bench", "generate")
      .add("case", name + "_process")
      .add("threads", threads)
      .add("first_token_seconds", *std::min_element(first_token.begin(), first_token.end()))
      .add("first_token_target_seconds", 0.5)
      .add("prompt_tokens", options.prompt_tokens)
      .add("decode_tokens", options.decode_tokens)
      .add("generate_seconds", full.seconds)
      .add("peak_rss_bytes", full.peak_rss_bytes)
      .add("file_bytes", file_bytes)
      .add("kv_cache_bytes", kv)
      .add("rss_target_bytes", int64_t(rss_target))
      .add("meets_rss_target", double(full.peak_rss_bytes) <= rss_target)
      .print();
}

}  // namespace

void bench_gguf_model(const std::string& path, const std::string& name, const GgufBenchOptions& options) {
  const int64_t file_bytes = int64_t(std::filesystem::file_size(path));
  std::string why;
  const gguf::File file = gguf::File::open(path);
  if (!gguf::llama_gguf_computes_quantized(file, &why)) {
    JsonLine().add("bench", "generate").add("case", name + "_t*").add("skipped", "not computable as stored: " + why).print();
    return;
  }
  const auto model = gguf::load_llama_gguf_quantized(file);
  LAMINA_CHECK(options.prompt_tokens + options.decode_tokens <= model->config().max_position_embeddings,
               "bench generate: ", options.prompt_tokens, " + ", options.decode_tokens, " tokens exceed ", path,
               "'s context of ", model->config().max_position_embeddings);
  for (int threads : options.threads) bench_in_process(*model, name, threads, file_bytes, options);
  if (options.process)
    for (int threads : options.threads) bench_process(path, model->config(), name, threads, file_bytes, options);
}

llama::LlamaConfig synthetic_1b_config() {
  // Llama 3.2 1B's shape: 16 layers of width 2048, 32 query heads on 8 KV heads of 64, FFN 8192,
  // the Llama 3 vocabulary, tied embeddings, RoPE base 500000.
  llama::LlamaConfig config;
  config.vocab_size = 128256;
  config.hidden_size = 2048;
  config.intermediate_size = 8192;
  config.num_hidden_layers = 16;
  config.num_attention_heads = 32;
  config.num_key_value_heads = 8;
  config.head_dim = 64;
  config.max_position_embeddings = 8192;
  config.rope_theta = 500000;
  config.tie_word_embeddings = true;
  config.bos_token_id = 128000;
  config.eos_token_ids = {128001};
  config.dtype = DType::f32;
  config.initializer_range = 0.02;
  return config;
}

void write_synthetic_1b_gguf(const std::string& path) {
  std::fprintf(stderr, "bench generate: writing a random 1.24B-parameter Llama (Q4_0) to %s (once; ~5 GB of memory "
               "while it is made)\n", path.c_str());
  auto model = std::make_shared<llama::LlamaForCausalLM>(synthetic_1b_config(), DType::f32);
  Generator generator(7);
  model->init_parameters(generator);
  gguf::Writer writer;
  gguf::add_llama_model(writer, *model, gguf::TensorType::q4_0, "synthetic-llama-1b");
  gguf::add_llama_token_ids(writer, model->config());
  writer.write(path);
}

}  // namespace lamina::cli
