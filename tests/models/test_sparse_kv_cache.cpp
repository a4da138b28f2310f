// The ring-buffer KV cache of a sparse plan (models/llama/sparse_kv_cache.h) on its own, with
// random q, k, v standing in for a model's: the slot rule keeps exactly the keys a query may see
// (spec §4.1), decoding far past the ring's capacity equals the rows of full masked attention
// (ops::flash_attention with the same per-head pattern over every position), with windows that
// differ inside a GQA group and with chunked prefill whose chunks overwrite slots their own
// queries still read; bytes() follows the plan; misuse is a clear error.
#include <algorithm>
#include <set>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/llama/sparse_kv_cache.h"

using namespace lamina;

namespace {

llama::LlamaConfig cache_config(int64_t layers, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  llama::LlamaConfig config = testing::tiny_llama_config(16);
  config.num_hidden_layers = layers;
  config.num_attention_heads = heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = head_dim;
  config.hidden_size = heads * head_dim;
  config.max_position_embeddings = 4096;
  return config;
}

llama::SparseAttention plan_of(std::vector<std::vector<int64_t>> sinks, std::vector<std::vector<int64_t>> windows) {
  llama::SparseAttention plan;
  plan.sinks = std::move(sinks);
  plan.windows = std::move(windows);
  return plan;
}

// Independent of the library: the spec's predicate for causal sink + window.
bool visible(int64_t i, int64_t j, int64_t sink, int64_t window) {
  return j <= i && (j < sink || (window > 0 && (window == kAllKeys || i - j < window)));
}

struct Sequence {
  std::vector<Tensor> q, k, v;  // per layer: [B, Hq, N, D], [B, Hkv, N, D], [B, Hkv, N, D]
};

Sequence random_sequence(const llama::LlamaConfig& config, int64_t batch, int64_t length, uint64_t seed) {
  Generator gen(seed);
  Sequence s;
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    s.q.push_back(testing::random_tensor({batch, config.num_attention_heads, length, config.head_dim}, DType::f32, gen));
    s.k.push_back(testing::random_tensor({batch, config.num_key_value_heads, length, config.head_dim}, DType::f32, gen));
    s.v.push_back(testing::random_tensor({batch, config.num_key_value_heads, length, config.head_dim}, DType::f32, gen));
  }
  return s;
}

// Feeds the sequence through the cache in chunks of the given sizes (their sum is the length)
// and returns, per layer, the outputs of every position [B, Hq, N, D].
std::vector<Tensor> run_through_cache(llama::SparseKvCache& cache, const Sequence& s, const std::vector<int64_t>& chunks) {
  const size_t layers = s.q.size();
  std::vector<std::vector<Tensor>> outputs(layers);
  int64_t start = 0;
  for (int64_t chunk : chunks) {
    for (size_t layer = 0; layer < layers; ++layer) {
      const auto part = [&](const Tensor& t) { return t.slice(2, start, start + chunk); };
      outputs[layer].push_back(cache.attend(int64_t(layer), part(s.q[layer]), part(s.k[layer]), part(s.v[layer])));
    }
    cache.advance(chunk);
    start += chunk;
  }
  std::vector<Tensor> joined;
  for (auto& pieces : outputs) joined.push_back(ops::cat(pieces, 2));
  return joined;
}

// Full masked attention over every position: the oracle of the decode tests.
std::vector<Tensor> full_attention(const Sequence& s, const llama::SparseAttention& plan) {
  std::vector<Tensor> out;
  for (size_t layer = 0; layer < s.q.size(); ++layer) {
    const AttentionPattern pattern = AttentionPattern::per_head_sink_window(plan.sinks[layer], plan.windows[layer]);
    out.push_back(ops::flash_attention(s.q[layer], s.k[layer], s.v[layer], pattern).out);
  }
  return out;
}

std::vector<int64_t> chunk_sizes(int64_t prefill_chunk, int64_t prompt, int64_t decode_steps) {
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < prompt; start += prefill_chunk) sizes.push_back(std::min(prefill_chunk, prompt - start));
  sizes.insert(sizes.end(), size_t(decode_steps), 1);
  return sizes;
}

const testing::Tolerance kTolerance{2e-6, 1e-5};

}  // namespace

