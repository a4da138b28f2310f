// `lamina bench preference`: optimizer steps of preference training on the model of `lamina
// bench train` (bench_train_config: ~30M parameters), so that their tokens/s compare with a plain
// training step: offline DPO (the sigmoid loss of train/preference_trainer.h) and online GRPO
// (train/online_trainer.h: sampling, then the update).
//
// A DPO step takes --pairs pairs (default 2) of random token rows of --seq-len tokens (default
// 256: half prompt, half completion), so its policy forward sees 2 x pairs rows, the 4 x 256
// tokens of a `bench train` step. A GRPO step takes --prompts random prompts (default 1) of half
// --seq-len and samples --generations completions of each (default 4, at temperature 1, up to the
// other half: a model of random weights rarely stops early), then puts the prompts x generations
// rows through the policy's forward and backward: 4 x 256 tokens again. Cases:
//   llama_30m_dpo_step        full fine-tuning, the reference a frozen copy of the model
//   llama_30m_dpo_lora_step   LoRA r=16 on every projection, the reference the base with the
//                             adapters off (no second copy)
//   llama_30m_grpo_step       full fine-tuning; GRPO's defaults (beta 0: no reference)
//   llama_30m_grpo_lora_step  the LoRA adapters above
// Each line reports tokens/s (DPO: the policy's chosen + rejected tokens per step; GRPO: the
// prompt and completion tokens of the step's rows), the step's time, and how it splits:
//   DPO   reference_seconds is the reference's forward over the step's pairs, timed alone exactly
//         as the objective runs it (pair by pair, without gradients); policy_seconds is the rest
//         (the policy's forward and backward, the loss and AdamW), the step's median less it.
//   GRPO  sampling_seconds is the batched generation of the step's completions, timed alone as
//         the objective runs it (one slot a row, eval mode, without gradients); update_seconds is
//         the rest (the reward, the policy's forward and backward over the rows, the loss and
//         AdamW), the step's median less it; sampled_tokens_per_s is the generation's own rate.
// The GRPO reward is a stand-in rule (the share of even ids in a completion): the bench has no
// tokenizer to read answers with, and a rule costs nothing next to the model either way.
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "models/generate/batch.h"
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
#include "train/online_trainer.h"
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

// The GRPO cases' stand-in reward: the share of even ids among a completion's tokens, read from
// the text the decoder below makes of them (one letter a token: 'e' for an even id, 'o' for an
// odd one). It varies within a group, so that the advantages are not all zero.
class EvenTokenShare : public train::Reward {
 public:
  train::RewardScores score(const std::vector<train::RewardInput>& batch) override {
    train::RewardScores scores;
    for (const train::RewardInput& input : batch) {
      const double even = double(std::count(input.completion.begin(), input.completion.end(), 'e'));
      scores.total.push_back(input.completion.empty() ? 0.0 : even / double(input.completion.size()));
    }
    return scores;
  }
  std::string spec() const override { return "bench:even_token_share"; }
};

std::string parity_letters(const std::vector<int32_t>& ids) {
  std::string text;
  for (const int32_t id : ids) text += id % 2 == 0 ? 'e' : 'o';
  return text;
}

// `count` prompts of `tokens` random ids (the special ones left out), with no stop tokens of
// their own: a completion runs until the model's EOS or the length limit.
std::vector<train::OnlinePrompt> random_prompts(int64_t count, int64_t tokens, int64_t vocab, Generator& generator) {
  std::vector<train::OnlinePrompt> out;
  for (int64_t i = 0; i < count; ++i) {
    const std::vector<int64_t> drawn = randint(3, vocab, {tokens}, generator).to_vector<int64_t>();
    train::OnlinePrompt prompt;
    prompt.ids.assign(drawn.begin(), drawn.end());
    prompt.prompt = "bench prompt";
    prompt.line = i + 1;
    out.push_back(std::move(prompt));
  }
  return out;
}

