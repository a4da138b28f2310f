// `lamina bench train`: one training step (forward, backward, AdamW) of a ~30M-parameter
// Llama-3-shaped model: dim 512, 8 layers, 8 heads / 4 kv heads, ffn 1536, vocab 8192, batch
// 4 x 256 tokens; full fine-tuning, LoRA (r=16 on every projection) and QLoRA (the same adapters
// on an NF4 base with double-quantized scales), each with and without activation checkpointing;
// on the CPU (f32 by default; --precision bf16 runs the AMX / AVX-512 BF16 GEMMs where the CPU
// has them) or a GPU (bf16 on f32 master weights by default, as `lamina train` runs there). The
// loss is the trainer's (train::causal_lm_loss: the fused head + cross-entropy on the CPU).
// Reports tokens/s, estimated FLOP/s (6 x parameters x tokens, the usual transformer estimate
// without the attention term), MFU where the GPU's peak is known, the peak of tensor memory of
// the case (weights, gradients, optimizer state and activations: what checkpointing, LoRA and
// QLoRA save) and the process's peak resident memory; then one line comparing checkpointed QLoRA
// (how it is run to save memory) with full fine-tuning (peak memory, target <= 1/3) and with LoRA
// (tokens/s, target >= 0.7x), the same ratios for QLoRA without checkpointing, and checkpointed
// QLoRA against checkpointed LoRA (the same recomputation on both sides: what the 4-bit base
// itself costs in speed).
//
// --profile (CPU) then runs each case's step again with the op profiler on (tensor/profiler.h)
// and prints, after the case's line, one line per profiled scope, largest self time first, and
// a line with the step's GFLOP/s against this CPU's measured peak (ops/cpu/peak_throughput.h).
// --case runs one case (the whole suite takes minutes).
//
// Under `lamina launch --nproc N` (or any RANK/WORLD_SIZE environment) each rank runs the step on
// its own --batch-size rows and the gradients are summed across the ranks as `lamina train` sums
// them (train/distributed/data_parallel.h, the CPU process group or NCCL); every rank runs the
// same fixed number of steps (--steps, after one warm-up), rank 0 prints the lines, and tokens/s
// counts every rank's tokens: the data-parallel scaling against one process.
#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "models/llama/model.h"
#include "nn/layers.h"
#include "nn/lora.h"
#include "ops/cpu/peak_throughput.h"
#include "ops/quant4.h"
#include "tensor/cuda_runtime.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"
#include "train/distributed/communicator.h"
#include "train/distributed/data_parallel.h"
#include "train/distributed/rendezvous.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/lora_spec.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

// One warm-up, then exactly `steps` timed runs of `body` (the same count on every rank).
Timing measure_steps(const std::function<void()>& body, int64_t steps) {
  body();
  std::vector<double> seconds;
  for (int64_t i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  Timing timing;
  timing.median_seconds = seconds[seconds.size() / 2];
  timing.best_seconds = seconds.front();
  timing.runs = steps;
  return timing;
}

}  // namespace
namespace {

struct Mode {
  const char* name;
  bool checkpointing, lora, qlora;
};
constexpr Mode modes[] = {{"llama_30m_step", false, false, false},
                          {"llama_30m_step_checkpointed", true, false, false},
                          {"llama_30m_lora_step", false, true, false},
                          {"llama_30m_lora_step_checkpointed", true, true, false},
                          {"llama_30m_qlora_step", false, true, true},
                          {"llama_30m_qlora_step_checkpointed", true, true, true}};

// The arithmetic ceiling a step's GFLOP/s is compared with: f32 FMA for f32 steps, the faster
// of the AVX-512 BF16 dot and the AMX tiles for bf16 steps (f32 FMA where the CPU has neither).
struct CpuPeak {
  double gflops = 0;
  const char* path = "";
};

CpuPeak cpu_peak(const ops::cpu::PeakThroughput& measured, DType dtype) {
  if (dtype == DType::bf16) {
    if (measured.amx_bf16_gflops > 0 && measured.amx_bf16_gflops >= measured.bf16_dot_gflops)
      return {measured.amx_bf16_gflops, "amx_bf16"};
    if (measured.bf16_dot_gflops > 0) return {measured.bf16_dot_gflops, "avx512_bf16_dot"};
  }
  return {measured.f32_fma_gflops, "f32_fma"};
}


}  // namespace

