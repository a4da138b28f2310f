// The ring-buffer KV cache of a sparse plan (models/llama/sparse_kv_cache.h) on its own, with
// random q, k, v standing in for a model's: the slot rule keeps exactly the keys a query may see
// (spec §4.1), decoding far past the ring's capacity equals the rows of full masked attention
// (ops::flash_attention with the same per-head pattern over every position), with windows that
// differ inside a GQA group and with chunked prefill whose chunks overwrite slots their own
// queries still read; bytes() follows the plan; misuse is a clear error. Rows of their own
// lengths (slot reuse, as continuous batching fills them): a decode step over rows of different
// lengths equals each row decoded alone, and a freed row refilled through row_view starts clean.
// StreamingLLM's cache-slot RoPE mode against a reference written here that keeps pre-RoPE keys,
// assigns the cache positions explicitly and applies RoPE and softmax by hand in f64.
#include <algorithm>
#include <cmath>
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

namespace {

// Feeds rows [from, to) of `s` (per layer [B, H, N, D]) for positions [start, end) of row `row`
// through a batch-1 cache, one chunk: the outputs per layer [1, Hq, end - start, D].
std::vector<Tensor> attend_rows(llama::SparseKvCache& cache, const Sequence& s, int64_t row, int64_t start,
                                int64_t end) {
  std::vector<Tensor> out;
  for (size_t layer = 0; layer < s.q.size(); ++layer) {
    const auto part = [&](const Tensor& t) { return t.slice(0, row, row + 1).slice(2, start, end); };
    out.push_back(cache.attend(int64_t(layer), part(s.q[layer]), part(s.k[layer]), part(s.v[layer])));
  }
  cache.advance(end - start);
  return out;
}

}  // namespace

TEST_CASE("sparse kv cache: rows of different lengths in one decode step equal each row decoded alone") {
  autograd::NoGradGuard no_grad;
  // Windows and sinks that differ inside a GQA group, and a second layer of another rule.
  const llama::LlamaConfig config = cache_config(2, 4, 2, 16);
  const llama::SparseAttention plan = plan_of({{2, 0, 1, 1}, {3, 3, 3, 3}}, {{5, 7, 4, 4}, {6, 6, 6, 6}});
  const int64_t rows = 3, max_length = 60, steps = 30;
  const std::vector<int64_t> prompts = {4, 17, 9};  // each row's prompt length (17 is past the rings)
  const Sequence s = random_sequence(config, rows, max_length, 31);

  llama::SparseKvCache batched(config, plan, rows, max_length);
  // A stale sequence in row 1 first: freed, then refilled through row_view, it must leave nothing.
  {
    llama::SparseKvCache view = batched.row_view(1);
    attend_rows(view, random_sequence(config, 1, 11, 99), 0, 0, 11);
    batched.set_row_length(1, view.row_length(0));
    CHECK(batched.row_length(1) == 11);
    batched.set_row_length(1, 0);
    for (int64_t position : batched.slot_positions(0, 0, 1)) CHECK(position == -1);
  }
  for (int64_t b = 0; b < rows; ++b) {
    llama::SparseKvCache view = batched.row_view(b);
    for (int64_t start = 0; start < prompts[size_t(b)]; start += 5)  // chunked prefill
      attend_rows(view, s, b, start, std::min(prompts[size_t(b)], start + 5));
    batched.set_row_length(b, view.row_length(0));
  }
  CHECK(batched.row_length(0) == 4);
  CHECK(batched.row_length(1) == 17);
  CHECK(batched.length() == 17);
  const std::vector<int64_t> expected_positions = {4, 17, 9};
  const std::vector<int64_t> next = batched.next_positions(1).to_vector<int64_t>();
  CHECK(next == expected_positions);

  // Each row alone, from position 0 to the end: the oracle.
  std::vector<std::vector<Tensor>> alone(static_cast<size_t>(rows));
  for (int64_t b = 0; b < rows; ++b) {
    llama::SparseKvCache single(config, plan, 1, max_length);
    attend_rows(single, s, b, 0, prompts[size_t(b)]);
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t p = prompts[size_t(b)] + step;
      alone[size_t(b)].push_back(attend_rows(single, s, b, p, p + 1)[1]);  // layer 1's output
    }
  }
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<Tensor> q, k, v;
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t p = prompts[size_t(b)] + step;
      q.push_back(s.q[1].slice(0, b, b + 1).slice(2, p, p + 1));
      k.push_back(s.k[1].slice(0, b, b + 1).slice(2, p, p + 1));
      v.push_back(s.v[1].slice(0, b, b + 1).slice(2, p, p + 1));
    }
    // Layer 0 takes the same step (every layer attends before advance); layer 1 is compared.
    std::vector<Tensor> q0, k0, v0;
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t p = prompts[size_t(b)] + step;
      q0.push_back(s.q[0].slice(0, b, b + 1).slice(2, p, p + 1));
      k0.push_back(s.k[0].slice(0, b, b + 1).slice(2, p, p + 1));
      v0.push_back(s.v[0].slice(0, b, b + 1).slice(2, p, p + 1));
    }
    batched.attend(0, ops::cat(q0, 0), ops::cat(k0, 0), ops::cat(v0, 0));
    const Tensor out = batched.attend(1, ops::cat(q, 0), ops::cat(k, 0), ops::cat(v, 0));
    batched.advance(1);
    for (int64_t b = 0; b < rows; ++b) {
      INFO("step " << step << ", row " << b);
      CHECK_CLOSE(out.slice(0, b, b + 1), alone[size_t(b)][size_t(step)], kTolerance);
    }
  }
  // Each row's slots hold its own positions: what its window keeps at its own length.
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t last = prompts[size_t(b)] + steps - 1;
    std::multiset<int64_t> live, expected;
    for (int64_t position : batched.slot_positions(1, 0, b))
      if (position >= 0) live.insert(position);
    for (int64_t j = 0; j <= last; ++j)
      if (visible(last, j, 3, 6)) expected.insert(j);
    INFO("row " << b);
    CHECK(live == expected);
  }
}