TEST_CASE("sparse kv cache: after writing 0..p the live slots are exactly the keys query p may see (s 3, W 5)") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = cache_config(1, 1, 1, 4);
  const llama::SparseAttention plan = plan_of({{3}}, {{5}});
  const Sequence s = random_sequence(config, 1, 41, 1);
  for (int64_t chunk : {1, 3, 7}) {  // one token at a time, and chunks that wrap the ring
    INFO("chunks of " << chunk);
    llama::SparseKvCache cache(config, plan, 1, 41);
    CHECK(cache.capacity(0, 0) == 8);
    int64_t checked = 0;
    for (int64_t start = 0; start < 41; start += chunk) {
      const int64_t count = std::min<int64_t>(chunk, 41 - start);
      cache.attend(0, s.q[0].slice(2, start, start + count), s.k[0].slice(2, start, start + count),
                   s.v[0].slice(2, start, start + count));
      cache.advance(count);
      const int64_t p = start + count - 1;
      std::multiset<int64_t> live, expected;
      for (int64_t position : cache.slot_positions(0, 0))
        if (position >= 0) live.insert(position);
      for (int64_t j = 0; j <= p; ++j)
        if (visible(p, j, 3, 5)) expected.insert(j);
      INFO("after position " << p);
      CHECK(live == expected);
      ++checked;
    }
    CHECK(checked == (41 + chunk - 1) / chunk);
  }
}

TEST_CASE("sparse kv cache: decoding past 2 x capacity equals full masked attention, row for row") {
  autograd::NoGradGuard no_grad;
  struct DecodeCase {
    std::string label;
    int64_t heads, kv_heads, head_dim, batch;
    llama::SparseAttention plan;
    int64_t prompt, prefill_chunk, max_length;
  };
  const std::vector<DecodeCase> cases = {
      {"uniform sink 4 + window 16, GQA 2, prompt 10 in one chunk", 4, 2, 32, 1,
       plan_of({{4, 4, 4, 4}, {4, 4, 4, 4}}, {{16, 16, 16, 16}, {16, 16, 16, 16}}), 10, 10, 70},
      {"windows and sinks differ inside each GQA group, a dense head, batch 2", 6, 2, 16, 2,
       plan_of({{0, 4, 1, 0, 2, 4}, {1, 1, 1, 0, 0, 0}}, {{3, 17, 8, kAllKeys, 5, 0}, {9, 2, 9, 6, 6, 6}}), 5, 5, 80},
      {"chunked prefill: chunks of 8 over a window of 5 (each chunk overwrites what it reads)", 4, 1, 64, 1,
       plan_of({{2, 2, 0, 3}, {4, 4, 4, 4}}, {{5, 3, 5, 1}, {5, 5, 5, 5}}), 37, 8, 90},
      {"sink only (window 0) and a window wider than max_length", 4, 2, 8, 1,
       plan_of({{3, 3, 0, 0}, {2, 2, 2, 2}}, {{0, 0, 500, 500}, {4, 4, 4, 4}}), 9, 4, 40},
  };
  uint64_t seed = 10;
  for (const DecodeCase& c : cases) {
    INFO(c.label);
    const llama::LlamaConfig config = cache_config(2, c.heads, c.kv_heads, c.head_dim);
    llama::SparseKvCache cache(config, c.plan, c.batch, c.max_length);
    const int64_t steps = c.max_length - c.prompt;
    for (int64_t layer = 0; layer < 2; ++layer)
      for (int64_t g = 0; g < c.kv_heads; ++g) {
        const int64_t capacity = cache.capacity(layer, g);
        CHECK((capacity == c.max_length || steps > 2 * capacity));  // every ring wraps at least twice
      }
    const Sequence s = random_sequence(config, c.batch, c.max_length, ++seed);
    const std::vector<Tensor> cached = run_through_cache(cache, s, chunk_sizes(c.prefill_chunk, c.prompt, steps));
    const std::vector<Tensor> full = full_attention(s, c.plan);
    CHECK(cache.length() == c.max_length);
    for (size_t layer = 0; layer < 2; ++layer) {
      INFO("layer " << layer);
      CHECK_CLOSE(cached[layer], full[layer], kTolerance);
    }
  }
}

TEST_CASE("sparse kv cache: a dense plan keeps every position and equals dense causal attention") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = cache_config(2, 4, 2, 16);
  llama::SparseKvCache cache(config, llama::SparseAttention{}, 1, 30);
  CHECK(cache.capacity(0, 0) == 30);
  CHECK(cache.capacity(1, 1) == 30);
  const Sequence s = random_sequence(config, 1, 30, 3);
  const std::vector<Tensor> cached = run_through_cache(cache, s, chunk_sizes(7, 12, 18));
  for (size_t layer = 0; layer < 2; ++layer) {
    const Tensor dense = ops::flash_attention(s.q[layer], s.k[layer], s.v[layer], AttentionPattern::dense()).out;
    CHECK_CLOSE(cached[layer], dense, kTolerance);
  }
}

