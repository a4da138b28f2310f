// ops::flash_attention and its backward on the GPU (ops/cuda/flash_attention.cu) against the CPU
// kernel on the same inputs, for every kind of pattern: dense, GQA 1/2/4, sink + window,
// per-head (MoA) windows, packed documents (with documents of length 1, per batch row or
// shared), block layouts with empty rows and tiles, an additive mask, query_offset > 0, lengths
// that are not multiples of the 64-wide tiles, D 8/24/40/64/128. Also: bf16 by the spec's
// criterion (sparse-attention.md §6.2: error against an f64 oracle at most 2x that of a naive
// bf16 implementation), f16, rows that see no key (out 0, lse -inf, no NaN anywhere), skipped
// tiles leaving every result bit for bit equal to the same pattern as a dense -inf mask, two runs
// giving identical bits (no atomics), autograd end to end on CUDA tensors, and the errors for
// f64 and head_dim > 128.
// Tolerances: f32 results within 1e-5 (forward) and 2e-5 (gradients) of the largest |value| of
// the CPU's result (the same f32 equations summed in another order; the gradients sum over more
// terms); lse to 1e-5 of max(1, largest |lse|); f16 one f16 rounding (tolerance_for(f16));
// bf16 gradients within 2x the CPU kernel's own error against the f64 oracle.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "attention_patterns.h"
#include "autograd/functions.h"
#include "cuda_cases.h"
#include "ops/attention_pattern.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

namespace {

struct GpuFlashCase {
  std::string label;
  int64_t batch, heads, kv_heads, queries, keys, head_dim;
  AttentionPattern pattern;
};

std::vector<GpuFlashCase> gpu_flash_cases() {
  std::mt19937 rng(1515);
  std::vector<GpuFlashCase> cases;
  cases.push_back({"dense causal, GQA 2, B 2", 2, 4, 2, 100, 100, 64, AttentionPattern::dense()});
  cases.push_back({"dense causal, GQA 4, D 128, several full tiles", 1, 4, 1, 300, 300, 128, AttentionPattern::dense()});
  cases.push_back({"dense non-causal, Tq != Tk, D 8", 1, 2, 1, 37, 91, 8, AttentionPattern::dense(false)});
  cases.push_back({"cache prefix: 70 queries after 130 keys, D 128", 1, 2, 2, 70, 200, 128,
                   AttentionPattern::sink_window(4, 50)});
  for (int64_t ratio : {1, 2, 4})
    cases.push_back({"sink 4 + window 17, GQA ratio " + std::to_string(ratio), 1, ratio, 1, 131, 131, 64,
                     AttentionPattern::sink_window(4, 17)});
  cases.push_back({"per-head (MoA) sinks and windows, D 128", 1, 4, 2, 150, 150, 128,
                   AttentionPattern::per_head_sink_window({0, 1, 4, 64}, {1, 3, 100, kAllKeys})});
  cases.push_back({"documents per batch row (some of length 1), D 40", 2, 2, 1, 97, 97, 40,
                   AttentionPattern::documents(random_documents(2, 97, 9, rng))});
  {
    AttentionPattern mixed = AttentionPattern::sink_window(2, 5);
    mixed.document_ids = random_documents(1, 140, 40, rng).reshape({140});
    cases.push_back({"documents shared by 2 batch rows + sink 2 + window 5", 2, 2, 2, 140, 140, 64, mixed});
  }
  {
    AttentionPattern later = AttentionPattern::documents(random_documents(1, 200, 30, rng));
    later.query_offset = 100;
    cases.push_back({"documents, 70 queries at offset 100 of 200 keys", 1, 2, 1, 70, 200, 64, later});
  }
  cases.push_back({"block-sparse 64 x 64 with an empty block row", 1, 2, 1, 200, 200, 64,
                   AttentionPattern::block_sparse(random_layout(1, 4, 4, 0.5, rng), 64, 64)});
  cases.push_back({"block-sparse 16 x 32 per head, D 24", 1, 3, 1, 90, 90, 24,
                   AttentionPattern::block_sparse(random_layout(3, 6, 3, 0.4, rng), 16, 32)});
  {
    AttentionPattern mixed = AttentionPattern::block_sparse(random_layout(2, 5, 5, 0.3, rng), 32, 32);
    mixed.sinks = {3};
    mixed.windows = {7, 0};
    mixed.query_offset = 40;
    cases.push_back({"block-sparse + sink + per-head window, query_offset 40", 1, 2, 1, 120, 160, 64, mixed});
  }
  {
    AttentionPattern masked = AttentionPattern::sink_window(1, 30);
    Generator mask_values(4);
    masked.additive_mask = uniform({1, 1, 75, 75}, -2.0, 2.0, mask_values, DType::f32);
    cases.push_back({"additive mask (broadcast) + sink + window", 1, 2, 1, 75, 75, 64, masked});
  }
  {
    AttentionPattern masked = AttentionPattern::dense(false);
    Generator mask_values(5);
    masked.additive_mask = uniform({2, 2, 66, 80}, -3.0, 1.0, mask_values, DType::f32);
    cases.push_back({"additive mask [B, Hq, Tq, Tk], non-causal", 2, 2, 2, 66, 80, 64, masked});
  }
  cases.push_back({"nothing visible at all", 1, 2, 1, 70, 70, 64, AttentionPattern::sink_window(0, 0)});
  cases.push_back({"one decode query over 150 keys", 2, 4, 1, 1, 150, 64, AttentionPattern::sink_window(4, 64)});
  return cases;
}

struct Inputs {
  Tensor q, k, v, grad_out;
};

Inputs inputs_for(const GpuFlashCase& c, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return {random_tensor({c.batch, c.heads, c.queries, c.head_dim}, dtype, gen),
          random_tensor({c.batch, c.kv_heads, c.keys, c.head_dim}, dtype, gen),
          random_tensor({c.batch, c.kv_heads, c.keys, c.head_dim}, dtype, gen),
          random_tensor({c.batch, c.heads, c.queries, c.head_dim}, dtype, gen)};
}

Inputs on_gpu(const Inputs& in) { return {mirror(in.q), mirror(in.k), mirror(in.v), mirror(in.grad_out)}; }

// The pattern as an additive mask: 0 where allowed (plus the pattern's own mask), -inf elsewhere.
Tensor dense_additive_mask(const GpuFlashCase& c) {
  const Tensor allowed = attention_pattern_mask(c.pattern, c.batch, c.heads, c.queries, c.keys);
  Tensor mask = ops::where(allowed, zeros({1}, DType::f32), full({1}, -INFINITY, DType::f32));
  if (c.pattern.additive_mask.defined()) mask = ops::add(mask, ops::cast(c.pattern.additive_mask, DType::f32));
  return mask;
}

// Round to the nearest bf16 (ties to even), as a float.
float round_bf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  float rounded;
  std::memcpy(&rounded, &bits, sizeof rounded);
  return rounded;
}

