#include "models/llama/model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "models/io/bnb4bit.h"
#include "models/io/safetensors.h"
#include "models/llama/sparse_kv_cache.h"
#include "nn/lora.h"
#include "tensor/host_memory.h"
#include "tensor/io/atomic_file.h"

namespace lamina::llama {

// ---- KV cache

KvCache::KvCache(const LlamaConfig& config, int64_t batch, int64_t capacity, DType dtype, std::vector<int64_t> padding,
                 Device device)
    : batch_(batch), capacity_(capacity), padding_(std::move(padding)), device_(device) {
  LAMINA_CHECK(batch > 0 && capacity > 0, "KvCache: batch and capacity must be positive, got ", batch, " and ", capacity);
  if (padding_.empty()) padding_.assign(size_t(batch), 0);
  LAMINA_CHECK(int64_t(padding_.size()) == batch, "KvCache: ", padding_.size(), " padding counts for a batch of ", batch);
  for (int64_t pad : padding_)
    LAMINA_CHECK(pad >= 0 && pad < capacity, "KvCache: padding ", pad, " outside the capacity ", capacity);
  lengths_.assign(size_t(batch), 0);
  const Shape shape{batch, config.num_key_value_heads, capacity, config.head_dim};
  if (device.is_cpu()) {  // a CUDA device reports its own shortage, with its numbers
    uint64_t bytes = 2 * dtype_size(dtype);  // keys and values
    for (const int64_t size : {config.decoder_blocks(), batch, config.num_key_value_heads, capacity, config.head_dim})
      if (__builtin_mul_overflow(bytes, uint64_t(size), &bytes)) bytes = UINT64_MAX;
    check_host_memory(bytes, str_cat("a KV cache of ", config.decoder_blocks(), " layers x 2 x ", shape, " ",
                                     dtype_name(dtype), " (batch ", batch, ", capacity ", capacity, " tokens)"));
  }
  for (int64_t layer = 0; layer < config.decoder_blocks(); ++layer) {
    keys_.push_back(zeros(shape, dtype, device));
    values_.push_back(zeros(shape, dtype, device));
  }
}

KvCache::KvCache(int64_t capacity, Device device, std::vector<Tensor> keys, std::vector<Tensor> values)
    : batch_(1), capacity_(capacity), lengths_{0}, padding_{0}, device_(device), keys_(std::move(keys)),
      values_(std::move(values)) {}

int64_t KvCache::length() const { return *std::max_element(lengths_.begin(), lengths_.end()); }

int64_t KvCache::row_length(int64_t row) const {
  LAMINA_CHECK(row >= 0 && row < batch_, "KvCache: no row ", row, " in a batch of ", batch_);
  return lengths_[size_t(row)];
}

bool KvCache::rows_differ() const {
  return std::any_of(lengths_.begin(), lengths_.end(), [&](int64_t length) { return length != lengths_[0]; });
}

std::pair<Tensor, Tensor> KvCache::store(int64_t layer, const Tensor& keys, const Tensor& values) {
  const int64_t tokens = keys.size(2), longest = length();
  LAMINA_CHECK(layer >= 0 && layer < int64_t(keys_.size()), "KvCache: no layer ", layer);
  LAMINA_CHECK(longest + tokens <= capacity_, "KvCache: ", longest, " + ", tokens, " tokens exceed the capacity of ",
               capacity_, " (generate fewer tokens or make a larger cache)");
  const Tensor& layer_keys = keys_[size_t(layer)];
  const Tensor& layer_values = values_[size_t(layer)];
  if (!rows_differ()) {
    ops::copy_(layer_keys.slice(2, longest, longest + tokens), keys);
    ops::copy_(layer_values.slice(2, longest, longest + tokens), values);
  } else {
    // Rows of different lengths: each row's token goes to its own next slot.
    LAMINA_CHECK(tokens == 1, "KvCache: rows of different lengths take one token at a time, got ", tokens,
                 " (prefill a row alone through row_view)");
    for (int64_t b = 0; b < batch_; ++b) {
      const int64_t slot = lengths_[size_t(b)];
      ops::copy_(layer_keys.slice(0, b, b + 1).slice(2, slot, slot + 1), keys.slice(0, b, b + 1));
      ops::copy_(layer_values.slice(0, b, b + 1).slice(2, slot, slot + 1), values.slice(0, b, b + 1));
    }
  }
  return {layer_keys.slice(2, 0, longest + tokens), layer_values.slice(2, 0, longest + tokens)};
}

void KvCache::advance(int64_t tokens) {
  for (int64_t& length : lengths_) length += tokens;
}

Tensor KvCache::next_positions(int64_t tokens) const {
  std::vector<int64_t> positions;
  for (int64_t b = 0; b < batch_; ++b)
    for (int64_t t = 0; t < tokens; ++t)
      positions.push_back(std::max<int64_t>(0, lengths_[size_t(b)] + t - padding_[size_t(b)]));
  return ops::to_device(Tensor::from_vector(positions, {batch_, tokens}), device_);
}

Tensor KvCache::padding_mask(int64_t tokens) const {
  const bool any_padding = std::any_of(padding_.begin(), padding_.end(), [](int64_t pad) { return pad > 0; });
  if (!any_padding && !rows_differ()) return Tensor();
  const int64_t keys = length() + tokens;
  const float hidden = -std::numeric_limits<float>::infinity();
  std::vector<float> mask(size_t(batch_ * tokens * keys), 0.0f);
  for (int64_t b = 0; b < batch_; ++b) {
    // Row b's valid slots after this step: [padding, its length + tokens).
    const int64_t first = std::min(padding_[size_t(b)], keys), end = lengths_[size_t(b)] + tokens;
    for (int64_t t = 0; t < tokens; ++t) {
      float* row = mask.data() + (b * tokens + t) * keys;
      std::fill(row, row + first, hidden);
      std::fill(row + std::min(end, keys), row + keys, hidden);
    }
  }
  return ops::to_device(Tensor::from_vector(mask, {batch_, 1, tokens, keys}), device_);
}

KvCache KvCache::row_view(int64_t row) {
  LAMINA_CHECK(row >= 0 && row < batch_, "KvCache: no row ", row, " in a batch of ", batch_);
  std::vector<Tensor> keys, values;
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    keys.push_back(keys_[layer].slice(0, row, row + 1));
    values.push_back(values_[layer].slice(0, row, row + 1));
  }
  return KvCache(capacity_, device_, std::move(keys), std::move(values));
}

