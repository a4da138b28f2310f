// `lamina bench train`: one training step (forward, backward, AdamW) of a ~30M-parameter
// Llama-3-shaped model: dim 512, 8 layers, 8 heads / 4 kv heads, ffn 1536, vocab 8192, batch
// 4 x 256 tokens; with and without activation checkpointing; on the CPU (f32) or a GPU (bf16 on
// f32 master weights by default, as `lamina train` runs there). Reports tokens/s, estimated FLOP/s
// (6 x parameters x tokens, the usual transformer estimate without the attention term), MFU where
// the GPU's peak is known, the peak of tensor memory of the case (what checkpointing saves) and
// the process's peak resident memory.
#include <chrono>

#include "autograd/functions.h"
#include "models/llama/model.h"
#include "tensor/cuda_runtime.h"
#include "tensor/parallel.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"
#include "train/metrics.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

llama::LlamaConfig config_30m() {
  llama::LlamaConfig config;
  config.vocab_size = 8192;
  config.hidden_size = 512;
  config.intermediate_size = 1536;
  config.num_hidden_layers = 8;
  config.num_attention_heads = 8;
  config.num_key_value_heads = 4;
  config.head_dim = 64;
  config.max_position_embeddings = 1024;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  return config;
}

}  // namespace

int run_bench_train(const Arguments& args) {
  FlagParser parser("lamina bench train", "Training-step throughput of a ~30M-parameter Llama (JSON lines).");
  parser.add_option("device", "DEVICE", "cpu, cuda or cuda:N", "cpu");
  parser.add_option("precision", "P", "f32 or bf16 (f32 master weights); auto = bf16 on CUDA, f32 on the CPU", "auto");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_option("batch-size", "N", "sequences per step", "4");
  parser.add_option("seq-len", "N", "tokens per sequence", "256");
  parser.add_switch("quick", "shorter timing runs (noisier)");
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

  for (const bool checkpointing : {false, true}) {
    auto model = std::make_shared<llama::LlamaForCausalLM>(config_30m());
    Generator generator(0);
    model->init_parameters(generator);
    model->set_gradient_checkpointing(checkpointing);
    model->to(device, dtype);
    train::AdamW optimizer(model->named_parameters(), {});
    const Tensor ids = randint(3, 8192, {batch, seq_len}, generator, DType::i64, device);
    const Tensor targets = randint(3, 8192, {batch, seq_len}, generator, DType::i64, device);
    reset_peak_memory(device);
    const Timing timing = measure(
        [&] {
          cross_entropy(model->forward(ids), targets).backward();
          optimizer.step(1e-4);
          optimizer.zero_grad();
          synchronize(device);  // a GPU step counts until its last kernel ends
        },
        min_seconds);
    const double tokens = double(batch * seq_len);
    const double flops_per_s = 6.0 * double(model->parameter_count()) * tokens / timing.median_seconds;
    JsonLine line;
    line.add("bench", "train")
        .add("case", checkpointing ? "llama_30m_step_checkpointed" : "llama_30m_step")
        .add("device", device.str())
        .add("threads", threads)
        .add("parameters", model->parameter_count())
        .add("batch_size", batch)
        .add("seq_len", seq_len)
        .add("dtype", dtype_name(dtype))
        .add("stat", "median")
        .add("runs", timing.runs)
        .add("step_seconds", timing.median_seconds)
        .add("tokens_per_s", tokens / timing.median_seconds)
        .add("gflops", flops_per_s / 1e9);
    if (peak_flops) line.add("mfu", flops_per_s / *peak_flops);
    line.add("peak_tensor_bytes", memory_stats(device).peak_bytes)  // this case's tensors at their peak
        .add("peak_rss_bytes", train::peak_rss_bytes())             // the process so far
        .print();
  }
  return 0;
}

}  // namespace lamina::cli
