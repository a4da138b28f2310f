// `lamina bench preference`: one optimizer step of DPO (the sigmoid loss of the offline
// preference objective, train/preference_trainer.h) on the model of `lamina bench train`
// (bench_train_config: ~30M parameters), so that its tokens/s compare with a plain training step.
//
// A step takes --pairs pairs (default 2) of random token rows of --seq-len tokens (default 256:
// half prompt, half completion), so its policy forward sees 2 x pairs rows, the 4 x 256 tokens
// of a `bench train` step. Cases:
//   llama_30m_dpo_step       full fine-tuning, the reference a frozen copy of the model
//   llama_30m_dpo_lora_step  LoRA r=16 on every projection, the reference the base with the
//                            adapters off (no second copy)
// Each line reports tokens/s (the policy's chosen + rejected tokens per step), the step's time,
// and how it splits: reference_seconds is the reference's forward over the step's pairs, timed
// alone exactly as the objective runs it (pair by pair, without gradients); policy_seconds is
// the rest of the step (the policy's forward and backward, the loss and AdamW), the step's median
// less the reference's. GRPO's sampling + update cases join with the online trainer.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/llama/model.h"
#include "nn/lora.h"
#include "tensor/cuda_runtime.h"
#include "tensor/parallel.h"
#include "tensor/storage.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"
#include "train/lora_spec.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/preference_trainer.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

constexpr const char* kLoraSpec = "r=16,alpha=32,targets=all-linear";  // as bench train's LoRA case

// `pairs` pairs of random ids: a prompt of half the row, chosen and rejected completions of the
// other half (the vocabulary's first ids, the special ones, left out).
std::vector<train::PreferencePair> random_pairs(int64_t pairs, int64_t seq_len, int64_t vocab, Generator& generator) {
  const int64_t prompt_tokens = seq_len / 2, completion_tokens = seq_len - prompt_tokens;
  const auto ids = [&](int64_t count) {
    const std::vector<int64_t> drawn = randint(3, vocab, {count}, generator).to_vector<int64_t>();
    return std::vector<int32_t>(drawn.begin(), drawn.end());
  };
  std::vector<train::PreferencePair> out;
  for (int64_t i = 0; i < pairs; ++i) {
    train::PreferencePair pair;
    pair.prompt = ids(prompt_tokens);
    pair.chosen = ids(completion_tokens);
    pair.rejected = ids(completion_tokens);
    pair.line = i + 1;
    out.push_back(std::move(pair));
  }
  return out;
}

}  // namespace