void KvCache::set_row_length(int64_t row, int64_t length) {
  LAMINA_CHECK(row >= 0 && row < batch_, "KvCache: no row ", row, " in a batch of ", batch_);
  LAMINA_CHECK(length >= 0 && length <= capacity_, "KvCache: row length ", length, " outside [0, ", capacity_, "]");
  LAMINA_CHECK(padding_[size_t(row)] == 0, "KvCache: row ", row, " is left-padded; its length moves with the batch");
  lengths_[size_t(row)] = length;
}

// ---- sparse attention plans

void SparseAttention::check(const LlamaConfig& config) const {
  if (dense()) return;
  const auto check_table = [&](const std::vector<std::vector<int64_t>>& table, const char* what) {
    LAMINA_CHECK(int64_t(table.size()) == config.num_hidden_layers, "sparse attention: ", table.size(), " layers of ",
                 what, " for a model of ", config.num_hidden_layers, " layers");
    for (size_t layer = 0; layer < table.size(); ++layer) {
      LAMINA_CHECK(int64_t(table[layer].size()) == config.num_attention_heads, "sparse attention: layer ", layer,
                   " has ", table[layer].size(), " ", what, " for ", config.num_attention_heads, " query heads");
      for (size_t head = 0; head < table[layer].size(); ++head)
        LAMINA_CHECK(table[layer][head] >= 0, "sparse attention: layer ", layer, " head ", head, " has ", what, " ",
                     table[layer][head], "; it must be >= 0");
    }
  };
  check_table(sinks, "sinks");
  check_table(windows, "windows");
}

SparseAttention SparseAttention::uniform(const LlamaConfig& config, int64_t sink, int64_t window) {
  SparseAttention plan;
  plan.sinks.assign(size_t(config.num_hidden_layers), std::vector<int64_t>(size_t(config.num_attention_heads), sink));
  plan.windows.assign(size_t(config.num_hidden_layers), std::vector<int64_t>(size_t(config.num_attention_heads), window));
  plan.check(config);
  return plan;
}

// ---- layers

namespace {
std::shared_ptr<nn::Linear> linear(int64_t in, int64_t out, DType dtype, nn::ParameterInit init,
                                   bool four_bit_base = false) {
  return std::make_shared<nn::Linear>(in, out, nn::LinearOptions{false, dtype, init, four_bit_base});
}
}  // namespace

LlamaAttention::LlamaAttention(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections)
    : heads_(config.num_attention_heads), kv_heads_(config.num_key_value_heads), head_dim_(config.head_dim),
      rope_(config.rope()) {
  q_proj = register_module("q_proj", linear(config.hidden_size, config.q_dim(), dtype, init, four_bit_projections));
  k_proj = register_module("k_proj", linear(config.hidden_size, config.kv_dim(), dtype, init, four_bit_projections));
  v_proj = register_module("v_proj", linear(config.hidden_size, config.kv_dim(), dtype, init, four_bit_projections));
  o_proj = register_module("o_proj", linear(config.q_dim(), config.hidden_size, dtype, init, four_bit_projections));
}

namespace {

// Packed documents as the additive mask the reference path takes: [B, 1, T, T], -inf between
// positions of different documents (causality is the op's own).
Tensor document_mask(const Tensor& document_ids) {
  const Tensor ids = ops::cast(ops::to_device(document_ids, Device::cpu()), DType::i64);
  const int64_t batch = ids.size(0), tokens = ids.size(1);
  const std::vector<int64_t> document = ids.contiguous().to_vector<int64_t>();
  std::vector<float> mask(size_t(batch * tokens * tokens), 0.0f);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t q = 0; q < tokens; ++q)
      for (int64_t k = 0; k < tokens; ++k)
        if (document[size_t(b * tokens + q)] != document[size_t(b * tokens + k)])
          mask[size_t((b * tokens + q) * tokens + k)] = -std::numeric_limits<float>::infinity();
  return ops::to_device(Tensor::from_vector(mask, {batch, 1, tokens, tokens}), document_ids.device());
}

}  // namespace