TEST_CASE("sparse kv cache: per-row misuse is a clear error") {
  autograd::NoGradGuard no_grad;
  const llama::LlamaConfig config = cache_config(1, 2, 1, 8);
  llama::SparseKvCache cache(config, plan_of({{1, 1}}, {{3, 3}}), 2, 20);
  const Sequence s = random_sequence(config, 2, 20, 5);
  {
    llama::SparseKvCache view = cache.row_view(0);
    attend_rows(view, s, 0, 0, 6);
  }
  // The row holds 6 positions: another length would make stale or empty slots count.
  CHECK_THROWS_WITH_AS(cache.set_row_length(0, 5), doctest::Contains("does not hold the positions of a length of 5"),
                       Error);
  CHECK_THROWS_WITH_AS(cache.set_row_length(2, 0), doctest::Contains("no row 2 in a batch of 2"), Error);
  CHECK_THROWS_WITH_AS(cache.set_row_length(0, 21), doctest::Contains("outside [0, 20]"), Error);
  cache.set_row_length(0, 6);
  CHECK_THROWS_WITH_AS(cache.attend(0, s.q[0].slice(2, 0, 2), s.k[0].slice(2, 0, 2), s.v[0].slice(2, 0, 2)),
                       doctest::Contains("rows of different lengths take one token at a time"), Error);
  CHECK_THROWS_WITH_AS((void)cache.row_view(3), doctest::Contains("no row 3"), Error);
}