int run_bench_preference(const Arguments& args) {
  FlagParser parser("lamina bench preference",
                    "DPO-step throughput on the ~30M-parameter Llama of bench train, and the step's split between the "
                    "policy and the reference (JSON lines).");
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N", "cpu");
  parser.add_option("precision", "P", "f32 or bf16 (f32 master weights); auto = bf16 on CUDA, f32 on the CPU", "auto");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_option("pairs", "N", "chosen/rejected pairs per step (2 x N rows)", "2");
  parser.add_option("seq-len", "N", "tokens per row: half prompt, half completion", "256");
  parser.add_option("filter", "TEXT", "only cases whose name contains TEXT");
  parser.add_switch("quick", "shorter timing runs (noisier)");
  if (!parser.parse(args)) return 0;
  const int threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  set_num_threads(threads);
  const int64_t pairs = parser.int_value("pairs", 2, 1, 1024);
  const int64_t seq_len = parser.int_value("seq-len", 256, 2, bench_train_config().max_position_embeddings);
  const double min_seconds = parser.is_set("quick") ? 0.5 : 3.0;
  const std::string filter = parser.value("filter").value_or("");

  struct Case {
    const char* name;
    bool lora;
  };
  const Case cases[] = {{"llama_30m_dpo_step", false}, {"llama_30m_dpo_lora_step", true}};
  std::vector<Case> selected;
  for (const Case& c : cases)
    if (filter.empty() || std::string(c.name).find(filter) != std::string::npos) selected.push_back(c);
  if (selected.empty())
    throw UsageError("lamina bench preference: --filter '" + filter +
                         "' matches no case (the cases: llama_30m_dpo_step, llama_30m_dpo_lora_step)",
                     "run 'lamina bench preference --help'");

  train::TrainOptions options;  // the device and dtype rules of `lamina train`
  options.device = parser.value("device").value_or("cpu");
  options.precision = parser.value("precision").value_or("auto");
  options.batch_size = pairs;
  options.seq_len = seq_len;
  options.progress = false;
  const Device device = options.resolved_device();
  const DType dtype = options.compute_dtype();
  const llama::LlamaConfig config = bench_train_config();
  const std::optional<double> peak_flops = train::peak_flops_per_s(device_name(device), dtype);

  for (const Case& c : selected) {
    auto model = std::make_shared<llama::LlamaForCausalLM>(config);
    Generator generator(0);
    model->init_parameters(generator);
    model->to(device, dtype);
    options.lora = c.lora ? kLoraSpec : "";
    if (c.lora) nn::apply_lora(*model, train::parse_lora_spec(kLoraSpec));
    train::PreferenceOptions preference;
    preference.loss = "sigmoid";
    preference.reference = c.lora ? train::ReferenceKind::adapters_off : train::ReferenceKind::copy;
    preference.truncation.max_length = seq_len;
    train::PreferenceData data;
    data.pairs = random_pairs(pairs, seq_len, config.vocab_size, generator);
    train::PreferenceObjective objective(preference, options, std::move(data));
    reset_peak_memory(device);
    objective.prepare(*model, options);  // makes the copy: its memory counts in the case's peak
    std::vector<nn::NamedTensor> trained;
    for (const auto& named : model->named_parameters())
      if (named.second.requires_grad()) trained.push_back(named);
    train::AdamW optimizer(trained, {});
    int64_t step = 0;
    const Timing step_timing = measure(
        [&] {
          objective.step(*model, ++step);
          optimizer.step(1e-6);
          optimizer.zero_grad();
          synchronize(device);  // a GPU step counts until its last kernel ends
        },
        min_seconds);
    const Timing reference_timing = measure(
        [&] {
          for (int64_t k = 0; k < pairs; ++k) objective.reference_logps(*model, size_t(k));
          synchronize(device);
        },
        min_seconds);
    const double tokens = double(2 * pairs * seq_len);
    const double step_seconds = step_timing.median_seconds, reference_seconds = reference_timing.median_seconds;
    // The policy's forward and backward (6 x parameters x tokens) and the reference's forward (2 x).
    const double flops_per_s = 8.0 * double(config.parameter_count()) * tokens / step_seconds;
    JsonLine line;
    line.add("bench", "preference")
        .add("case", c.name)
        .add("device", device.str())
        .add("threads", threads)
        .add("parameters", config.parameter_count())
        .add("trained_parameters", model->parameter_count(true))
        .add("loss", "sigmoid")
        .add("reference", train::reference_kind_name(objective.reference()))
        .add("pairs", pairs)
        .add("seq_len", seq_len)
        .add("dtype", dtype_name(dtype))
        .add("stat", "median")
        .add("runs", step_timing.runs)
        .add("step_seconds", step_seconds)
        .add("tokens_per_s", tokens / step_seconds)
        .add("gflops", flops_per_s / 1e9);
    if (peak_flops) line.add("mfu", flops_per_s / *peak_flops);
    line.add("reference_seconds", reference_seconds)
        .add("policy_seconds", step_seconds - reference_seconds)
        .add("reference_share", reference_seconds / step_seconds)
        .add("peak_tensor_bytes", memory_stats(device).peak_bytes)
        .add("peak_rss_bytes", train::peak_rss_bytes())
        .print();
  }
  return 0;
}

}  // namespace lamina::cli