Tensor LlamaAttention::forward(const Tensor& x, const Tensor& positions, int64_t layer,
                               const AttentionContext& context) const {
  const int64_t batch = x.size(0), tokens = x.size(1);
  // A cache-slot ring cache (StreamingLLM's positions) takes q and k before RoPE: it rotates them
  // by their places in the cache, which only it knows.
  const bool cache_rotates = context.sparse_cache != nullptr &&
                             context.sparse_cache->rope_positions() == RopePositions::cache_slot;
  const auto rotate = [&](const Tensor& t) { return cache_rotates ? t : rope(t, positions, rope_); };
  const std::vector<Tensor> qkv = nn::forward_together({q_proj.get(), k_proj.get(), v_proj.get()}, x);
  const Tensor q = rotate(qkv[0].view({batch, tokens, heads_, head_dim_})).transpose(1, 2);
  const Tensor k = rotate(qkv[1].view({batch, tokens, kv_heads_, head_dim_}));
  const Tensor v = qkv[2].view({batch, tokens, kv_heads_, head_dim_});
  Tensor keys = k.transpose(1, 2), values = v.transpose(1, 2);  // [B, Hkv, T, hd]
  Tensor out;                                                   // [B, H, T, hd]
  if (context.sparse_cache != nullptr) {
    out = context.sparse_cache->attend(layer, q, keys, values);
  } else {
    if (context.cache != nullptr) std::tie(keys, values) = context.cache->store(layer, keys, values);
    AttentionPattern pattern;
    if (context.sparse != nullptr) {
      pattern.sinks = context.sparse->sinks[size_t(layer)];
      pattern.windows = context.sparse->windows[size_t(layer)];
    }
    pattern.document_ids = context.document_ids;
    pattern.additive_mask = context.mask;
    if (context.probe != nullptr) {
      out = context.probe->attend(layer, q, keys, values, pattern);
    } else if (context.reference || !x.device().is_cpu() || (context.cache != nullptr && tokens == 1)) {
      // The fused kernel is CPU-only so far: CUDA runs the materialising path, which has no sinks
      // or windows (LlamaModel::forward refuses a sparse plan there). A decode step over a dense
      // cache runs it too: one query row's scores are small, and it reads the cache's strided
      // view in place where the fused kernel would first copy every layer's whole cache.
      AttentionOptions options;
      options.causal = true;
      options.mask = context.mask;
      if (context.document_ids.defined()) {
        const Tensor documents = document_mask(context.document_ids);
        options.mask = options.mask.defined() ? ops::add(ops::cast(options.mask, DType::f32), documents) : documents;
      }
      out = attention(q, keys, values, options);
    } else {
      out = flash_attention(q, keys, values, pattern);
    }
  }
  return o_proj->forward(out.transpose(1, 2).reshape({batch, tokens, heads_ * head_dim_}));
}

LlamaMLP::LlamaMLP(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections) {
  gate_proj = register_module("gate_proj", linear(config.hidden_size, config.intermediate_size, dtype, init, four_bit_projections));
  up_proj = register_module("up_proj", linear(config.hidden_size, config.intermediate_size, dtype, init, four_bit_projections));
  down_proj = register_module("down_proj", linear(config.intermediate_size, config.hidden_size, dtype, init, four_bit_projections));
}

Tensor LlamaMLP::forward(const Tensor& x) const {
  const std::vector<Tensor> gate_up = nn::forward_together({gate_proj.get(), up_proj.get()}, x);
  return down_proj->forward(swiglu(gate_up[0], gate_up[1]));
}

LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& config, DType dtype, nn::ParameterInit init,
                                     bool four_bit_projections) {
  self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(config, dtype, init, four_bit_projections));
  mlp = register_module("mlp", std::make_shared<LlamaMLP>(config, dtype, init, four_bit_projections));
  input_layernorm = register_module("input_layernorm",
                                    std::make_shared<nn::RMSNorm>(config.hidden_size, config.rms_norm_eps, dtype, init));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", std::make_shared<nn::RMSNorm>(config.hidden_size, config.rms_norm_eps, dtype, init));
}

Tensor LlamaDecoderLayer::block_forward(const Tensor& h, const Tensor& positions, int64_t layer,
                                        const AttentionContext& context) const {
  const Tensor attended = h + self_attn->forward(input_layernorm->forward(h), positions, layer, context);
  return attended + mlp->forward(post_attention_layernorm->forward(attended));
}

Tensor LlamaDecoderLayer::forward(const Tensor& h, const Tensor& positions, int64_t layer,
                                  const AttentionContext& context) const {
  const Tensor out = block_forward(h, positions, layer, context);
  if (!expanded) return out;
  // Control LLM (section 3): Lerp (1 - alpha) * out + alpha * copy, or Dlerp with a per-token
  // alpha = sigmoid(gate([out; copy])) [B, T, 1]. Written as out + alpha * (copy - out), the
  // same function but exactly `out` while the copy still equals the original, whatever alpha:
  // the expanded model starts bit-identical to the one it came from.
  const Tensor copy = expanded->block_forward(h, positions, expanded_cache_layer_, context);
  if (expanded_gate) return out + mul(sigmoid(expanded_gate->forward(cat({out, copy}, -1))), copy - out);
  return out + mul(copy - out, expanded_alpha_);
}

