// The Llama decoder (llama3.md section 1) as nn modules named like Hugging Face's
// LlamaForCausalLM, so a checkpoint's tensor names are the parameter names:
//
//   h = embed(ids)
//   per layer:  h = h + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))  n = input_layernorm(h)
//               h = h + down_proj(silu(gate_proj(m)) * up_proj(m))                      m = post_attention_layernorm(h)
//   logits = lm_head(norm(h))      (lm_head is embed's matrix when tie_word_embeddings)
//   a layer with a parallel copy (Control LLM, config.h's ParallelBlocks):
//               h = (1 - alpha) * layer(h) + alpha * copy(h)                      alpha fixed, or a per-token gate
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/llama/config.h"
#include "ops/attention_pattern.h"
#include "nn/layers.h"

namespace lamina::llama {

// Keys and values of past tokens for incremental decoding: per layer [B, Hkv, capacity, head_dim]
// (keys stored after RoPE); a model with parallel blocks has one more layer per copy
// (LlamaConfig::decoder_blocks). Each row b holds its own number of filled slots, `row_length(b)`:
// slots [0, row_length(b)) are valid, the rest are hidden from attention. Two ways to fill it:
// - all rows together (left padding): rows shorter than the batch's longest prompt are
//   left-padded, `padding[b]` leading slots of row b hold padding and are masked out, and the
//   row's positions start at 0 on its first real token; every row then has the same length.
// - row by row (slot reuse): a row's prompt is prefilled alone through `row_view(b)`, a cache of
//   batch 1 over row b's storage, and `set_row_length` records the result; a decode step of one
//   token then writes each row at its own slot, and attention hides every row's slots past its
//   own length.
// Inference only (no gradients flow through the cache). Storage starts zeroed: slots past a
// row's length are read (under a -inf mask) when rows differ in length, and 0 x NaN would
// poison the attention output where 0 x (stale but finite) does not.
class KvCache {
 public:
  KvCache(const LlamaConfig& config, int64_t batch, int64_t capacity, DType dtype = DType::f32,
          std::vector<int64_t> padding = {}, Device device = Device::cpu());

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  int64_t length() const;  // the longest row's filled slots (every row's, when they are equal)
  int64_t row_length(int64_t row) const;
  const std::vector<int64_t>& padding() const { return padding_; }

  // Stores `keys`/`values` [B, Hkv, T, hd] of layer `layer` at slots [row_length(b),
  // row_length(b) + T) of each row b and returns views of slots [0, length() + T). Rows of
  // different lengths take one token at a time (T = 1). Every layer stores, then advance(T).
  std::pair<Tensor, Tensor> store(int64_t layer, const Tensor& keys, const Tensor& values);
  void advance(int64_t tokens);
  // Positions [B, T] of the next T tokens: slot index minus the row's padding (0 on padding).
  Tensor next_positions(int64_t tokens) const;
  // Additive mask [B, 1, T, length() + T] hiding every slot that is not the row's own: its
  // left padding, and the slots past its length when rows differ in length (the shorter rows'
  // "right padding" up to the longest row). Undefined when no row is padded and the rows are
  // of one length.
  Tensor padding_mask(int64_t tokens) const;

  // A cache of batch 1 whose storage is row `row` of this one, starting empty (length 0, no
  // padding): prefilling through it fills the row in place. Its length is its own; give it to
  // this cache with set_row_length(row, view.length()).
  KvCache row_view(int64_t row);
  // Declares slots [0, length) of a row (without padding) valid: 0 frees the row for a new
  // sequence; after a prefill through row_view, the view's length.
  void set_row_length(int64_t row, int64_t length);

 private:
  KvCache(int64_t capacity, Device device, std::vector<Tensor> keys, std::vector<Tensor> values);
  bool rows_differ() const;

  int64_t batch_, capacity_;
  std::vector<int64_t> lengths_;
  std::vector<int64_t> padding_;
  Device device_;
  std::vector<Tensor> keys_, values_;
};

class SparseKvCache;

// Which keys each attention head of each layer sees beyond causality: its sink (the first
// `sink` positions) and its sliding window (the last `window` keys up to the query; kAllKeys =
// every earlier key), as ops/attention_pattern.h defines them. A MoA plan (models/sparse)
// resolves to one of these for a given length; empty (the default) is dense attention.
struct SparseAttention {
  std::vector<std::vector<int64_t>> sinks;    // [layers][query heads]
  std::vector<std::vector<int64_t>> windows;  // [layers][query heads]