TEST_CASE("sparse kv cache: bytes() follows the plan, and the widest head of a GQA group sizes its ring") {
  const llama::LlamaConfig config = cache_config(2, 4, 2, 8);
  const int64_t row = 8 * 4;  // one key or value row: head_dim f32 values
  const int64_t max_length = 1000, batch = 3;
  const llama::SparseKvCache dense(config, llama::SparseAttention{}, batch, max_length);
  CHECK(dense.bytes() == 2 * 2 * batch * 2 * max_length * row);  // K and V, 2 layers, 2 KV heads
  const llama::SparseAttention uniform = plan_of({{4, 4, 4, 4}, {4, 4, 4, 4}}, {{60, 60, 60, 60}, {60, 60, 60, 60}});
  const llama::SparseKvCache streaming(config, uniform, batch, max_length);
  CHECK(streaming.bytes() == 2 * 2 * batch * 2 * 64 * row);
  // Layer 0: group 0 has heads (sink 4, window 10) and (sink 0, window 100): capacity 4 + 100;
  // group 1 is dense. Layer 1: windows of 20 and 0 with sink 2: capacity 22 for both groups.
  const llama::SparseAttention mixed = plan_of({{4, 0, 0, 0}, {2, 2, 2, 2}}, {{10, 100, kAllKeys, 3}, {20, 0, 0, 20}});
  const llama::SparseKvCache moa(config, mixed, batch, max_length);
  CHECK(moa.capacity(0, 0) == 104);
  CHECK(moa.capacity(0, 1) == max_length);
  CHECK(moa.capacity(1, 0) == 22);
  CHECK(moa.capacity(1, 1) == 22);
  CHECK(moa.bytes() == 2 * batch * (104 + max_length + 22 + 22) * row);
  CHECK(streaming.bytes() < moa.bytes());
  CHECK(moa.bytes() < dense.bytes());
  // A bf16 cache is half the f32 one.
  CHECK(llama::SparseKvCache(config, uniform, batch, max_length, DType::bf16).bytes() * 2 == streaming.bytes());
}

TEST_CASE("sparse kv cache: a bf16 cache attends in f32 and returns q's dtype") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = cache_config(1, 2, 1, 64);
  const llama::SparseAttention plan = plan_of({{1, 0}}, {{6, 3}});
  llama::SparseKvCache cache(config, plan, 1, 40, DType::bf16);
  const Sequence s = random_sequence(config, 1, 40, 8);
  const std::vector<Tensor> cached = run_through_cache(cache, s, chunk_sizes(9, 20, 20));
  CHECK(cached[0].dtype() == DType::f32);
  // The oracle on the bf16-rounded keys and values: only their rounding and the kernel's f32 remain.
  const Tensor rounded_k = ops::cast(ops::cast(s.k[0], DType::bf16), DType::f32);
  const Tensor rounded_v = ops::cast(ops::cast(s.v[0], DType::bf16), DType::f32);
  const Tensor rounded_q = ops::cast(ops::cast(s.q[0], DType::bf16), DType::f32);
  const Tensor expected = ops::flash_attention(rounded_q, rounded_k, rounded_v,
                                               AttentionPattern::per_head_sink_window({1, 0}, {6, 3})).out;
  CHECK_CLOSE(cached[0], expected, testing::tolerance_for(DType::bf16));
}

TEST_CASE("sparse kv cache: misuse is a clear error") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = cache_config(2, 4, 2, 8);
  const llama::SparseAttention plan = llama::SparseAttention::uniform(config, 1, 4);
  CHECK_THROWS_WITH_AS(llama::SparseKvCache(config, plan_of({{1}}, {{4}}), 1, 10), doctest::Contains("layers"), Error);
  CHECK_THROWS_WITH_AS(llama::SparseKvCache(config, plan, 1, 0), doctest::Contains("max_length must be > 0"), Error);
  llama::SparseKvCache cache(config, plan, 1, 6);
  const Sequence s = random_sequence(config, 1, 8, 2);
  const auto part = [](const Tensor& t, int64_t from, int64_t to) { return t.slice(2, from, to); };
  cache.attend(0, part(s.q[0], 0, 4), part(s.k[0], 0, 4), part(s.v[0], 0, 4));
  CHECK_THROWS_WITH_AS(cache.attend(0, part(s.q[0], 0, 4), part(s.k[0], 0, 4), part(s.v[0], 0, 4)),
                       doctest::Contains("attended twice"), Error);
  CHECK_THROWS_WITH_AS(cache.advance(4), doctest::Contains("layer 1 attended 0 tokens"), Error);
  cache.attend(1, part(s.q[1], 0, 4), part(s.k[1], 0, 4), part(s.v[1], 0, 4));
  cache.advance(4);
  CHECK_THROWS_WITH_AS(cache.attend(0, part(s.q[0], 4, 7), part(s.k[0], 4, 7), part(s.v[0], 4, 7)),
                       doctest::Contains("would pass the cache's max_length of 6"), Error);
  CHECK_THROWS_WITH_AS(cache.attend(0, part(s.q[0], 4, 5), part(s.k[0], 4, 6), part(s.v[0], 4, 5)),
                       doctest::Contains("must be [1, 2, 1, 8]"), Error);
  CHECK_THROWS_WITH_AS(cache.attend(2, part(s.q[0], 4, 5), part(s.k[0], 4, 5), part(s.v[0], 4, 5)),
                       doctest::Contains("layer 2 out of range"), Error);
}