void LlamaDecoderLayer::add_parallel_copy(const LlamaConfig& config, DType dtype, nn::ParameterInit init,
                                          bool four_bit_projections, int64_t cache_layer) {
  LAMINA_CHECK(config.parallel_blocks.has_value(), "LlamaDecoderLayer: a parallel copy needs the config's parallel_blocks");
  LAMINA_CHECK(!expanded, "LlamaDecoderLayer: the layer has a parallel copy already");
  expanded = register_module("expanded", std::make_shared<LlamaDecoderLayer>(config, dtype, init, four_bit_projections));
  if (config.parallel_blocks->dynamic())
    expanded_gate = register_module(
        "expanded_gate", std::make_shared<nn::Linear>(2 * config.hidden_size, 1, nn::LinearOptions{true, dtype, init}));
  expanded_alpha_ = config.parallel_blocks->alpha;
  expanded_cache_layer_ = cache_layer;
}

LlamaModel::LlamaModel(const LlamaConfig& config, DType dtype, nn::ParameterInit init, bool four_bit_projections) {
  embed_tokens = register_module("embed_tokens",
                                 std::make_shared<nn::Embedding>(config.vocab_size, config.hidden_size, dtype, init));
  layers = register_module("layers", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers->push_back(std::make_shared<LlamaDecoderLayer>(config, dtype, init, four_bit_projections));
  if (config.parallel_blocks) {
    const ParallelBlocks& parallel = *config.parallel_blocks;
    for (size_t k = 0; k < parallel.layers.size(); ++k)
      std::static_pointer_cast<LlamaDecoderLayer>((*layers)[size_t(parallel.layers[k])])
          ->add_parallel_copy(config, dtype, init, four_bit_projections, config.num_hidden_layers + int64_t(k));
  }
  norm = register_module("norm", std::make_shared<nn::RMSNorm>(config.hidden_size, config.rms_norm_eps, dtype, init));
}

Tensor LlamaModel::forward(const Tensor& ids, const Tensor& positions, AttentionContext context) const {
  const bool cached = context.cache != nullptr || context.sparse_cache != nullptr;
  LAMINA_CHECK(!(context.cache != nullptr && context.sparse_cache != nullptr),
               "LlamaModel: a KV cache and a sparse KV cache given together; use one");
  LAMINA_CHECK(!context.document_ids.defined() || !cached,
               "LlamaModel: packed documents are a training input; they do not go with a KV cache");
  if (!sparse_attention.dense() && context.sparse == nullptr) context.sparse = &sparse_attention;
  // A parallel copy attends as layer num_hidden_layers + k (its own KV cache slots), which
  // per-layer plans and probes do not index.
  bool parallel = false;
  for (size_t i = 0; i < layers->size(); ++i)
    parallel = parallel || std::static_pointer_cast<LlamaDecoderLayer>((*layers)[i])->expanded != nullptr;
  LAMINA_CHECK(!parallel || (context.sparse == nullptr && context.sparse_cache == nullptr && context.probe == nullptr),
               "LlamaModel: a model with parallel blocks (lamina_parallel_blocks) runs dense attention only: no sparse "
               "attention plan, sparse KV cache or attention probe");
  if (context.sparse != nullptr) {
    LAMINA_CHECK(context.sparse->sinks.size() == layers->size(), "LlamaModel: the sparse attention plan has ",
                 context.sparse->sinks.size(), " layers, the model ", layers->size());
    LAMINA_CHECK(!context.reference, "LlamaModel: the reference attention path has no sparse plan; use the fused one");
    LAMINA_CHECK(ids.device().is_cpu() || context.probe != nullptr,
                 "LlamaModel: sparse attention runs on the CPU only so far (the fused kernel has no CUDA twin yet)");
    LAMINA_CHECK(context.cache == nullptr, "LlamaModel: a sparse attention plan decodes with its own cache "
                 "(llama::SparseKvCache, as generate() does), not with a dense KvCache");
    // The ring cache attends under its own plan: one that differs from the model's would decode
    // under another mask than the model's forward without a cache.
    if (context.sparse_cache != nullptr) {
      const SparseAttention& cache_plan = context.sparse_cache->plan();
      LAMINA_CHECK(cache_plan.sinks == context.sparse->sinks && cache_plan.windows == context.sparse->windows,
                   "LlamaModel: the sparse KV cache was made for another attention plan than the model's (",
                   cache_plan.dense() ? "a dense one" : "other sinks or windows",
                   "); make the cache from model.sparse_attention");
    }
    if (context.document_ids.defined())
      for (const std::vector<int64_t>& sinks : context.sparse->sinks)
        for (const int64_t sink : sinks)
          LAMINA_CHECK(sink == 0, "LlamaModel: attention sinks are the first positions of a row, not of each packed "
                       "document: train a plan with sinks without packing (--no-pack)");
  }
  Tensor h = embed_tokens->forward(ids);
  // LoRA dropout draws its masks from the model's one stream: a checkpointed layer's re-run
  // must draw the same ones, so the stream goes to autograd::checkpoint to rewind.
  const bool checkpointed = gradient_checkpointing && !cached && autograd::grad_enabled();
  std::shared_ptr<nn::LoraSelection> lora;
  if (checkpointed) {
    lora = nn::lora_selection(*this);
    if (lora->adapters.empty()) lora.reset();
  }
  for (size_t i = 0; i < layers->size(); ++i) {
    const auto layer = std::static_pointer_cast<LlamaDecoderLayer>((*layers)[i]);
    if (checkpointed) {
      // The re-run reads the same context: the plan is the model's (it outlives the backward).
      const auto run_layer = [layer, positions, context, i, lora](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{layer->forward(in[0], positions, int64_t(i), context)};
      };
      h = autograd::checkpoint(run_layer, {h}, layer->parameters(), lora ? &lora->dropout_generator : nullptr)[0];
    } else {
      h = layer->forward(h, positions, int64_t(i), context);
    }
  }
  if (context.cache != nullptr) context.cache->advance(ids.size(1));
  if (context.sparse_cache != nullptr) context.sparse_cache->advance(ids.size(1));
  return norm->forward(h);
}

// ---- the causal LM

LlamaForCausalLM::LlamaForCausalLM(LlamaConfig config, DType dtype, nn::ParameterInit init, bool four_bit_projections)
    : config_(std::move(config)), dtype_(dtype) {
  config_.validate();
  LAMINA_CHECK(is_floating(dtype), "LlamaForCausalLM: parameters must be floating, got ", dtype_name(dtype));
  // Each parameter is a separate allocation, most of them too small to be refused one by one:
  // without this a config of a million layers fills memory until the OOM killer ends it.
  // Each parameter tensor also costs bookkeeping (its storage, its module and name): about 0.9 KiB
  // measured, counted as 512 B so the estimate stays below what is really needed. For a deep
  // model of small layers that is as much as the weights themselves, so the bytes checked (and
  // reported as needed) include it.
  constexpr uint64_t kBookkeepingBytesPerTensor = 512;
  constexpr uint64_t kTensorsPerLayer = 9;  // q, k, v, o, gate, up, down and the two norms
  const uint64_t tensors = uint64_t(config_.decoder_blocks()) * kTensorsPerLayer + (config_.tie_word_embeddings ? 2 : 3);
  const int64_t parameters = config_.parameter_count();
  // 4-bit projections: NF4 codes (4 bits) and double-quantized scales (8 bits per 64 weights,
  // plus an f32 per 256 scales), rounded up to whole bytes per weight and a bit over.
  const uint64_t four_bit = four_bit_projections ? uint64_t(config_.linear_parameter_count()) : 0;
  const uint64_t four_bit_bytes = four_bit / 2 + four_bit / 64 + four_bit / 4096 + 1;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(uint64_t(parameters) - four_bit, uint64_t(dtype_size(dtype)), &bytes) ||
      __builtin_add_overflow(bytes, four_bit_bytes, &bytes) ||
      __builtin_add_overflow(bytes, tensors * kBookkeepingBytesPerTensor, &bytes))
    bytes = UINT64_MAX;
  check_host_memory(bytes, str_cat("a Llama model of ", parameters, " parameters in ", dtype_name(dtype),
                                   four_bit_projections ? " (its projections in 4 bits)" : "", " (",
                                   config_.num_hidden_layers, " layers, hidden size ", config_.hidden_size,
                                   ", vocabulary ", config_.vocab_size, ")"));
  model = register_module("model", std::make_shared<LlamaModel>(config_, dtype, init, four_bit_projections));
  if (!config_.tie_word_embeddings)
    lm_head = register_module("lm_head", linear(config_.hidden_size, config_.vocab_size, dtype, init));
}

