// `lamina bench generate`: prefill and decode throughput of Llama models on the CPU.
//
// Cases: stories260k (when its folder is given or found), a randomly initialised
// ~125M-parameter Llama-3-shaped model (dim 768, 12 layers, 12 heads, 4 kv heads, ffn 2048,
// vocab 32768, untied head), and --model PATH (a Hugging Face folder or a GGUF file, e.g.
// SmolLM2 from tools/fetch-models.sh) at batches 1, 8 and 32. Decode reads every weight once per step, so its floor is
// weight_bytes / memory bandwidth; the bench reports that bound (from a memcpy measured in the
// same run) and the ratio bound / measured (target >= 1/1.5: within 1.5x of the bound).
// Slot reuse (`<model>_slots8`, stories260k and --model): 16 prompts of 8 to 128 tokens through
// generate_batch with 8 slots and up to 32 new tokens each (no stop tokens), as new tokens/s of
// the whole job, prefills included, against the same prompts generated one at a time. One timed
// run each (after a warm-up on a small model only): the job is long enough to time on its own.
// Long context (`<model>_long<N>_b<B>_<cache>`, a random KV-heavy model and --model; --context
// N, 0 skips them): a prefill of N tokens, then decode steps with the dense KV cache and with the ring
// caches of sparse plans (uniform sink + window at 50% and 25% of the cache, --attention-plan),
// decode tokens/s and the cache's bytes side by side.
#include <chrono>
#include <filesystem>
#include <optional>

#include "autograd/autograd.h"
#include "models/generate/batch.h"
#include "models/generate/generate.h"
#include "models/llama/sparse_kv_cache.h"
#include "models/sparse/moa_plan.h"
#include "tensor/parallel.h"
#include "tools/args.h"
#include "tools/bench_generate_gguf.h"
#include "tools/bench_support.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "train/metrics.h"