// A naive bf16 attention, the spec's yardstick: scores rounded to bf16, softmax in f32 with the
// probabilities rounded to bf16, P V accumulated in f32 and the output rounded to bf16 (what a
// materialising bf16 implementation stores between its steps). No additive mask.
Tensor naive_bf16_attention(const GpuFlashCase& c, const Tensor& q, const Tensor& k, const Tensor& v) {
  const ResolvedAttentionPattern pattern(c.pattern, c.batch, c.heads, c.queries, c.keys);
  const std::vector<float> qs = q.to_vector<float>(), ks = k.to_vector<float>(), vs = v.to_vector<float>();
  const int64_t D = c.head_dim, Tq = c.queries, Tk = c.keys, group = c.heads / c.kv_heads;
  const float scale = float(1.0 / std::sqrt(double(D)));
  std::vector<float> out(static_cast<size_t>(c.batch * c.heads * Tq * D), 0.0f);
  std::vector<float> scores(static_cast<size_t>(Tk));
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads; ++h)
      for (int64_t t = 0; t < Tq; ++t) {
        const float* qr = qs.data() + ((b * c.heads + h) * Tq + t) * D;
        const int64_t kv = b * c.kv_heads + h / group;
        float peak = -INFINITY;
        for (int64_t j = 0; j < Tk; ++j) {
          if (!pattern.allowed(b, h, pattern.query_offset() + t, j)) {
            scores[size_t(j)] = -INFINITY;
            continue;
          }
          float dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qr[d] * ks[size_t((kv * Tk + j) * D + d)];
          scores[size_t(j)] = round_bf16(dot * scale);
          peak = std::max(peak, scores[size_t(j)]);
        }
        if (peak == -INFINITY) continue;
        float total = 0;
        for (int64_t j = 0; j < Tk; ++j) total += std::exp(scores[size_t(j)] - peak);
        float* o = out.data() + ((b * c.heads + h) * Tq + t) * D;
        for (int64_t j = 0; j < Tk; ++j) {
          const float p = round_bf16(std::exp(scores[size_t(j)] - peak) / total);
          for (int64_t d = 0; d < D; ++d) o[d] += p * vs[size_t((kv * Tk + j) * D + d)];
        }
        for (int64_t d = 0; d < D; ++d) o[d] = round_bf16(o[d]);
      }
  return Tensor::from_vector(out, {c.batch, c.heads, Tq, D});
}

}  // namespace