namespace {

// RoPE by hand in f64 on one head vector (rotate-half pairs (i, i + D/2)) at `position`, with the
// model's frequency table.
std::vector<double> rotated(const std::vector<double>& x, int64_t position, const std::vector<float>& frequencies) {
  const size_t half = x.size() / 2;
  std::vector<double> out(x.size());
  for (size_t i = 0; i < half; ++i) {
    const double angle = double(position) * double(frequencies[i]);
    out[i] = x[i] * std::cos(angle) - x[i + half] * std::sin(angle);
    out[i + half] = x[i + half] * std::cos(angle) + x[i] * std::sin(angle);
  }
  return out;
}

// StreamingLLM's attention for pre-RoPE q, k, v of one layer ([1, H, N, D] as host vectors),
// chunk by chunk, with every head of KV group g under the rule (sinks[g], windows[g]): before a
// chunk starting at `start`, the cache holds the sinks [0, min(s, start)) and the window's keys
// [max(s, start - W + 1), start), which take cache positions 0, 1, ... in that order; the chunk's
// tokens take the positions after them. With `absolute`, every token keeps its own position
// instead (MoA's mode). Returns [H][N][D].
std::vector<std::vector<std::vector<double>>> streaming_reference(const Tensor& q, const Tensor& k, const Tensor& v,
                                                                  const std::vector<int64_t>& sinks,
                                                                  const std::vector<int64_t>& windows,
                                                                  const std::vector<int64_t>& chunks,
                                                                  const std::vector<float>& frequencies, bool absolute) {
  const int64_t heads = q.size(1), kv_heads = k.size(1), length = q.size(2), dim = q.size(3);
  const std::vector<float> qv = ops::contiguous(q).to_vector<float>(), kv = ops::contiguous(k).to_vector<float>();
  const std::vector<float> vv = ops::contiguous(v).to_vector<float>();
  const auto row = [&](const std::vector<float>& data, int64_t head, int64_t n) {
    const float* first = data.data() + (head * length + n) * dim;
    return std::vector<double>(first, first + dim);
  };
  std::vector<std::vector<std::vector<double>>> out(static_cast<size_t>(heads),
                                                    std::vector<std::vector<double>>(static_cast<size_t>(length)));
  int64_t start = 0;
  for (int64_t chunk : chunks) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads), sink = sinks[size_t(g)], window = windows[size_t(g)];
      // The cache's keys before the chunk, in cache order, then the chunk's.
      std::vector<int64_t> keys;
      for (int64_t j = 0; j < std::min(sink, start); ++j) keys.push_back(j);
      for (int64_t j = std::max(sink, start - window + 1); j < start; ++j) keys.push_back(j);
      const int64_t cached = int64_t(keys.size());
      for (int64_t t = 0; t < chunk; ++t) keys.push_back(start + t);
      for (int64_t t = 0; t < chunk; ++t) {
        const int64_t i = start + t;
        const std::vector<double> query = rotated(row(qv, h, i), absolute ? i : cached + t, frequencies);
        std::vector<double> scores, weights;
        std::vector<int64_t> seen;
        for (size_t place = 0; place < keys.size(); ++place) {
          const int64_t j = keys[place];
          if (j > i || !(j < sink || i - j < window)) continue;  // causal sink + window, by true position
          const std::vector<double> key = rotated(row(kv, g, j), absolute ? j : int64_t(place), frequencies);
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d) dot += query[size_t(d)] * key[size_t(d)];
          scores.push_back(dot / std::sqrt(double(dim)));
          seen.push_back(j);
        }
        const double top = *std::max_element(scores.begin(), scores.end());
        double total = 0;
        for (double score : scores) {
          weights.push_back(std::exp(score - top));
          total += weights.back();
        }
        std::vector<double> o(static_cast<size_t>(dim), 0.0);
        for (size_t n = 0; n < seen.size(); ++n) {
          const std::vector<double> value = row(vv, g, seen[n]);
          for (int64_t d = 0; d < dim; ++d) o[size_t(d)] += weights[n] / total * value[size_t(d)];
        }
        out[size_t(h)][size_t(i)] = o;
      }
    }
    start += chunk;
  }
  return out;
}

double max_difference(const Tensor& actual, const std::vector<std::vector<std::vector<double>>>& expected) {
  const std::vector<float> values = ops::contiguous(actual).to_vector<float>();
  const int64_t length = actual.size(2), dim = actual.size(3);
  double worst = 0;
  for (size_t h = 0; h < expected.size(); ++h)
    for (int64_t n = 0; n < length; ++n)
      for (int64_t d = 0; d < dim; ++d)
        worst = std::max(worst, std::abs(double(values[size_t((int64_t(h) * length + n) * dim + d)]) -
                                         expected[h][size_t(n)][size_t(d)]));
  return worst;
}

}  // namespace