namespace lamina::cli {
namespace {

constexpr double kDecodeTarget = 1.0 / 1.5;

// The bytes of a KV cache of `tokens` positions for `batch` sequences (f32 keys and values).
int64_t kv_cache_bytes(const llama::LlamaConfig& config, int64_t batch, int64_t tokens) {
  return 2 * config.num_hidden_layers * batch * tokens * config.num_key_value_heads * config.head_dim * int64_t(sizeof(float));
}

llama::LlamaConfig config_125m() {
  llama::LlamaConfig config;
  config.vocab_size = 32768;
  config.hidden_size = 768;
  config.intermediate_size = 2048;
  config.num_hidden_layers = 12;
  config.num_attention_heads = 12;
  config.num_key_value_heads = 4;
  config.head_dim = 64;
  config.max_position_embeddings = 2048;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  return config;
}

// A model whose decode step reads more KV cache than weights at a few thousand tokens (24M
// parameters, 96 MB; 32 KB of keys and values per token): the long-context cases, where what a
// sparse plan saves is the cache. Dim 512, 8 layers, 8 heads each with its own KV head, ffn 1024,
// vocab 4096.
llama::LlamaConfig config_kv_heavy(int64_t context) {
  llama::LlamaConfig config = config_125m();
  config.vocab_size = 4096;
  config.hidden_size = 512;
  config.intermediate_size = 1024;
  config.num_hidden_layers = 8;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 8;
  config.max_position_embeddings = std::max<int64_t>(2048, context);
  return config;
}

// The bytes a decode step reads of weights: the parameters, and the matrices kept in GGUF blocks.
int64_t model_weight_bytes(const llama::LlamaForCausalLM& model) {
  int64_t bytes = 0;
  for (const Tensor& p : model.parameters()) bytes += int64_t(p.nbytes());
  const auto matrix_bytes = [](const ops::GgufMatrix& m) {
    return m.rows * (m.cols / int64_t(ops::ggml::block_elements(m.type))) * int64_t(ops::ggml::block_bytes(m.type));
  };
  for (const auto& [path, linear] : nn::named_linears(model))
    if (const ops::GgufWeight* w = linear->base_gguf()) bytes += matrix_bytes(w->matrix);
  if (const ops::GgufWeight* table = model.model->embed_tokens->quantized_table()) bytes += matrix_bytes(table->matrix);
  return bytes;
}

struct Settings {
  int threads = 1;
  double min_seconds = 0.5;
  int64_t prompt_tokens = 128;
  int64_t decode_tokens = 32;
};

// Prefill of `batch` prompts, then `decode_tokens` single-token steps, timed separately.
void bench_model(const std::string& name, const llama::LlamaForCausalLM& model, int64_t batch, double memcpy_gbps,
                 const Settings& settings) {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig& config = model.config();
  const int64_t prompt = std::min(settings.prompt_tokens, config.max_position_embeddings - settings.decode_tokens);
  Generator generator(1);
  const Tensor ids = randint(3, config.vocab_size, {batch, prompt}, generator);
  llama::ForwardOptions options;
  options.last_position_only = true;

  const Timing prefill = measure(
      [&] {
        llama::KvCache cache(config, batch, prompt + settings.decode_tokens);
        options.cache = &cache;
        model.forward(ids, options);
      },
      settings.min_seconds);
  const Tensor step_ids = randint(3, config.vocab_size, {batch, 1}, generator);
  // The decode steps alone, each run after an untimed prefill of a fresh cache.
  std::optional<llama::KvCache> cache;
  const Timing decode = measure_after(
      [&] {
        cache.emplace(config, batch, prompt + settings.decode_tokens);
        options.cache = &*cache;
        model.forward(ids, options);
      },
      [&] {
        for (int64_t step = 0; step < settings.decode_tokens; ++step) model.forward(step_ids, options);
      },
      settings.min_seconds);
  const double step_seconds = decode.median_seconds / double(settings.decode_tokens);
  const int64_t weight_bytes = model_weight_bytes(model);
  const double bound_seconds = double(weight_bytes) / (memcpy_gbps * 1e9);
  JsonLine line;
  line.add("bench", "generate")
      .add("case", name + "_b" + std::to_string(batch))
      .add("threads", settings.threads)
      .add("batch", batch)
      .add("prompt_tokens", prompt)
      .add("decode_tokens", settings.decode_tokens)
      .add("parameters", model.parameter_count())
      .add("dtype", dtype_name(model.dtype()))
      .add("stat", "median")
      .add("prefill_tokens_per_s", double(batch * prompt) / prefill.median_seconds)
      .add("decode_tokens_per_s", double(batch) / step_seconds)
      .add("decode_step_ms", step_seconds * 1e3)
      .add("weight_bytes", weight_bytes)
      .add("kv_cache_bytes", kv_cache_bytes(config, batch, prompt + settings.decode_tokens))
      .add("memcpy_gbps", memcpy_gbps)
      .add("bound_step_ms", bound_seconds * 1e3)
      .add("ratio_to_bound", bound_seconds / step_seconds);
  // The bandwidth bound is the target at batch 1; a batch of 8 does 8x the arithmetic per
  // weight read and is reported for comparison.
  if (batch == 1) line.add("target", kDecodeTarget).add("meets_target", bound_seconds / step_seconds >= kDecodeTarget);
  line.add("peak_rss_bytes", train::peak_rss_bytes()).print();
}

// The slot-reuse job: every prompt through generate_batch at `slots`, then at 1 slot.
void bench_slot_reuse(const std::string& name, const llama::LlamaForCausalLM& model, const Settings& settings) {
  const llama::LlamaConfig& config = model.config();
  const int64_t new_tokens = std::min<int64_t>(32, config.max_position_embeddings / 4);
  const int64_t longest = std::min<int64_t>(128, config.max_position_embeddings - new_tokens);
  Generator generator(2);
  std::vector<std::vector<int64_t>> prompts;
  int64_t prompt_tokens = 0;
  for (int64_t i = 0; i < 16; ++i) {
    const int64_t length = std::max<int64_t>(1, 8 + (i * 37) % std::max<int64_t>(1, longest - 7));
    const Tensor ids = randint(3, config.vocab_size, {length}, generator, DType::i64);
    prompts.emplace_back(ids.data<int64_t>(), ids.data<int64_t>() + length);
    prompt_tokens += length;
  }
  generate::GenerateOptions options;
  options.max_new_tokens = new_tokens;
  options.use_config_stop_tokens = false;
  const auto tokens_per_second = [&](int64_t slots, generate::BatchResult& result) {
    generate::BatchOptions batch;
    batch.slots = slots;
    const auto start = std::chrono::steady_clock::now();
    result = generate::generate_batch(model, prompts, options, batch);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t produced = 0;
    for (const auto& tokens : result.tokens) produced += int64_t(tokens.size());
    return double(produced) / std::max(1e-9, seconds);
  };
  generate::BatchResult batched, alone;
  if (model.parameter_count() < 10'000'000) tokens_per_second(8, batched);  // warm-up: caches, thread pool
  const double batched_rate = tokens_per_second(8, batched);
  const double alone_rate = tokens_per_second(1, alone);
  JsonLine()
      .add("bench", "generate")
      .add("case", name + "_slots8")
      .add("threads", settings.threads)
      .add("prompts", int64_t(prompts.size()))
      .add("prompt_tokens", prompt_tokens)
      .add("max_new_tokens", new_tokens)
      .add("slots", int64_t(8))
      .add("reused_slots", batched.reused_slots)
      .add("decode_steps", batched.decode_steps)
      .add("stat", "single run")
      .add("new_tokens_per_s", batched_rate)
      .add("one_slot_new_tokens_per_s", alone_rate)
      .add("speedup", batched_rate / alone_rate)
      .add("peak_rss_bytes", train::peak_rss_bytes())
      .print();
}

// Long-context decoding: a prefill of `context` tokens at batch `batch`, then decode steps, with
// the dense KV cache and with the per-head ring caches of sparse plans (llama::SparseKvCache):
// uniform sink 64 + window plans keeping 50% and 25% of the cache, and the --attention-plan
// file's plan when given. One timed run each (a long prefill is its own warm-up); the decode
// steps are timed alone. kv_cache_bytes is what each cache allocates.
void bench_long_context(const std::string& name, llama::LlamaForCausalLM& model, int64_t context, int64_t batch,
                        const std::optional<sparse::MoaPlan>& own_plan, const Settings& settings) {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig& config = model.config();
  const int64_t steps = settings.decode_tokens;
  LAMINA_CHECK(context + steps <= config.max_position_embeddings, "lamina bench generate: --context ", context,
               " and ", steps, " new tokens do not fit ", name, "'s context of ", config.max_position_embeddings);
  Generator generator(3);
  const Tensor ids = randint(3, config.vocab_size, {batch, context}, generator);
  const Tensor step_ids = randint(3, config.vocab_size, {batch, 1}, generator);
  struct Variant {
    std::string label;
    std::optional<llama::SparseAttention> plan;
    double density = 1.0;  // of the KV cache at context + steps
  };
  std::vector<Variant> variants{{"dense", std::nullopt, 1.0}};
  const int64_t length = context + steps;
  for (const double keep : {0.5, 0.25}) {
    const int64_t window = std::max<int64_t>(0, int64_t(keep * double(length)) - sparse::kMoaSink);
    variants.push_back({str_cat("uniform_kv", int(keep * 100)), llama::SparseAttention::uniform(config, sparse::kMoaSink, window),
                        double(std::min(length, sparse::kMoaSink + window)) / double(length)});
  }
  if (own_plan)
    variants.push_back({"attention_plan", own_plan->resolve(length), own_plan->density(length, sparse::DensityMeasure::kv_cache)});
  std::optional<double> dense_rate;
  for (const Variant& variant : variants) {
    std::optional<llama::KvCache> cache;
    std::optional<llama::SparseKvCache> rings;
    llama::ForwardOptions options;
    options.last_position_only = true;
    model.model->sparse_attention = variant.plan.value_or(llama::SparseAttention{});
    const auto start = std::chrono::steady_clock::now();
    if (variant.plan) {
      rings.emplace(config, *variant.plan, batch, length, model.dtype());
      options.sparse_cache = &*rings;
    } else {
      cache.emplace(config, batch, length, model.dtype());
      options.cache = &*cache;
    }
    for (int64_t begin = 0; begin < context; begin += 512)
      model.forward(ids.slice(1, begin, std::min(context, begin + 512)), options);
    const double prefill_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto decode_start = std::chrono::steady_clock::now();
    for (int64_t step = 0; step < steps; ++step) model.forward(step_ids, options);
    const double decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - decode_start).count();
    const double rate = double(batch * steps) / decode_seconds;
    if (!dense_rate) dense_rate = rate;
    const int64_t kv_bytes = rings ? rings->bytes() : kv_cache_bytes(config, batch, length);
    JsonLine()
        .add("bench", "generate")
        .add("case", str_cat(name, "_long", context, "_b", batch, "_", variant.label))
        .add("threads", settings.threads)
        .add("batch", batch)
        .add("prompt_tokens", context)
        .add("decode_tokens", steps)
        .add("kv_density", variant.density)
        .add("stat", "single run")
        .add("prefill_tokens_per_s", double(batch * context) / prefill_seconds)
        .add("decode_tokens_per_s", rate)
        .add("decode_speedup_vs_dense", rate / *dense_rate)
        .add("kv_cache_bytes", kv_bytes)
        .add("peak_rss_bytes", train::peak_rss_bytes())
        .print();
  }
  model.model->sparse_attention = {};
}

}  // namespace