const Tensor& LlamaForCausalLM::output_weight() const {
  const Tensor& weight = lm_head ? lm_head->weight() : model->embed_tokens->weight();
  LAMINA_CHECK(weight.defined(), "LlamaForCausalLM: the output head is quantized (",
               lm_head ? "a 4-bit or GGUF base" : "the tied embedding kept in its GGUF format",
               "), so it has no full-precision weight to give");
  return weight;
}

Tensor LlamaForCausalLM::head_product(const Tensor& h) const {
  // A head with LoRA adapters (target_modules naming lm_head) or a quantized base runs its own
  // forward; a tied embedding kept quantized multiplies in its block format; a plain or tied
  // head is the product with its weight.
  if (lm_head != nullptr && (!lm_head->adapter_names().empty() || lm_head->quantized_base())) return lm_head->forward(h);
  if (lm_head == nullptr && model->embed_tokens->quantized_table() != nullptr)
    return ops::gguf_matmul(h.dtype() == DType::f32 ? h : h.to(DType::f32), model->embed_tokens->quantized_table()->matrix);
  return matmul(h, output_weight(), false, true);
}

Tensor LlamaForCausalLM::forward(const Tensor& ids, const ForwardOptions& options) const {
  const Tensor logits = head_product(hidden_states(ids, options));
  // Sampling and losses want f32 logits from a bf16/f16 model; f64 models (gradchecks) keep f64.
  const bool low_precision = logits.dtype() == DType::bf16 || logits.dtype() == DType::f16;
  return low_precision ? logits.to(DType::f32) : logits;
}