TEST_CASE("sparse kv cache: cache-slot RoPE equals a hand reference that re-assigns cache positions (GQA)") {
  autograd::NoGradGuard no_grad;
  llama::LlamaConfig config = cache_config(1, 6, 2, 16);
  config.rope_theta = 100.0;  // every frequency turns within a few positions: a wrong position shows
  const std::vector<float> frequencies = ops::rope_frequencies(config.rope());
  // KV group 0: sink 4 + window 6 (capacity 10); group 1: sink 1 + window 9 (capacity 10), so one
  // layer has two rings and each rotates the query by its own count.
  const llama::SparseAttention plan = plan_of({{4, 4, 4, 1, 1, 1}}, {{6, 6, 6, 9, 9, 9}});
  const std::vector<int64_t> sinks = {4, 1}, windows = {6, 9};
  const int64_t prompt = 13, max_length = 60;  // 47 decode steps: past 2 x capacity (20)
  for (const std::vector<int64_t>& prefill : {std::vector<int64_t>{13}, std::vector<int64_t>{5, 5, 3}}) {
    INFO("prefill chunks: " << prefill.size());
    const Sequence s = random_sequence(config, 1, max_length, 41);
    std::vector<int64_t> chunks = prefill;
    chunks.insert(chunks.end(), size_t(max_length - prompt), 1);

    llama::SparseKvCache streaming(config, plan, 1, max_length, DType::f32, Device::cpu(),
                                   llama::RopePositions::cache_slot);
    CHECK(streaming.rope_positions() == llama::RopePositions::cache_slot);
    const Tensor cache_slot_out = run_through_cache(streaming, s, chunks)[0];
    const auto expected = streaming_reference(s.q[0], s.k[0], s.v[0], sinks, windows, chunks, frequencies, false);
    CHECK(max_difference(cache_slot_out, expected) < 2e-5);

    // The original mode, fed keys rotated at their true positions, is MoA's: the same reference
    // with every position its own. The two modes differ once the rings wrap.
    llama::SparseKvCache moa(config, plan, 1, max_length);
    Sequence rotated_sequence = s;
    const Tensor positions = arange(0, max_length, 1, DType::i64, Device::cpu());
    const auto rope_all = [&](const Tensor& t) {
      return ops::contiguous(ops::rope(t.transpose(1, 2), positions, config.rope()).transpose(1, 2));
    };
    rotated_sequence.q[0] = rope_all(s.q[0]);
    rotated_sequence.k[0] = rope_all(s.k[0]);
    const Tensor original_out = run_through_cache(moa, rotated_sequence, chunks)[0];
    const auto expected_original = streaming_reference(s.q[0], s.k[0], s.v[0], sinks, windows, chunks, frequencies, true);
    CHECK(max_difference(original_out, expected_original) < 2e-5);
    CHECK(max_difference(cache_slot_out, expected_original) > 1e-2);
  }
}

TEST_CASE("sparse kv cache: cache-slot RoPE with nothing evicted is the original mode") {
  autograd::NoGradGuard no_grad;
  llama::LlamaConfig config = cache_config(2, 4, 2, 16);
  config.rope_theta = 100.0;
  const int64_t length = 30;
  // A sink and a window covering all 30 positions: every cache position is the true one.
  const llama::SparseAttention plan = llama::SparseAttention::uniform(config, 2, 40);
  const Sequence s = random_sequence(config, 2, length, 43);
  llama::SparseKvCache streaming(config, plan, 2, length, DType::f32, Device::cpu(), llama::RopePositions::cache_slot);
  const std::vector<Tensor> out = run_through_cache(streaming, s, chunk_sizes(7, 12, 18));
  const Tensor positions = arange(0, length, 1, DType::i64, Device::cpu());
  for (size_t layer = 0; layer < 2; ++layer) {
    const auto rope_all = [&](const Tensor& t) {
      return ops::contiguous(ops::rope(t.transpose(1, 2), positions, config.rope()).transpose(1, 2));
    };
    const Tensor dense = ops::flash_attention(rope_all(s.q[layer]), rope_all(s.k[layer]), s.v[layer],
                                              AttentionPattern::dense()).out;
    CHECK_CLOSE(out[layer], dense, kTolerance);
  }
}