TEST_CASE("flash_attention on the GPU: forward and backward equal the CPU kernel for every pattern (f32)") {
  uint64_t seed = 700;
  for (const GpuFlashCase& c : gpu_flash_cases()) {
    INFO(c.label);
    const Inputs in = inputs_for(c, DType::f32, ++seed);
    const ops::AttentionResult cpu = ops::flash_attention(in.q, in.k, in.v, c.pattern);
    const ops::AttentionGrads cpu_grads =
        ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, cpu.out, cpu.lse, c.pattern);
    const Inputs gpu_in = on_gpu(in);
    for_each_poison([&] {
      const ops::AttentionResult gpu = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, c.pattern);
      REQUIRE(gpu.out.device() == kCuda);
      CHECK(gpu.out.dtype() == DType::f32);
      CHECK(gpu.lse.dtype() == DType::f32);
      const Tensor out = to_cpu(gpu.out), lse = to_cpu(gpu.lse);
      CHECK(all_finite(out));
      CHECK(valid_lse(lse));
      CHECK_CLOSE(out, cpu.out, relative_to_scale(cpu.out, 1e-5));
      CHECK_CLOSE(lse, cpu.lse, relative_to_scale(cpu.lse, 1e-5, 1.0));
      // The backward from the CPU's own forward results, so that only the backward differs.
      const ops::AttentionGrads grads = ops::flash_attention_backward(gpu_in.grad_out, gpu_in.q, gpu_in.k, gpu_in.v,
                                                                      mirror(cpu.out), mirror(cpu.lse), c.pattern);
      const Tensor dq = to_cpu(grads.dq), dk = to_cpu(grads.dk), dv = to_cpu(grads.dv);
      CHECK(all_finite(dq));
      CHECK(all_finite(dk));
      CHECK(all_finite(dv));
      CHECK_CLOSE(dq, cpu_grads.dq, relative_to_scale(cpu_grads.dq, 2e-5));
      CHECK_CLOSE(dk, cpu_grads.dk, relative_to_scale(cpu_grads.dk, 2e-5));
      CHECK_CLOSE(dv, cpu_grads.dv, relative_to_scale(cpu_grads.dv, 2e-5));
    });
  }
}

TEST_CASE("flash_attention on the GPU: the additive mask may live on the GPU too") {
  GpuFlashCase c{"additive mask on the device", 1, 2, 1, 90, 90, 64, AttentionPattern::sink_window(2, 40)};
  Generator mask_values(6);
  c.pattern.additive_mask = uniform({1, 2, 90, 90}, -2.0, 2.0, mask_values, DType::f32);
  const Inputs in = inputs_for(c, DType::f32, 31);
  const ops::AttentionResult cpu = ops::flash_attention(in.q, in.k, in.v, c.pattern);
  AttentionPattern on_device = c.pattern;
  on_device.additive_mask = mirror(c.pattern.additive_mask);
  const Inputs gpu_in = on_gpu(in);
  for_each_poison([&] {
    const ops::AttentionResult gpu = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, on_device);
    CHECK_CLOSE(to_cpu(gpu.out), cpu.out, relative_to_scale(cpu.out, 1e-5));
  });
}