Tensor LlamaForCausalLM::hidden_states(const Tensor& ids, const ForwardOptions& options) const {
  LAMINA_CHECK(ids.dim() == 2, "LlamaForCausalLM: ids must be [batch, tokens], got shape ", ids.shape());
  const int64_t tokens = ids.size(1);
  KvCache* cache = options.cache;
  if (cache != nullptr)
    LAMINA_CHECK(cache->batch() == ids.size(0), "LlamaForCausalLM: a cache for batch ", cache->batch(),
                 " used with a batch of ", ids.size(0));
  if (options.sparse_cache != nullptr)
    LAMINA_CHECK(options.sparse_cache->batch() == ids.size(0), "LlamaForCausalLM: a sparse cache for batch ",
                 options.sparse_cache->batch(), " used with a batch of ", ids.size(0));
  Tensor positions = options.positions;
  if (!positions.defined()) {
    if (cache != nullptr)
      positions = cache->next_positions(tokens);
    else if (options.sparse_cache != nullptr)
      positions = options.sparse_cache->next_positions(tokens);  // each row from its own length
    else
      positions = arange(0, tokens, 1, DType::i64, ids.device());
  }
  AttentionContext context;
  context.cache = cache;
  context.sparse_cache = options.sparse_cache;
  context.mask = options.mask;
  if (cache != nullptr) {
    const Tensor cache_mask = cache->padding_mask(tokens);
    if (cache_mask.defined())
      context.mask = context.mask.defined() ? ops::add(ops::cast(context.mask, DType::f32), cache_mask) : cache_mask;
  }
  context.document_ids = options.document_ids;
  context.probe = options.probe;
  context.reference = options.reference_attention;
  Tensor h = model->forward(ids, positions, context);
  if (options.last_position_only) h = h.slice(1, tokens - 1, tokens);
  return h;
}

void LlamaForCausalLM::to(Device device, DType dtype) {
  move_weights(device, dtype, "LlamaForCausalLM");
  dtype_ = dtype;
}

void LlamaWithHead::move_weights(Device device, DType dtype, const char* who) {
  LAMINA_CHECK(is_floating(dtype), who, "::to: parameters must be floating, got ", dtype_name(dtype));
  autograd::NoGradGuard no_grad;
  for (const auto& [name, parameter] : named_parameters()) {
    // Cast where the weights are, then move: a CPU-to-GPU move of bf16 carries half the bytes.
    const Tensor converted = parameter.dtype() == dtype ? parameter : ops::cast(parameter, dtype);
    parameter.set_data(ops::to_device(converted, device));
  }
  // 4-bit bases are no parameters: they move with the model and keep their codes.
  for (const auto& [path, linear] : nn::named_linears(*this))
    if (const ops::Quantized4Bit* q = linear->base_4bit(); q != nullptr && q->device() != device)
      linear->set_base_4bit(q->to(device));
  // So do GGUF bases and a GGUF embedding table: their blocks are copied byte for byte into the
  // device's memory (the CUDA kernels of ops/gguf_matmul.h compute with them there).
  for (const auto& [path, linear] : nn::named_linears(*this))
    if (const ops::GgufWeight* w = linear->base_gguf(); w != nullptr && w->matrix.device != device)
      linear->set_base_gguf(w->to(device));
  nn::Embedding& embedding = *trunk().embed_tokens;
  if (const ops::GgufWeight* table = embedding.quantized_table(); table != nullptr && table->matrix.device != device)
    embedding.set_quantized_table(table->to(device));
}

void LlamaForCausalLM::init_parameters(Generator& generator) {
  autograd::NoGradGuard no_grad;
  for (const auto& [name, parameter] : named_parameters()) {
    const bool is_norm = name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
    if (is_norm) {
      ops::fill_(parameter, 1.0);
    } else {
      const Tensor values = ops::binary(ops::BinaryOp::mul, randn(parameter.shape(), generator, DType::f32),
                                        config_.initializer_range);
      ops::copy_(parameter, values);
    }
  }
}

void LlamaForCausalLM::for_each_parameter_shape(const LlamaConfig& config,
                                                const std::function<void(const std::string&, const Shape&)>& visit) {
  const int64_t d = config.hidden_size;
  visit("model.embed_tokens.weight", {config.vocab_size, d});
  const auto visit_block = [&](const std::string& prefix) {
    visit(prefix + "self_attn.q_proj.weight", {config.q_dim(), d});
    visit(prefix + "self_attn.k_proj.weight", {config.kv_dim(), d});
    visit(prefix + "self_attn.v_proj.weight", {config.kv_dim(), d});
    visit(prefix + "self_attn.o_proj.weight", {d, config.q_dim()});
    visit(prefix + "mlp.gate_proj.weight", {config.intermediate_size, d});
    visit(prefix + "mlp.up_proj.weight", {config.intermediate_size, d});
    visit(prefix + "mlp.down_proj.weight", {d, config.intermediate_size});
    visit(prefix + "input_layernorm.weight", {d});
    visit(prefix + "post_attention_layernorm.weight", {d});
  };
  const std::vector<int64_t> no_parallel;
  const std::vector<int64_t>& parallel = config.parallel_blocks ? config.parallel_blocks->layers : no_parallel;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer) + ".";
    visit_block(prefix);
    if (!std::binary_search(parallel.begin(), parallel.end(), layer)) continue;
    visit_block(prefix + "expanded.");
    if (config.parallel_blocks->dynamic()) {
      visit(prefix + "expanded_gate.weight", {1, 2 * d});
      visit(prefix + "expanded_gate.bias", {1});
    }
  }
  visit("model.norm.weight", {d});
  if (!config.tie_word_embeddings) visit("lm_head.weight", {config.vocab_size, d});
}