  bool dense() const { return sinks.empty() && windows.empty(); }
  // Throws unless both are [layers][query heads] of `config` with sink >= 0 and window >= 0.
  void check(const LlamaConfig& config) const;
  // Every head of every layer with one sink and window (StreamingLLM's uniform plan).
  static SparseAttention uniform(const LlamaConfig& config, int64_t sink, int64_t window);
};

// Replaces the fused attention of every layer, for MoA's profiling (models/sparse): `attend` gets
// q [B, Hq, T, D] and k, v [B, Hkv, S, D] (after RoPE, with the cache's keys) and the pattern the
// fused kernel would have used, and returns the output [B, Hq, T, D] with whatever autograd node
// it needs (a materialising one that reports A and dS in its backward).
class AttentionProbe {
 public:
  virtual ~AttentionProbe() = default;
  virtual Tensor attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v,
                        const AttentionPattern& pattern) = 0;
};

// What every layer's attention reads besides its input, made once per model forward.
struct AttentionContext {
  KvCache* cache = nullptr;
  SparseKvCache* sparse_cache = nullptr;
  Tensor mask;          // additive, broadcastable to [B, H, T, S]
  Tensor document_ids;  // [B, T] (packed documents), without a cache
  const SparseAttention* sparse = nullptr;  // per-layer, per-head sinks and windows; null = dense
  AttentionProbe* probe = nullptr;
  bool reference = false;  // ops::attention instead of the fused kernel
};

class LlamaAttention : public nn::Module {
 public:
  LlamaAttention(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections = false);
  // x [B, T, d], positions [B, T] or [T]. Attention is the fused kernel (ops::flash_attention)
  // under the layer's pattern: causal, the plan's sink and window per head, the packed
  // documents, the additive mask; ops::attention (the materialising reference) where the fused
  // kernel has no CUDA twin yet or `context.reference` asks for it.
  Tensor forward(const Tensor& x, const Tensor& positions, int64_t layer, const AttentionContext& context) const;

  std::shared_ptr<nn::Linear> q_proj, k_proj, v_proj, o_proj;

 private:
  int64_t heads_, kv_heads_, head_dim_;
  RopeConfig rope_;
};

class LlamaMLP : public nn::Module {
 public:
  LlamaMLP(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections = false);
  Tensor forward(const Tensor& x) const;  // down_proj(silu(gate_proj(x)) * up_proj(x))

  std::shared_ptr<nn::Linear> gate_proj, up_proj, down_proj;
};

class LlamaDecoderLayer : public nn::Module {
 public:
  LlamaDecoderLayer(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections = false);
  // With a parallel copy: this block's output and the copy's, both on `h`, interpolated
  // (config.h's ParallelBlocks: by alpha, or per token by the gate).
  Tensor forward(const Tensor& h, const Tensor& positions, int64_t layer, const AttentionContext& context) const;
  // Gives this layer Control LLM's parallel copy, registered as "expanded" (its parameters are
  // "...layers.<i>.expanded.self_attn.q_proj.weight", ...), with its own KV cache layer
  // `cache_layer`; for dynamic interpolation also the gate, a Linear [2 * hidden -> 1] with bias
  // registered as "expanded_gate".
  void add_parallel_copy(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections,
                         int64_t cache_layer);

  std::shared_ptr<LlamaAttention> self_attn;
  std::shared_ptr<LlamaMLP> mlp;
  std::shared_ptr<nn::RMSNorm> input_layernorm, post_attention_layernorm;
  std::shared_ptr<LlamaDecoderLayer> expanded;   // the parallel copy, or null
  std::shared_ptr<nn::Linear> expanded_gate;     // dynamic interpolation's gate, or null

 private:
  Tensor block_forward(const Tensor& h, const Tensor& positions, int64_t layer, const AttentionContext& context) const;

  double expanded_alpha_ = 0;
  int64_t expanded_cache_layer_ = -1;
};