TEST_CASE("flash_attention on the GPU: bf16 within 2x a naive bf16 implementation's error, f16 as the CPU") {
  const std::vector<GpuFlashCase> cases = {
      {"sink + window, GQA 2", 1, 4, 2, 150, 150, 64, AttentionPattern::sink_window(4, 40)},
      {"dense causal, D 128", 2, 2, 1, 130, 130, 128, AttentionPattern::dense()},
  };
  uint64_t seed = 800;
  for (const GpuFlashCase& c : cases) {
    INFO(c.label);
    const Inputs wide = inputs_for(c, DType::f32, ++seed);
    const Inputs in{ops::cast(wide.q, DType::bf16), ops::cast(wide.k, DType::bf16), ops::cast(wide.v, DType::bf16),
                    ops::cast(wide.grad_out, DType::bf16)};
    // The f64 oracle on the bf16 inputs: only the kernels' own rounding separates them from it.
    const auto f64 = [](const Tensor& t) { return ops::cast(t, DType::f64); };
    const std::vector<Tensor> oracle = ops::reference::flash_attention(f64(in.q), f64(in.k), f64(in.v), c.pattern);
    const std::vector<Tensor> oracle_grads =
        ops::reference::flash_attention_backward(f64(in.grad_out), f64(in.q), f64(in.k), f64(in.v), c.pattern);
    const double naive_error = relative_error(naive_bf16_attention(c, in.q, in.k, in.v), oracle[0]);
    const ops::AttentionResult cpu = ops::flash_attention(in.q, in.k, in.v, c.pattern);
    const ops::AttentionGrads cpu_grads =
        ops::flash_attention_backward(in.grad_out, in.q, in.k, in.v, cpu.out, cpu.lse, c.pattern);
    const Inputs gpu_in = on_gpu(in);
    for_each_poison([&] {
      const ops::AttentionResult gpu = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, c.pattern);
      REQUIRE(gpu.out.dtype() == DType::bf16);
      CHECK(gpu.lse.dtype() == DType::f32);
      const Tensor out = to_cpu(gpu.out);
      CHECK(all_finite(out));
      const double error = relative_error(out, oracle[0]);
      INFO("bf16 output error " << error << ", naive bf16 error " << naive_error);
      CHECK(error <= 2 * naive_error);
      CHECK(error < 1e-2);
      CHECK_CLOSE(to_cpu(gpu.lse), cpu.lse, relative_to_scale(cpu.lse, 1e-5, 1.0));
      const ops::AttentionGrads grads =
          ops::flash_attention_backward(gpu_in.grad_out, gpu_in.q, gpu_in.k, gpu_in.v, gpu.out, gpu.lse, c.pattern);
      REQUIRE(grads.dk.dtype() == DType::bf16);
      const Tensor* gpu_parts[] = {&grads.dq, &grads.dk, &grads.dv};
      const Tensor* cpu_parts[] = {&cpu_grads.dq, &cpu_grads.dk, &cpu_grads.dv};
      for (int part = 0; part < 3; ++part) {
        CAPTURE(part);
        const Tensor got = to_cpu(*gpu_parts[part]);
        CHECK(all_finite(got));
        const double gpu_error = relative_error(got, oracle_grads[size_t(part)]);
        const double cpu_error = relative_error(*cpu_parts[part], oracle_grads[size_t(part)]);
        INFO("bf16 gradient error " << gpu_error << ", the CPU kernel's " << cpu_error);
        CHECK(gpu_error <= 2 * cpu_error + 1e-4);
        CHECK(gpu_error < 2e-2);
      }
    });
  }
  // f16: computed in f32 on both devices, so one f16 rounding apart at most.
  const GpuFlashCase c{"f16, per-head windows", 1, 4, 2, 100, 100, 64,
                       AttentionPattern::per_head_sink_window({0, 4, 0, 4}, {kAllKeys, 33, 17, kAllKeys})};
  const Inputs wide = inputs_for(c, DType::f32, 900);
  const Tensor q = ops::cast(wide.q, DType::f16), k = ops::cast(wide.k, DType::f16), v = ops::cast(wide.v, DType::f16);
  const Tensor grad_out = ops::cast(wide.grad_out, DType::f16);
  const ops::AttentionResult cpu = ops::flash_attention(q, k, v, c.pattern);
  const ops::AttentionGrads cpu_grads = ops::flash_attention_backward(grad_out, q, k, v, cpu.out, cpu.lse, c.pattern);
  for_each_poison([&] {
    const ops::AttentionResult gpu = ops::flash_attention(mirror(q), mirror(k), mirror(v), c.pattern);
    CHECK(gpu.out.dtype() == DType::f16);
    CHECK_CLOSE(to_cpu(gpu.out), cpu.out, tolerance_for(DType::f16));
    const ops::AttentionGrads grads =
        ops::flash_attention_backward(mirror(grad_out), mirror(q), mirror(k), mirror(v), mirror(cpu.out),
                                      ops::to_device(ops::cast(cpu.lse, DType::f32), kCuda), c.pattern);
    CHECK(grads.dv.dtype() == DType::f16);
    CHECK_CLOSE(to_cpu(grads.dv), cpu_grads.dv, tolerance_for(DType::f16));
    CHECK_CLOSE(to_cpu(grads.dk), cpu_grads.dk, tolerance_for(DType::f16));
    CHECK_CLOSE(to_cpu(grads.dq), cpu_grads.dq, tolerance_for(DType::f16));
  });
}