// Samples the GRPO step's completions as OnlineObjective does (one slot a row, G rows a prompt,
// eval mode, without gradients, the completion limit and temperature of `online`), seeded by
// `seed`; returns the tokens sampled.
int64_t sample_like_grpo(llama::LlamaForCausalLM& model, const std::vector<train::OnlinePrompt>& prompts,
                         const train::OnlineOptions& online, uint64_t seed) {
  std::vector<std::vector<int64_t>> inputs;
  generate::BatchOptions batch;
  for (const train::OnlinePrompt& prompt : prompts)
    for (int64_t g = 0; g < online.num_generations; ++g) {
      inputs.emplace_back(prompt.ids.begin(), prompt.ids.end());
      batch.prompt_stop_tokens.push_back(prompt.stop_tokens);
    }
  batch.slots = int64_t(inputs.size());
  generate::GenerateOptions generation;
  generation.max_new_tokens = online.max_new_tokens;
  generation.sampling.temperature = online.temperature;
  generation.sampling.seed = seed;
  autograd::NoGradGuard no_grad;
  model.eval();
  const generate::BatchResult result = generate::generate_batch(model, inputs, generation, batch);
  model.train();
  int64_t sampled = 0;
  for (const std::vector<int64_t>& tokens : result.tokens) sampled += int64_t(tokens.size());
  return sampled;
}

}  // namespace

