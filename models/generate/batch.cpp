#include "models/generate/batch.h"

#include <algorithm>
#include <cmath>

#include "autograd/autograd.h"
#include "models/llama/sparse_kv_cache.h"
#include "nn/lora.h"

namespace lamina::generate {
namespace {

// SplitMix64's finaliser: every input bit affects every output bit.
uint64_t mix(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

// Logits [rows, 1, V] as contiguous f32 on the host: sampling runs there (an f64 model's logits
// are rounded once here).
Tensor host_logits(const Tensor& logits) {
  const Tensor on_host = ops::to_device(logits, Device::cpu());
  return ops::contiguous(on_host.dtype() == DType::f32 ? on_host : ops::cast(on_host, DType::f32));
}

// One slot of the batch: the sequence it holds, if any.
struct Slot {
  int64_t prompt = -1;  // index into the prompts; -1: free
  std::vector<int64_t> context;  // prompt and new tokens so far (for the repetition penalty)
  Generator generator;
  bool used = false;  // an earlier sequence ran here
};

class BatchRun {
 public:
  BatchRun(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
           const GenerateOptions& options, const BatchOptions& batch)
      : model_(model), prompts_(prompts), options_(options), batch_(batch),
        stop_(stop_tokens(model.config(), options)), room_(prompts.size()) {
    result_.tokens.resize(prompts.size());
    result_.finish_reasons.resize(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      room_[i] = new_token_room(model, options, int64_t(prompts[i].size()));
      result_.finish_reasons[i] = room_[i] < options.max_new_tokens ? "context" : "length";
    }
  }

  BatchResult run() {
    // The cache holds a prompt and all but its last new token (which is never fed back).
    int64_t capacity = 0, generating = 0;
    for (size_t i = 0; i < prompts_.size(); ++i) {
      if (room_[i] == 0) continue;
      ++generating;
      capacity = std::max(capacity, int64_t(prompts_[i].size()) + room_[i] - 1);
    }
    if (generating == 0) {
      for (size_t i = 0; i < prompts_.size(); ++i) finish(i);
      return std::move(result_);
    }
    autograd::NoGradGuard no_grad;
    result_.slots_used = std::min(batch_.slots, generating);
    // Keys and values in the model's own dtype, as generate() keeps them. Under a sparse plan the
    // slots are ring caches (each row its own length and slot positions), so memory follows the plan.
    const llama::SparseAttention& plan = model_.model->sparse_attention;
    if (plan.dense()) {
      llama::KvCache cache(model_.config(), result_.slots_used, capacity, model_.dtype(), {}, model_.device());
      generate_all(cache);
    } else {
      llama::SparseKvCache cache(model_.config(), plan, result_.slots_used, capacity, model_.dtype(), model_.device(),
                                 options_.rope_positions);
      generate_all(cache);
    }
    return std::move(result_);
  }

 private:
  static void attach(llama::ForwardOptions& forward, llama::KvCache* cache) { forward.cache = cache; }
  static void attach(llama::ForwardOptions& forward, llama::SparseKvCache* cache) { forward.sparse_cache = cache; }

  // Fills free slots and decodes until every prompt is done. Cache: llama::KvCache or
  // llama::SparseKvCache (both have row_view, set_row_length and per-row lengths).
  template <typename Cache>
  void generate_all(Cache& cache) {
    std::vector<Slot> slots(size_t(result_.slots_used));
    size_t next_prompt = 0;
    while (true) {
      for (size_t b = 0; b < slots.size(); ++b)
        if (slots[b].prompt < 0) fill(cache, slots, b, next_prompt);
      const bool any_busy = std::any_of(slots.begin(), slots.end(), [](const Slot& slot) { return slot.prompt >= 0; });
      if (!any_busy) break;
      decode_step(cache, slots);
    }
  }

  // Starts prompts in free slot `b` until one is still running after its first token, or the
  // queue is empty. Prompts with no room finish without a forward pass.
  template <typename Cache>
  void fill(Cache& cache, std::vector<Slot>& slots, size_t b, size_t& next_prompt) {
    Slot& slot = slots[b];
    while (slot.prompt < 0 && next_prompt < prompts_.size()) {
      const size_t i = next_prompt++;
      if (room_[i] == 0) {
        finish(i);
        continue;
      }
      result_.prefills += 1;
      result_.reused_slots += slot.used ? 1 : 0;
      slot.used = true;
      slot.prompt = int64_t(i);
      slot.context = prompts_[i];
      const uint64_t seed_index = batch_.seed_indices.empty() ? uint64_t(i) : batch_.seed_indices[i];
      slot.generator = Generator(prompt_seed(options_.sampling.seed, seed_index));
      // The prompt alone through a one-row view of the slot's storage, chunk by chunk.
      Cache row = cache.row_view(int64_t(b));
      llama::ForwardOptions forward;
      attach(forward, &row);
      forward.last_position_only = true;
      if (!batch_.prompt_adapters.empty()) nn::set_row_adapters(model_, {batch_.prompt_adapters[i]});
      const int64_t length = int64_t(prompts_[i].size());
      const Tensor ids = Tensor::from_vector(prompts_[i], {1, length});
      Tensor logits;
      for (int64_t start = 0; start < length; start += options_.prefill_chunk_tokens) {
        const int64_t end = std::min(length, start + options_.prefill_chunk_tokens);
        const Tensor chunk = ops::to_device(ops::contiguous(ids.slice(1, start, end)), model_.device());
        if (end < length)
          model_.hidden_states(chunk, forward);  // only the cache is wanted: no head product
        else
          logits = model_.forward(chunk, forward);
      }
      cache.set_row_length(int64_t(b), row.length());
      const Tensor rows = host_logits(logits);
      take_token(slot, rows.data<float>());
    }
  }

  // One token for every busy slot. Free slots take a dummy token at slot 0 (their length is
  // reset before and after), which keeps the batch's shape; their logits are ignored.
  template <typename Cache>
  void decode_step(Cache& cache, std::vector<Slot>& slots) {
    std::vector<int64_t> ids(slots.size(), 0);
    for (size_t b = 0; b < slots.size(); ++b) {
      if (slots[b].prompt >= 0)
        ids[b] = slots[b].context.back();
      else
        cache.set_row_length(int64_t(b), 0);
    }
    llama::ForwardOptions forward;
    attach(forward, &cache);
    forward.last_position_only = true;
    if (!batch_.prompt_adapters.empty()) {
      std::vector<int64_t> row_adapters(slots.size(), -1);  // a free slot's dummy row: the base, cheapest
      for (size_t b = 0; b < slots.size(); ++b)
        if (slots[b].prompt >= 0) row_adapters[b] = batch_.prompt_adapters[size_t(slots[b].prompt)];
      nn::set_row_adapters(model_, row_adapters);
    }
    const Tensor logits = model_.forward(
        ops::to_device(Tensor::from_vector(ids, {int64_t(slots.size()), 1}), model_.device()), forward);
    result_.decode_steps += 1;
    const Tensor rows = host_logits(logits);
    const int64_t vocab = model_.config().vocab_size;
    for (size_t b = 0; b < slots.size(); ++b) {
      if (slots[b].prompt < 0) {
        cache.set_row_length(int64_t(b), 0);
        continue;
      }
      take_token(slots[b], rows.data<float>() + int64_t(b) * vocab);
    }
  }

  // Samples the slot's next token from `logits` (one row of V) and records it; frees the slot
  // when its sequence is done.
  void take_token(Slot& slot, const float* logits) {
    const size_t i = size_t(slot.prompt);
    const int64_t vocab = model_.config().vocab_size;
    std::vector<int64_t>& tokens = result_.tokens[i];
    const int64_t bad = first_non_finite_logit(logits, vocab);
    LAMINA_CHECK(bad < 0, "generate: the model produced a non-finite logit (",
                 std::isnan(logits[std::max<int64_t>(bad, 0)]) ? "NaN" : "+inf", " for token ", bad, ") at new token ",
                 tokens.size() + 1, " of prompt ", i, "; check the model's weights for NaN or Inf values");
    const int64_t token = sample_next_token(logits, vocab, slot.context, options_.sampling, slot.generator);
    slot.context.push_back(token);
    const bool keep_going = !options_.on_token || options_.on_token(i, token);
    bool done = false;
    const std::vector<int64_t>* own_stop = batch_.prompt_stop_tokens.empty() ? nullptr : &batch_.prompt_stop_tokens[i];
    const bool stops = std::find(stop_.begin(), stop_.end(), token) != stop_.end() ||
                       (own_stop != nullptr && std::find(own_stop->begin(), own_stop->end(), token) != own_stop->end());
    if (stops) {
      result_.finish_reasons[i] = "stop";
      done = true;
    } else {
      tokens.push_back(token);
      if (!keep_going) {
        result_.finish_reasons[i] = "callback";
        done = true;
      } else {
        done = int64_t(tokens.size()) == room_[i];  // keeps the "length" or "context" set at the start
      }
    }
    if (!done) return;
    finish(i);
    slot.prompt = -1;
    slot.context.clear();
  }

  void finish(size_t i) {
    if (batch_.on_finish) batch_.on_finish(i, result_.tokens[i], result_.finish_reasons[i]);
  }

  const llama::LlamaForCausalLM& model_;
  const std::vector<std::vector<int64_t>>& prompts_;
  const GenerateOptions& options_;
  const BatchOptions& batch_;
  const std::vector<int64_t> stop_;
  std::vector<int64_t> room_;  // new tokens each prompt may have: max_new_tokens or what its context leaves
  BatchResult result_;
};

}  // namespace

uint64_t prompt_seed(uint64_t seed, uint64_t index) { return mix(seed ^ mix(index)); }

BatchResult generate_batch(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                           const GenerateOptions& options, const BatchOptions& batch) {
  options.sampling.validate();
  LAMINA_CHECK(!prompts.empty(), "generate: no prompts");
  LAMINA_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  LAMINA_CHECK(options.prefill_chunk_tokens > 0, "generate: prefill_chunk_tokens must be > 0, got ",
               options.prefill_chunk_tokens);
  LAMINA_CHECK(batch.slots > 0, "generate: the batch needs at least one slot, got ", batch.slots);
  LAMINA_CHECK(batch.seed_indices.empty() || batch.seed_indices.size() == prompts.size(), "generate: ",
               batch.seed_indices.size(), " seed indices for ", prompts.size(), " prompts");
  LAMINA_CHECK(batch.prompt_stop_tokens.empty() || batch.prompt_stop_tokens.size() == prompts.size(), "generate: ",
               batch.prompt_stop_tokens.size(), " lists of stop tokens for ", prompts.size(), " prompts");
  check_prompts(model.config(), prompts);
  if (batch.prompt_adapters.empty()) return BatchRun(model, prompts, options, batch).run();
  LAMINA_CHECK(batch.prompt_adapters.size() == prompts.size(), "generate: ", batch.prompt_adapters.size(),
               " adapter choices for ", prompts.size(), " prompts");
  const std::shared_ptr<nn::LoraSelection> selection = nn::lora_selection(model);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t index = batch.prompt_adapters[i];
    LAMINA_CHECK(index >= -1 && index < int64_t(selection->adapters.size()), "generate: prompt ", i, " asks for adapter ",
                 index, " but the model has ", selection->adapters.size(), " (-1 = the base alone)");
  }
  if (selection->adapters.empty()) {  // no adapters: every prompt asked for the base, which is all there is
    BatchOptions plain = batch;
    plain.prompt_adapters.clear();
    return BatchRun(model, prompts, options, plain).run();
  }
  // The per-row choices are the model's state while generating: put the caller's back whatever happens.
  struct RestoreRows {
    const llama::LlamaForCausalLM& model;
    std::vector<int64_t> rows;
    ~RestoreRows() { nn::lora_selection(model)->row_adapters = rows; }
  } restore{model, selection->row_adapters};
  return BatchRun(model, prompts, options, batch).run();
}

}  // namespace lamina::generate