class LlamaModel : public nn::Module {
 public:
  LlamaModel(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections = false);
  // ids [B, T] -> final hidden states [B, T, d] (after the final norm). The context's `sparse`
  // is taken from sparse_attention when it is not dense.
  Tensor forward(const Tensor& ids, const Tensor& positions, AttentionContext context) const;

  std::shared_ptr<nn::Embedding> embed_tokens;
  std::shared_ptr<nn::ModuleList> layers;
  std::shared_ptr<nn::RMSNorm> norm;
  bool gradient_checkpointing = false;  // recompute each layer's activations in backward
  // Per-head sinks and windows of every layer (a MoA plan resolved for a length); empty = dense.
  // Checked against the config at each forward.
  SparseAttention sparse_attention;
};

struct ForwardOptions {
  Tensor positions;                  // [B, T] or [T]; default: 0.. (after the cache's slots)
  KvCache* cache = nullptr;          // inference: read and extend the cache
  // Inference under a sparse plan: the per-head ring buffers (models/llama/sparse_kv_cache.h)
  // instead of `cache`; positions default to each row's length onwards. When the model has a
  // plan (LlamaModel::sparse_attention), the cache must have been made for that plan. A cache in
  // the cache_slot RoPE mode rotates q and k itself, by cache position (`positions` are unused).
  SparseKvCache* sparse_cache = nullptr;
  Tensor mask;                       // additive, broadcastable to [B, H, T, S] (e.g. padding)
  // Packed documents: [B, T] integer ids (i32/i64) of each position's document; attention stays
  // inside each document (ops/attention_pattern.h). Without a cache only.
  Tensor document_ids;
  bool last_position_only = false;   // logits of the last position only (generation)
  AttentionProbe* probe = nullptr;   // profiling: every layer's attention goes through it
  // The materialising reference path (ops::attention, the T x T scores kept) instead of the fused
  // kernel: the oracle of tests and benchmarks. Not with a sparse plan or document ids.
  bool reference_attention = false;
};

// How LlamaForCausalLM::load stores the weights it reads.
struct LoadOptions {
  DType dtype = DType::f32;
  // Quantize every projection (each Linear but lm_head) to 4 bits as it is read, QLoRA's base:
  // one projection at a time exists in full precision, never the whole model, so a model whose
  // f32 (or bf16) weights do not fit in memory still loads. Projections a 4-bit checkpoint
  // stores quantized stay as stored.
  bool quantize_projections = false;
  ops::Quant4Format format = ops::Quant4Format::nf4;
  int64_t blocksize = 64;
  bool double_quant = true;
  // Called after each projection is quantized (done of total), for a progress line.
  std::function<void(int64_t done, int64_t total)> on_quantized;
};

// A Llama trunk with a head, whichever the head (LlamaForCausalLM's lm_head,
// LlamaForSequenceClassification's score): what training, checkpoints and adapters need of a
// model, so that one Trainer trains either.
class LlamaWithHead : public nn::Module {
 public:
  virtual const LlamaConfig& config() const = 0;
  virtual DType dtype() const = 0;
  virtual Device device() const = 0;
  // Every weight converted to `dtype` on `device`, in place: parameter handles stay valid.
  virtual void to(Device device, DType dtype) = 0;
  virtual void set_gradient_checkpointing(bool on) = 0;
  virtual LlamaModel& trunk() = 0;  // the decoder stack under the head
  // The folder transformers reads for this class: config.json (with its architecture) and the
  // weights in `dtype` (default: the model's own), sharded above max_shard_bytes.
  virtual void save(const std::string& directory, std::optional<DType> dtype = std::nullopt,
                    uint64_t max_shard_bytes = uint64_t(5) << 30) const = 0;
  // A folder this class saved, loaded as this class (how a checkpoint is read back).
  virtual std::shared_ptr<LlamaWithHead> load_like(const std::string& directory, DType dtype) const = 0;

 protected:
  // What every save() does but config.json: refuses LoRA adapters and 4-bit bases (a plain HF
  // folder holds neither: save a PEFT folder, or merge, first), writes the weights in `dtype`
  // (default: the model's own) and returns the config to write beside them, its dtype set.
  // `who` names the class in errors.
  LlamaConfig save_weights(const std::string& directory, std::optional<DType> dtype, uint64_t max_shard_bytes,
                           const char* who) const;
  // What every to() does but record the new dtype: each parameter cast (where it is) and moved,
  // 4-bit bases moved with their codes. `who` names the class in errors.
  void move_weights(Device device, DType dtype, const char* who);
};