int run_bench_train(const Arguments& args) {
  FlagParser parser("lamina bench train", "Training-step throughput of a ~30M-parameter Llama (JSON lines).");
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N", "cpu");
  parser.add_option("precision", "P", "f32 or bf16 (f32 master weights); auto = bf16 on CUDA and on CPUs with a bf16 fast path (AMX, or AVX-512 BF16 on AMD cores, which run it at the f32 FMA rate), f32 elsewhere", "auto");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_option("batch-size", "N", "sequences per step", "4");
  parser.add_option("seq-len", "N", "tokens per sequence", "256");
  parser.add_switch("quick", "shorter timing runs (noisier)");
  std::vector<std::string> case_names;
  for (const Mode& mode : modes) case_names.push_back(mode.name);
  std::string case_list;
  for (const std::string& name : case_names) case_list += (case_list.empty() ? "" : ", ") + name;
  parser.add_option("case", "NAME", "run only this case, one of: " + case_list + " (no comparison line then)", "all");
  parser.add_option("steps", "N", "with several ranks: the timed steps every rank runs", "5");
  parser.add_switch("profile",
                    "CPU only: after each case's line, profile its step and print one line per op, largest first "
                    "(seconds_per_step and share: self time, without the ops timed inside it; step:other is the "
                    "time outside every op), then the step's GFLOP/s against this CPU's measured peak");
  if (!parser.parse(args)) return 0;
  const int threads = int(parser.int_value("threads", num_threads(), 1, 1024));
  set_num_threads(threads);
  const int64_t batch = parser.int_value("batch-size", 4, 1, 1024), seq_len = parser.int_value("seq-len", 256, 2, 1 << 16);
  const double min_seconds = parser.is_set("quick") ? 0.5 : 3.0;
  train::TrainOptions placement;  // the device and dtype rules of `lamina train`
  placement.device = parser.value("device").value_or("cpu");
  placement.precision = parser.value("precision").value_or("auto");
  const Device device = placement.resolved_device();
  const DType dtype = placement.compute_dtype();
  const std::optional<double> peak_flops = train::peak_flops_per_s(device_name(device), dtype);
  const bool profile = parser.is_set("profile");
  if (profile && !device.is_cpu())
    throw UsageError("lamina bench train: --profile times ops on the CPU (GPU kernels run asynchronously, so a "
                     "scope there would time their launch), not on " + device.str(),
                     "run 'lamina bench train --profile' without --device, or --device cpu");
  const std::string only_case = parser.value("case").value_or("all");
  const dist::DistributedEnv ranks = dist::distributed_env_from_environment();
  const int64_t ranked_steps = parser.int_value("steps", 5, 1, 1000000);
  if (ranks.world_size > 1 && profile)
    throw UsageError("lamina bench train: --profile times one process's ops, not a data-parallel step",
                     "run it without lamina launch");
  std::shared_ptr<dist::Communicator> communicator;
  if (ranks.world_size > 1) communicator = dist::make_communicator(ranks, device.is_cpu() ? "cpu" : "nccl");
  const bool prints = ranks.rank == 0;

  struct Result {
    double tokens_per_s = 0;
    int64_t peak_bytes = 0;
  };
  if (only_case != "all") {
    if (std::find(case_names.begin(), case_names.end(), only_case) == case_names.end()) {
      const std::string guess = closest_match(only_case, case_names);
      throw UsageError("lamina bench train: no case '" + only_case + "'" +
                           (guess.empty() ? std::string() : "; did you mean '" + guess + "'?"),
                       "run 'lamina bench train --help' to list the cases");
    }
  }
  // Measured before the cases, on the threads the steps use; the best of three runs, since other
  // work on the machine can only slow a run down.
  CpuPeak peak;
  for (int run = 0; profile && run < 3; ++run) {
    const CpuPeak measured = cpu_peak(ops::cpu::measure_peak_throughput(threads), dtype);
    if (measured.gflops > peak.gflops) peak = measured;
  }
  std::map<std::string, Result> results;
  for (const Mode& mode : modes) {
    if (only_case != "all" && only_case != mode.name) continue;
    auto model = std::make_shared<llama::LlamaForCausalLM>(bench_train_config());
    Generator generator(0);
    model->init_parameters(generator);
    model->set_gradient_checkpointing(mode.checkpointing);
    model->to(device, dtype);
    double base_bits = 0;
    if (mode.qlora) {
      nn::quantize_base_weights(*model);
      int64_t bytes = 0, values = 0;
      for (const auto& [path, linear] : nn::named_linears(*model))
        if (const ops::Quantized4Bit* q = linear->base_4bit()) bytes += q->storage_bytes(), values += q->numel();
      base_bits = 8.0 * double(bytes) / double(values);
    }
    if (mode.lora) nn::apply_lora(*model, train::parse_lora_spec("r=16,alpha=32,targets=all-linear"));
    std::vector<nn::NamedTensor> trained;
    for (const auto& named : model->named_parameters())
      if (named.second.requires_grad()) trained.push_back(named);
    train::AdamW optimizer(trained, {});
    std::unique_ptr<dist::DataParallel> data_parallel;
    if (communicator != nullptr) data_parallel = std::make_unique<dist::DataParallel>(communicator, trained);
    const Tensor ids = randint(3, 8192, {batch, seq_len}, generator, DType::i64, device);
    const Tensor targets = randint(3, 8192, {batch, seq_len}, generator, DType::i64, device);
    reset_peak_memory(device);
    const auto step = [&] {
      Tensor loss;
      {
        // Free while the profiler is off; on, its self time is what the forward runs outside
        // the timed ops.
        const profiler::Scope scope("step:forward");
        // The trainer's loss (the fused head + cross-entropy on the CPU), as a mean over tokens.
        const CrossEntropySum sum = train::causal_lm_loss(*model, ids, targets);
        loss = sum.loss_sum / double(sum.target_count);
      }
      if (data_parallel != nullptr) data_parallel->expect_final_backward();
      loss.backward();
      if (data_parallel != nullptr) data_parallel->finish();
      optimizer.step(1e-4);
      optimizer.zero_grad();
      synchronize(device);  // a GPU step counts until its last kernel ends
    };
    // Several ranks run the same number of steps (a step is a collective); one process runs
    // until min_seconds have passed.
    const dist::CommunicationStats sent_before = communicator != nullptr ? communicator->stats() : dist::CommunicationStats{};
    const Timing timing = communicator != nullptr ? measure_steps(step, ranked_steps) : measure(step, min_seconds);
    const double tokens = double(batch * seq_len * ranks.world_size);
    // The FLOP estimate of the whole model: LoRA still runs every base product forward and back.
    const double flops_per_s = 6.0 * double(bench_train_config().parameter_count()) * tokens / timing.median_seconds;
    const int64_t peak_bytes = memory_stats(device).peak_bytes;
    results[mode.name] = {tokens / timing.median_seconds, peak_bytes};
    if (!prints) continue;
    JsonLine line;
    line.add("bench", "train")
        .add("case", mode.name)
        .add("device", device.str())
        .add("threads", threads)
        .add("ranks", ranks.world_size)
        .add("parameters", bench_train_config().parameter_count())
        .add("trained_parameters", model->parameter_count(true))
        .add("batch_size", batch)
        .add("seq_len", seq_len)
        .add("dtype", dtype_name(dtype))
        .add("stat", "median")
        .add("runs", timing.runs)
        .add("step_seconds", timing.median_seconds)
        .add("tokens_per_s", tokens / timing.median_seconds)
        .add("gflops", flops_per_s / 1e9);
    if (mode.qlora) line.add("base_bits_per_parameter", base_bits);
    if (peak_flops) line.add("mfu", flops_per_s / *peak_flops);
    line.add("peak_tensor_bytes", peak_bytes)                    // this case's tensors at their peak
        .add("peak_rss_bytes", train::peak_rss_bytes());         // the process so far
    if (communicator != nullptr) {
      const dist::CommunicationStats sent = communicator->stats();
      line.add("comm_bytes_per_step", double(sent.bytes_sent - sent_before.bytes_sent) / double(timing.runs + 1))
          .add("comm_exposed_seconds", data_parallel->last_exposed_seconds());
    }
    line.print();
    if (profile) {
      const double profiled_seconds = print_step_profile("train", step, min_seconds, mode.name);
      JsonLine summary;
      summary.add("bench", "train")
          .add("case", mode.name)
          .add("op", "step_summary")
          .add("dtype", dtype_name(dtype))
          .add("threads", threads)
          .add("step_seconds", timing.median_seconds)
          .add("profiled_step_seconds", profiled_seconds)
          .add("profiled_over_timed_step", profiled_seconds / timing.median_seconds)  // the profiler's cost, and noise
          .add("gflops", flops_per_s / 1e9)
          .add("peak_path", peak.path)
          .add("peak_gflops", peak.gflops);
      if (peak.gflops > 0) summary.add("fraction_of_peak", flops_per_s / 1e9 / peak.gflops);
      summary.print();
    }
  }
  if (results.size() != std::size(modes) || !prints) return 0;  // --case: the comparison needs every case
  const Result& full = results["llama_30m_step"];
  const Result& lora = results["llama_30m_lora_step"];
  const Result& qlora = results["llama_30m_qlora_step_checkpointed"];
  const Result& qlora_kept = results["llama_30m_qlora_step"];  // activations kept: faster, more memory
  const Result& lora_checkpointed = results["llama_30m_lora_step_checkpointed"];
  JsonLine summary;
  summary.add("bench", "train")
      .add("case", "llama_30m_qlora_vs_full_and_lora")
      .add("qlora_peak_over_full_peak", double(qlora.peak_bytes) / double(full.peak_bytes))
      .add("peak_target", 1.0 / 3.0)
      .add("meets_peak_target", double(qlora.peak_bytes) <= double(full.peak_bytes) / 3.0)
      .add("qlora_tokens_per_s_over_lora", qlora.tokens_per_s / lora.tokens_per_s)
      .add("speed_target", 0.7)
      .add("meets_speed_target", qlora.tokens_per_s >= 0.7 * lora.tokens_per_s)
      .add("uncheckpointed_qlora_peak_over_full_peak", double(qlora_kept.peak_bytes) / double(full.peak_bytes))
      .add("uncheckpointed_qlora_tokens_per_s_over_lora", qlora_kept.tokens_per_s / lora.tokens_per_s)
      .add("qlora_checkpointed_over_lora_checkpointed", qlora.tokens_per_s / lora_checkpointed.tokens_per_s)
      .print();
  return 0;
}

}  // namespace lamina::cli