int run_bench_generate(const Arguments& args) {
  FlagParser parser("lamina bench generate", "Prefill and decode tokens/s of Llama models on the CPU (JSON lines).");
  parser.add_option("stories", "DIR", "the stories260k folder", "../shared/assets/stories260k");
  parser.add_option("model", "PATH", "also a model of yours: a Hugging Face folder or a Llama GGUF file (batches 1, 8, 32)");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_option("filter", "TEXT", "only cases whose name contains TEXT");
  parser.add_switch("quick", "shorter timing runs (noisier)");
  parser.add_option("context", "N",
                    "long-context cases (random_kv_heavy_long*, and the --model's): prefill N tokens, then decode with the "
                    "dense cache and with sparse plans' ring caches (0 = skip them)",
                    "2048");
  parser.add_option("context-batch", "B", "sequences decoded together in the long-context cases", "4");
  parser.add_option("attention-plan", "FILE", "a MoA plan (lamina sparse plan) also run in the --model's long-context cases");
  parser.add_option("prompt-tokens", "N", "a GGUF --model's cases (<name>_t1, _t2, _process): prompt tokens (llama-bench's pp512)", "512");
  parser.add_option("decode-tokens", "N", "a GGUF --model's cases: decode steps (llama-bench's tg128)", "128");
  parser.add_switch("profile", "a GGUF --model's cases: also one line per op of the decode step, largest first");
  parser.add_switch("no-process", "a GGUF --model's cases: skip <name>_process (a fresh `lamina generate` process: time "
                    "to the first token, peak RSS)");
  parser.add_option("synthetic-1b", "FILE", "also a random Llama of Llama 3.2 1B's shape in Q4_0 (case synthetic_1b_q4_0): "
                    "read from FILE, written there first when absent (~0.7 GB; ~5 GB of memory while made)");
  if (!parser.parse(args)) return 0;
  Settings settings;
  settings.threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  set_num_threads(settings.threads);
  if (parser.is_set("quick")) {
    settings.min_seconds = 0.05;
    settings.decode_tokens = 16;
  }
  const int64_t context = parser.int_value("context", 2048, 0, int64_t(1) << 20);
  const int64_t context_batch = parser.int_value("context-batch", 4, 1, 1024);
  const std::string filter = parser.value("filter").value_or("");
  auto selected = [&](const std::string& name) { return filter.empty() || name.find(filter) != std::string::npos; };
  const std::optional<std::string> own_model = parser.value("model");
  const std::string own_name = own_model ? std::filesystem::path(*own_model).stem().string() : "";
  const std::optional<std::string> synthetic = parser.value("synthetic-1b");
  if (!selected("stories260k") && !selected("random_125m") && !selected("random_kv_heavy") &&
      !(own_model && selected(own_name)) && !(synthetic && selected("synthetic_1b_q4_0")))
    throw UsageError("lamina bench generate: --filter '" + filter + "' matches no case (the cases: stories260k, random_125m, "
                     "random_kv_heavy, synthetic_1b_q4_0 and the --model file's name)",
                     "run 'lamina bench generate --help'");
  const std::string stories = parser.value("stories").value_or("../shared/assets/stories260k");
  // Only the default folder may be absent (a checkout without the assets); a folder named on
  // the command line is meant to be measured, and load() says what is wrong with it.
  if (selected("stories260k") && parser.is_set("stories")) {
    std::error_code error;
    LAMINA_CHECK(std::filesystem::is_directory(stories, error), "lamina bench generate: --stories ", stories,
                 " is not a folder", std::filesystem::exists(stories, error) ? "" : " (it does not exist)");
  }
  const double memcpy_gbps = memcpy_bandwidth_gbps(settings.threads, settings.min_seconds);

  if (selected("stories260k")) {
    if (parser.is_set("stories") || std::filesystem::exists(std::filesystem::path(stories) / "config.json")) {
      const auto model = llama::LlamaForCausalLM::load(stories);
      for (int64_t batch : {1, 8}) bench_model("stories260k", *model, batch, memcpy_gbps, settings);
      bench_slot_reuse("stories260k", *model, settings);
    } else {
      JsonLine().add("bench", "generate").add("case", "stories260k").add("skipped", "no folder at " + stories).print();
    }
  }
  GgufBenchOptions gguf_options;
  gguf_options.prompt_tokens = parser.int_value("prompt-tokens", 512, 1, int64_t(1) << 20);
  gguf_options.decode_tokens = parser.int_value("decode-tokens", 128, 1, int64_t(1) << 20);
  gguf_options.threads = settings.threads == 1 ? std::vector<int>{1} : std::vector<int>{1, settings.threads};
  gguf_options.min_seconds = settings.min_seconds;
  gguf_options.profile = parser.is_set("profile");
  gguf_options.process = !parser.is_set("no-process");
  if (own_model && selected(own_name) && is_gguf_file(*own_model)) bench_gguf_model(*own_model, own_name, gguf_options);
  if (synthetic && selected("synthetic_1b_q4_0")) {
    if (!std::filesystem::exists(*synthetic)) write_synthetic_1b_gguf(*synthetic);
    bench_gguf_model(*synthetic, "synthetic_1b_q4_0", gguf_options);
  }
  if (own_model && selected(own_name)) {
    const auto model = load_model_on(*own_model, Device::cpu());
    std::optional<sparse::MoaPlan> plan;
    if (const std::optional<std::string> path = parser.value("attention-plan")) {
      plan = sparse::MoaPlan::read(*path);
      plan->check_fits(model->config(), "--attention-plan " + *path);
    }
    for (int64_t batch : {1, 8, 32}) bench_model(own_name, *model, batch, memcpy_gbps, settings);
    bench_slot_reuse(own_name, *model, settings);
    if (context > 0) bench_long_context(own_name, *model, context, context_batch, plan, settings);
  }
  if (selected("random_125m")) {
    auto model = std::make_shared<llama::LlamaForCausalLM>(config_125m(), DType::f32);
    Generator generator(0);
    model->init_parameters(generator);
    for (int64_t batch : {1, 8}) bench_model("random_125m", *model, batch, memcpy_gbps, settings);
  }
  if (context > 0 && selected("random_kv_heavy")) {
    auto model = std::make_shared<llama::LlamaForCausalLM>(config_kv_heavy(context + settings.decode_tokens), DType::f32);
    Generator generator(0);
    model->init_parameters(generator);
    bench_long_context("random_kv_heavy", *model, context, context_batch, std::nullopt, settings);
  }
  JsonLine().add("bench", "generate").add("case", "machine").add("threads", settings.threads)
      .add("memcpy_gbps", memcpy_gbps).add("peak_rss_bytes", train::peak_rss_bytes()).print();
  return 0;
}

}  // namespace lamina::cli