namespace {

// How many decoder layers the checkpoint's tensor names reach ("model.layers.N." for N below it).
int64_t layers_in_checkpoint(const safetensors::Checkpoint& checkpoint) {
  int64_t layers = 0;
  const std::string prefix = "model.layers.";
  for (const std::string& name : checkpoint.names()) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const int64_t index = std::strtoll(name.c_str() + prefix.size(), nullptr, 10);
    if (index >= 0 && index < kMaxConfigSize) layers = std::max(layers, index + 1);
  }
  return layers;
}

// The checkpoint's tensor list (names, shapes, dtypes) against the config, from the headers
// alone, before anything is allocated. The walk stops at the first missing tensor, so a config
// that claims a million layers costs no more than the checkpoint's own tensors.
// `four_bit`: the weights stored in 4 bits (bnb4bit.h), checked by their own reader; their
// tensors and the auxiliary ones beside them ("<weight>.absmax", ...) are expected here.
void check_checkpoint(const LlamaConfig& config, const safetensors::Checkpoint& checkpoint, const std::string& directory,
                      const std::set<std::string>& four_bit = {}) {
  std::set<std::string> expected;
  LlamaForCausalLM::for_each_parameter_shape(config, [&](const std::string& name, const Shape& shape) {
    if (four_bit.count(name) != 0) {
      expected.insert(name);
      return;
    }
    if (!checkpoint.contains(name)) {
      std::string hint;
      if (name == "lm_head.weight") {
        hint = " (and config.json says tie_word_embeddings is false)";
      } else if (name.rfind("model.layers.", 0) == 0) {
        hint = str_cat(" (config.json says num_hidden_layers is ", config.num_hidden_layers,
                       "; the checkpoint's tensors name ", layers_in_checkpoint(checkpoint), " layers)");
      }
      throw Error(str_cat("load: ", directory, " has no tensor '", name, "'", hint));
    }
    const safetensors::TensorInfo& info = checkpoint.info(name);
    LAMINA_CHECK(info.shape == shape, "load: tensor '", name, "' in ", directory, " has shape ", info.shape,
                 " but the config needs ", shape);
    LAMINA_CHECK(is_floating(info.dtype), "load: tensor '", name, "' in ", directory, " has dtype ", info.file_dtype,
                 ", expected a floating dtype");
    expected.insert(name);
  });
  for (const std::string& name : checkpoint.names()) {
    if (expected.count(name) != 0) continue;
    const size_t dot = name.find(".weight.");
    if (dot != std::string::npos && four_bit.count(name.substr(0, dot + 7)) != 0) continue;  // "<weight>.absmax", ...
    const bool rotary_buffer = name.find("rotary_emb.inv_freq") != std::string::npos;  // old HF files
    const bool tied_head = name == "lm_head.weight" && config.tie_word_embeddings;  // check_tied_head
    LAMINA_CHECK(rotary_buffer || tied_head, "load: ", directory, " has a tensor '", name,
                 "' that this Llama config has no parameter for",
                 name.rfind("model.layers.", 0) == 0
                     ? str_cat(" (config.json says num_hidden_layers is ", config.num_hidden_layers, ")")
                     : std::string());
  }
}

// With tie_word_embeddings the output layer is the embedding, and a checkpoint's lm_head.weight
// is not used (as in transformers). Exporters that keep it write the embedding's values there,
// which loses nothing; a different matrix would be trained weights dropped without a word, so
// it is an error that says how to keep them.
void check_tied_head(const safetensors::Checkpoint& checkpoint, const std::string& directory) {
  if (!checkpoint.contains("lm_head.weight")) return;
  const Tensor embedding = checkpoint.read("model.embed_tokens.weight");
  Tensor head = checkpoint.read("lm_head.weight");
  bool same = head.shape() == embedding.shape();
  if (same) {
    if (head.dtype() != embedding.dtype()) head = ops::cast(head, embedding.dtype());
    head = head.contiguous();
    const Tensor reference = embedding.contiguous();
    same = std::memcmp(head.raw_data(), reference.raw_data(), head.nbytes()) == 0;
  }
  LAMINA_CHECK(same, "load: ", directory, " has a tensor 'lm_head.weight' (shape ", head.shape(),
               ") that differs from 'model.embed_tokens.weight', but config.json says tie_word_embeddings is true, so "
               "it would be ignored: set tie_word_embeddings to false to use it, or remove it from the checkpoint");
}

}  // namespace

std::shared_ptr<LlamaForCausalLM> LlamaForCausalLM::load(const std::string& directory, DType dtype) {
  LoadOptions options;
  options.dtype = dtype;
  return load(directory, options);
}