int run_bench_preference(const Arguments& args) {
  FlagParser parser("lamina bench preference",
                    "Preference-training step throughput on the ~30M-parameter Llama of bench train (JSON lines): a DPO "
                    "step and its split between the policy and the reference, a GRPO step and its split between "
                    "sampling and the update.");
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N", "cpu");
  parser.add_option("precision", "P", "f32 or bf16 (f32 master weights); auto = bf16 on CUDA and on CPUs with a bf16 fast path (AMX, or AVX-512 BF16 on AMD cores, which run it at the f32 FMA rate), f32 elsewhere", "auto");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_option("pairs", "N", "DPO: chosen/rejected pairs per step (2 x N rows)", "2");
  parser.add_option("prompts", "N", "GRPO: prompts per step", "1");
  parser.add_option("generations", "G", "GRPO: completions sampled per prompt (N x G rows; at least 2)", "4");
  parser.add_option("seq-len", "N",
                    "tokens per row: half prompt, half completion (GRPO: the completion half is sampled)", "256");
  parser.add_option("filter", "TEXT", "only cases whose name contains TEXT");
  parser.add_switch("quick", "shorter timing runs (noisier)");
  if (!parser.parse(args)) return 0;
  const int threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  set_num_threads(threads);
  const int64_t pairs = parser.int_value("pairs", 2, 1, 1024);
  const int64_t prompts = parser.int_value("prompts", 1, 1, 1024);
  const int64_t generations = parser.int_value("generations", 4, 2, 1024);
  const int64_t seq_len = parser.int_value("seq-len", 256, 2, bench_train_config().max_position_embeddings);
  const double min_seconds = parser.is_set("quick") ? 0.5 : 3.0;
  const std::string filter = parser.value("filter").value_or("");

  struct Case {
    const char* name;
    bool grpo, lora;
  };
  const Case cases[] = {{"llama_30m_dpo_step", false, false},
                        {"llama_30m_dpo_lora_step", false, true},
                        {"llama_30m_grpo_step", true, false},
                        {"llama_30m_grpo_lora_step", true, true}};
  std::vector<Case> selected;
  std::string names;
  for (const Case& c : cases) {
    names += (names.empty() ? "" : ", ") + std::string(c.name);
    if (filter.empty() || std::string(c.name).find(filter) != std::string::npos) selected.push_back(c);
  }
  if (selected.empty())
    throw UsageError("lamina bench preference: --filter '" + filter + "' matches no case (the cases: " + names + ")",
                     "run 'lamina bench preference --help'");

  train::TrainOptions base_options;  // the device and dtype rules of `lamina train`
  base_options.device = parser.value("device").value_or("cpu");
  base_options.precision = parser.value("precision").value_or("auto");
  base_options.seq_len = seq_len;
  base_options.progress = false;
  const Device device = base_options.resolved_device();
  const DType dtype = base_options.compute_dtype();
  const llama::LlamaConfig config = bench_train_config();
  const std::optional<double> peak_flops = train::peak_flops_per_s(device_name(device), dtype);

  for (const Case& c : selected) {
    auto model = std::make_shared<llama::LlamaForCausalLM>(config);
    Generator generator(0);
    model->init_parameters(generator);
    model->to(device, dtype);
    train::TrainOptions options = base_options;
    options.lora = c.lora ? kLoraSpec : "";
    options.batch_size = c.grpo ? prompts : pairs;
    if (c.lora) nn::apply_lora(*model, train::parse_lora_spec(kLoraSpec));
    std::unique_ptr<train::Objective> objective;
    train::PreferenceObjective* dpo = nullptr;
    train::OnlineObjective* grpo = nullptr;
    // GRPO's prompts, as the objective holds them, for timing their sampling alone.
    std::vector<train::OnlinePrompt> grpo_prompts;
    train::OnlineOptions online;
    if (c.grpo) {
      online.loss = "grpo";
      online.num_generations = generations;
      online.temperature = 1.0;
      online.max_new_tokens = seq_len - seq_len / 2;
      grpo_prompts = random_prompts(prompts, seq_len / 2, config.vocab_size, generator);
      auto made = std::make_unique<train::OnlineObjective>(online, options, grpo_prompts,
                                                           std::make_unique<EvenTokenShare>(), parity_letters);
      grpo = made.get();
      objective = std::move(made);
    } else {
      train::PreferenceOptions preference;
      preference.loss = "sigmoid";
      preference.reference = c.lora ? train::ReferenceKind::adapters_off : train::ReferenceKind::copy;
      preference.truncation.max_length = seq_len;
      train::PreferenceData data;
      data.pairs = random_pairs(pairs, seq_len, config.vocab_size, generator);
      auto made = std::make_unique<train::PreferenceObjective>(preference, options, std::move(data));
      dpo = made.get();
      objective = std::move(made);
    }
    reset_peak_memory(device);
    objective->prepare(*model, options);  // makes DPO's copy: its memory counts in the case's peak
    std::vector<nn::NamedTensor> trained;
    for (const auto& named : model->named_parameters())
      if (named.second.requires_grad()) trained.push_back(named);
    train::AdamW optimizer(trained, {});
    int64_t step = 0, step_tokens = 0;
    const Timing step_timing = measure(
        [&] {
          step_tokens += objective->step(*model, ++step).tokens;
          optimizer.step(1e-6);
          optimizer.zero_grad();
          synchronize(device);  // a GPU step counts until its last kernel ends
        },
        min_seconds);
    // The part of the step timed alone: DPO's reference forward, GRPO's sampling.
    int64_t sampled_tokens = 0, samplings = 0;
    const Timing part_timing = measure(
        [&] {
          if (dpo) {
            for (int64_t k = 0; k < pairs; ++k) dpo->reference_logps(*model, size_t(k));
          } else {
            sampled_tokens += sample_like_grpo(*model, grpo_prompts, online, uint64_t(++samplings));
          }
          synchronize(device);
        },
        min_seconds);
    const double step_seconds = step_timing.median_seconds, part_seconds = part_timing.median_seconds;
    // DPO: the policy's rows, chosen and rejected; GRPO: the rows' prompt and completion tokens
    // as the steps had them (a completion that met the EOS early is shorter).
    const double tokens = c.grpo ? double(step_tokens) / double(step) : double(2 * pairs * seq_len);
    // DPO: the policy's forward and backward (6 x parameters x tokens) and the reference's
    // forward (2 x). GRPO: the update's forward and backward (6 x) and the sampling's forwards
    // over the same tokens, prompts prefilled and completions decoded (2 x).
    const double flops_per_s = 8.0 * double(config.parameter_count()) * tokens / step_seconds;
    JsonLine line;
    line.add("bench", "preference")
        .add("case", c.name)
        .add("device", device.str())
        .add("threads", threads)
        .add("parameters", config.parameter_count())
        .add("trained_parameters", model->parameter_count(true));
    if (dpo) {
      line.add("loss", "sigmoid").add("reference", train::reference_kind_name(dpo->reference())).add("pairs", pairs);
    } else {
      line.add("loss", "grpo")
          .add("reference", train::reference_kind_name(grpo->reference()))
          .add("prompts", prompts)
          .add("generations", generations)
          .add("max_new_tokens", online.max_new_tokens);
    }
    line.add("seq_len", seq_len)
        .add("dtype", dtype_name(dtype))
        .add("stat", "median")
        .add("runs", step_timing.runs)
        .add("step_seconds", step_seconds)
        .add("tokens_per_s", tokens / step_seconds)
        .add("gflops", flops_per_s / 1e9);
    if (peak_flops) line.add("mfu", flops_per_s / *peak_flops);
    if (dpo) {
      line.add("reference_seconds", part_seconds)
          .add("policy_seconds", step_seconds - part_seconds)
          .add("reference_share", part_seconds / step_seconds);
    } else {
      line.add("step_tokens", tokens)
          .add("sampling_seconds", part_seconds)
          .add("update_seconds", step_seconds - part_seconds)
          .add("sampling_share", part_seconds / step_seconds)
          .add("sampled_tokens_per_s", double(sampled_tokens) / double(samplings) / part_seconds);
    }
    line.add("peak_tensor_bytes", memory_stats(device).peak_bytes)
        .add("peak_rss_bytes", train::peak_rss_bytes())
        .print();
  }
  return 0;
}

}  // namespace lamina::cli