class LlamaForCausalLM : public LlamaWithHead {
 public:
  // Throws before allocating when the parameters cannot fit in the host's memory.
  // four_bit_projections: the projections get no full-precision weight (nn::LinearOptions::
  // four_bit_base) and are counted at 4.13 bits each; the caller gives each of them its 4-bit
  // weight (set_base_4bit) before the first forward, as load() does.
  explicit LlamaForCausalLM(LlamaConfig config, DType dtype = DType::f32,
                            nn::ParameterInit init = nn::ParameterInit::zeros, bool four_bit_projections = false);

  // ids [B, T] (i32/i64) -> logits [B, T, V] (or [B, 1, V]); f32 for f32/bf16/f16 models, f64 for f64.
  Tensor forward(const Tensor& ids, const ForwardOptions& options = {}) const;
  // What forward() multiplies by the head: the final-norm hidden states [B, T, d] (or [B, 1, d]
  // with last_position_only) in the model's dtype, e.g. for the fused head + loss
  // (linear_cross_entropy_sum with output_weight()).
  Tensor hidden_states(const Tensor& ids, const ForwardOptions& options = {}) const;

  // Loads config.json and the weights of a Hugging Face folder, converting to `dtype`; weights
  // already in `dtype` stay mapped from the file. Missing, extra or misshapen tensors are errors,
  // found from the checkpoint's headers before the model is built. With tie_word_embeddings an
  // lm_head.weight in the checkpoint is accepted only when it equals the embedding (it is not
  // used, as in transformers); a different one is an error rather than weights dropped silently.
  // A bitsandbytes 4-bit folder (config.json's quantization_config, `lamina quantize`) loads its
  // projections as 4-bit bases (nn::Linear::base_4bit), never as full-precision weights.
  static std::shared_ptr<LlamaForCausalLM> load(const std::string& directory, DType dtype = DType::f32);
  static std::shared_ptr<LlamaForCausalLM> load(const std::string& directory, const LoadOptions& options);
  // Calls visit(name, shape) for every parameter a model of `config` has, in named_parameters()
  // order, without building it: how load checks a checkpoint before allocating anything.
  static void for_each_parameter_shape(const LlamaConfig& config,
                                       const std::function<void(const std::string&, const Shape&)>& visit);
  // Writes config.json and model.safetensors (sharded above max_shard_bytes) in HF layout,
  // saving the weights in `dtype` (default: the model's own).
  void save(const std::string& directory, std::optional<DType> dtype = std::nullopt,
            uint64_t max_shard_bytes = uint64_t(5) << 30) const override;
  std::shared_ptr<LlamaWithHead> load_like(const std::string& directory, DType dtype) const override {
    return load(directory, dtype);
  }
  // Fresh weights as Hugging Face initialises them: normal(0, initializer_range), norms at 1.
  void init_parameters(Generator& generator);
  void set_gradient_checkpointing(bool on) override { model->gradient_checkpointing = on; }
  LlamaModel& trunk() override { return *model; }
  // Converts every weight to `dtype` and moves it to `device`, in place: the parameter handles
  // (and whatever holds them) stay valid. Before training starts: gradients are not converted.
  void to(Device device, DType dtype) override;
  Device device() const override { return model->norm->weight().device(); }  // the norms are never quantized

  const LlamaConfig& config() const override { return config_; }
  DType dtype() const override { return dtype_; }
  // lm_head's weight, or the embedding when tied; an error when the head is quantized (see
  // head_product).
  const Tensor& output_weight() const;
  // logits = h times the head, whatever the head holds: a plain or tied weight, LoRA adapters, a
  // 4-bit or GGUF base, or a tied embedding kept in its GGUF format.
  Tensor head_product(const Tensor& h) const;

  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<nn::Linear> lm_head;  // null when tie_word_embeddings

 private:
  LlamaConfig config_;
  DType dtype_;
};

}  // namespace lamina::llama