std::shared_ptr<LlamaForCausalLM> LlamaForCausalLM::load(const std::string& directory, const LoadOptions& options) {
  namespace fs = std::filesystem;
  const DType dtype = options.dtype;
  const std::string config_path = (fs::path(directory) / "config.json").string();
  const LlamaConfig config = LlamaConfig::load(config_path);
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(directory);
  // A bitsandbytes 4-bit folder (transformers' load_in_4bit layout, `lamina quantize`): its
  // projections become 4-bit bases (nn::Linear::set_base_4bit), read without ever building
  // their full-precision weights; everything else loads as usual.
  std::set<std::string> four_bit;
  if (bnb4bit::read_quantization_config(json::parse_file(config_path), config_path)) {
    for (const std::string& name : bnb4bit::quantized_weight_names(checkpoint)) four_bit.insert(name);
    LAMINA_CHECK(!four_bit.empty(), "load: ", config_path, " has a 4-bit quantization_config but ", directory,
                 " holds no 4-bit weight (no \".quant_state.bitsandbytes__nf4\" or \"__fp4\" tensor)");
  }
  check_checkpoint(config, checkpoint, directory, four_bit);
  if (config.tie_word_embeddings) check_tied_head(checkpoint, directory);
  // Every projection 4-bit (read as such or quantized now): none gets a full-precision weight.
  const int64_t projections = 7 * config.decoder_blocks();
  const int64_t four_bit_projections = int64_t(four_bit.size() - four_bit.count("lm_head.weight"));
  const bool all_four_bit = options.quantize_projections || four_bit_projections == projections;
  auto model = std::make_shared<LlamaForCausalLM>(config, dtype, nn::ParameterInit::uninitialized, all_four_bit);
  int64_t quantized = 0;
  for (const auto& [path, linear] : nn::named_linears(*model)) {
    const std::string name = path + ".weight";
    if (four_bit.count(name) != 0) {
      try {
        linear->set_base_4bit(bnb4bit::read_quantized_weight(checkpoint, name));
      } catch (const Error& error) {
        throw Error(str_cat("load: ", directory, ": 4-bit weight '", name, "': ", error.what()));
      }
    } else if (options.quantize_projections && path != "lm_head" && path.find("expanded_gate") == std::string::npos) {
      // Quantized from the weight in the model's dtype, as quantizing the loaded model would.
      {
        const Tensor stored = checkpoint.read(name);
        linear->set_base_4bit(ops::quantize_4bit(stored.dtype() == dtype ? stored : ops::cast(stored, dtype),
                                                 options.format, options.blocksize, options.double_quant));
      }
      checkpoint.release(name);  // the file's pages of this weight need not stay in memory
      if (options.on_quantized) options.on_quantized(++quantized, projections - four_bit_projections);
    }
  }
  for (const auto& [name, parameter] : model->named_parameters()) {
    const Tensor stored = checkpoint.read(name);
    parameter.set_data(stored.dtype() == dtype ? stored : ops::cast(stored, dtype));
  }
  return model;
}

LlamaConfig LlamaWithHead::save_weights(const std::string& directory, std::optional<DType> dtype,
                                        uint64_t max_shard_bytes, const char* who) const {
  // A plain HF folder has no adapter tensors (and no 4-bit weights): those are saved as a PEFT
  // folder (models/io/peft.h) or merged first (nn::merge_and_unload).
  for (const auto& [path, linear] : nn::named_linears(*this)) {
    LAMINA_CHECK(linear->adapter_names().empty(), who, "::save: ", path,
                 " carries LoRA adapters; save them as a PEFT folder or merge them into the weights first");
    LAMINA_CHECK(linear->base_4bit() == nullptr, who, "::save: ", path,
                 " holds a 4-bit base weight, which a Hugging Face folder of full-precision weights cannot hold");
    LAMINA_CHECK(linear->base_gguf() == nullptr, who, "::save: ", path, " holds a GGUF-quantized weight (a model read "
                 "from a GGUF file as stored); load the file dequantized to save it as a folder (lamina convert)");
  }
  const std::function<void(const nn::Module&, const std::string&)> refuse_quantized_tables =
      [&](const nn::Module& module, const std::string& path) {
        if (const auto* embedding = dynamic_cast<const nn::Embedding*>(&module))
          LAMINA_CHECK(embedding->quantized_table() == nullptr, who, "::save: ", path, " is kept in its GGUF format; "
                       "load the file dequantized to save it as a folder (lamina convert)");
        for (const auto& [name, child] : module.children())
          refuse_quantized_tables(*child, path.empty() ? name : path + "." + name);
      };
  refuse_quantized_tables(*this, "");
  std::filesystem::create_directories(directory);
  LlamaConfig saved = config();
  saved.dtype = dtype.value_or(this->dtype());
  safetensors::NamedTensors tensors;
  for (const auto& [name, parameter] : named_parameters())
    tensors.emplace_back(name, parameter.dtype() == saved.dtype ? parameter : ops::cast(parameter, saved.dtype));
  safetensors::save_checkpoint(directory, tensors, max_shard_bytes);
  return saved;
}

void LlamaForCausalLM::save(const std::string& directory, std::optional<DType> dtype, uint64_t max_shard_bytes) const {
  const LlamaConfig saved = save_weights(directory, dtype, max_shard_bytes, "LlamaForCausalLM");
  io::write_file_atomically((std::filesystem::path(directory) / "config.json").string(), saved.to_json().dump(2) + "\n");
}

}  // namespace lamina::llama