TEST_CASE("flash_attention on the GPU: a row that sees no key gives 0 and lse -inf, and no NaN anywhere") {
  // Block row 0 is off: queries 0..31 see nothing; the others see every block of their row.
  std::mt19937 rng(1);
  const GpuFlashCase c{"block-sparse with empty rows", 1, 2, 1, 96, 96, 64,
                       AttentionPattern::block_sparse(random_layout(1, 3, 3, 1.0, rng), 32, 32)};
  const Inputs gpu_in = on_gpu(inputs_for(c, DType::f32, 11));
  for_each_poison([&] {
    const ops::AttentionResult result = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, c.pattern);
    const std::vector<double> out = to_cpu(result.out).to_vector<double>(), lse = to_cpu(result.lse).to_vector<double>();
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t t = 0; t < 96; ++t) {
        const double row_lse = lse[size_t(h * 96 + t)];
        CHECK((t < 32 ? row_lse == -INFINITY : std::isfinite(row_lse)));
        if (t < 32)
          for (int64_t d = 0; d < 64; ++d) CHECK(out[size_t((h * 96 + t) * 64 + d)] == 0.0);
      }
    const ops::AttentionGrads grads =
        ops::flash_attention_backward(gpu_in.grad_out, gpu_in.q, gpu_in.k, gpu_in.v, result.out, result.lse, c.pattern);
    CHECK(all_finite(to_cpu(result.out)));
    CHECK(all_finite(to_cpu(grads.dq)));
    CHECK(all_finite(to_cpu(grads.dk)));
    CHECK(all_finite(to_cpu(grads.dv)));
    const std::vector<double> dq = to_cpu(grads.dq).to_vector<double>();
    for (int64_t t = 0; t < 32; ++t)
      for (int64_t d = 0; d < 64; ++d) CHECK(dq[size_t(t * 64 + d)] == 0.0);
  });
}

TEST_CASE("flash_attention on the GPU: skipped tiles give bit-for-bit the results of the pattern as a dense mask") {
  // The dense-mask version visits every tile and masks per element; the pattern version skips
  // the empty tiles and does not mask full ones. Equal bits show skipping changes nothing.
  std::mt19937 rng(9);
  const std::vector<GpuFlashCase> cases = {
      {"sink 4 + window 40", 1, 2, 1, 330, 330, 64, AttentionPattern::sink_window(4, 40)},
      {"documents", 1, 2, 2, 300, 300, 64, AttentionPattern::documents(random_documents(1, 300, 90, rng))},
      {"block-sparse", 1, 2, 1, 256, 256, 128,
       AttentionPattern::block_sparse(random_layout(2, 4, 4, 0.4, rng), 64, 64)},
  };
  for (const GpuFlashCase& c : cases) {
    INFO(c.label);
    AttentionPattern as_mask = AttentionPattern::dense();
    as_mask.additive_mask = mirror(dense_additive_mask(c));
    const Inputs gpu_in = on_gpu(inputs_for(c, DType::f32, 21));
    const ops::AttentionResult a = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, c.pattern);
    const ops::AttentionResult b = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, as_mask);
    CHECK(exactly_equal(to_cpu(a.out), to_cpu(b.out)));
    CHECK(exactly_equal(to_cpu(a.lse), to_cpu(b.lse)));
    const ops::AttentionGrads ga =
        ops::flash_attention_backward(gpu_in.grad_out, gpu_in.q, gpu_in.k, gpu_in.v, a.out, a.lse, c.pattern);
    const ops::AttentionGrads gb =
        ops::flash_attention_backward(gpu_in.grad_out, gpu_in.q, gpu_in.k, gpu_in.v, b.out, b.lse, as_mask);
    CHECK(exactly_equal(to_cpu(ga.dq), to_cpu(gb.dq)));
    CHECK(exactly_equal(to_cpu(ga.dk), to_cpu(gb.dk)));
    CHECK(exactly_equal(to_cpu(ga.dv), to_cpu(gb.dv)));
  }
}

TEST_CASE("flash_attention on the GPU: two runs give identical bits (no atomics)") {
  const GpuFlashCase c{"per-head windows, GQA 2", 2, 4, 2, 200, 200, 64,
                       AttentionPattern::per_head_sink_window({0, 4, 0, 4}, {kAllKeys, 33, 17, kAllKeys})};
  const Inputs gpu_in = on_gpu(inputs_for(c, DType::f32, 5));
  const auto run = [&] {
    const ops::AttentionResult result = ops::flash_attention(gpu_in.q, gpu_in.k, gpu_in.v, c.pattern);
    const ops::AttentionGrads grads =
        ops::flash_attention_backward(gpu_in.grad_out, gpu_in.q, gpu_in.k, gpu_in.v, result.out, result.lse, c.pattern);
    return std::vector<Tensor>{to_cpu(result.out), to_cpu(result.lse), to_cpu(grads.dq), to_cpu(grads.dk),
                               to_cpu(grads.dv)};
  };
  const std::vector<Tensor> first = run(), second = run();
  for (size_t i = 0; i < first.size(); ++i) {
    CAPTURE(i);
    CHECK(exactly_equal(first[i], second[i]));
  }
}

TEST_CASE("flash_attention on the GPU through autograd: the tape's gradients equal the CPU's") {
  const AttentionPattern pattern = AttentionPattern::sink_window(4, 30);
  Generator gen(12);
  const Tensor q = random_tensor({1, 4, 100, 64}, DType::f32, gen), k = random_tensor({1, 2, 100, 64}, DType::f32, gen),
               v = random_tensor({1, 2, 100, 64}, DType::f32, gen);
  const Tensor weights = random_tensor({1, 4, 100, 64}, DType::f32, gen);
  const auto run = [&](const Tensor& q_leaf, const Tensor& k_leaf, const Tensor& v_leaf, const Tensor& w) {
    for (const Tensor* t : {&q_leaf, &k_leaf, &v_leaf}) t->set_requires_grad(true);
    const Tensor loss = sum(mul(flash_attention(q_leaf, k_leaf, v_leaf, pattern), w));
    loss.backward();
    return loss;
  };
  const Tensor cpu_q = q.detach(), cpu_k = k.detach(), cpu_v = v.detach();
  const Tensor gpu_q = mirror(q), gpu_k = mirror(k), gpu_v = mirror(v);
  const Tensor cpu_loss = run(cpu_q, cpu_k, cpu_v, weights);
  const Tensor gpu_loss = run(gpu_q, gpu_k, gpu_v, mirror(weights));
  CHECK(gpu_loss.device() == kCuda);
  CHECK_CLOSE(to_cpu(gpu_loss), cpu_loss, (Tolerance{1e-4, 1e-5}));
  const Tensor* gpu_leaves[] = {&gpu_q, &gpu_k, &gpu_v};
  const Tensor* cpu_leaves[] = {&cpu_q, &cpu_k, &cpu_v};
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    REQUIRE(gpu_leaves[i]->grad().defined());
    CHECK(gpu_leaves[i]->grad().device() == kCuda);
    const Tensor expected = cpu_leaves[i]->grad();
    CHECK_CLOSE(to_cpu(gpu_leaves[i]->grad()), expected, relative_to_scale(expected, 2e-5));
  }
}

TEST_CASE("flash_attention on the GPU: f64 and head_dim > 128 are clear errors") {
  Generator gen(2);
  const Tensor q64 = mirror(random_tensor({1, 2, 10, 8}, DType::f64, gen));
  CHECK_THROWS_WITH_AS(ops::flash_attention(q64, q64, q64, AttentionPattern::dense()),
                       doctest::Contains("f64 runs on the CPU only"), Error);
  const Tensor wide = mirror(random_tensor({1, 1, 10, 160}, DType::f32, gen));
  CHECK_THROWS_WITH_AS(ops::flash_attention(wide, wide, wide, AttentionPattern::dense()),
                       doctest::Contains("head_dim up to 128"), Error);
}
