// matmul (cuBLASLt) and the fused neural-network ops on the GPU against the CPU, forward and
// backward, on contiguous, transposed, strided and offset inputs, plus a small model end to end
// through autograd. Each case states its tolerance:
//   matmul: f32 per element 2e-6 K + 1e-5 absolute, 1e-5 relative (f32 accumulation, another
//     order); f64 1e-12 K; bf16/f16 by ||gpu - cpu|| / ||cpu|| <= 2e-3 / 5e-4 (both round an f32
//     accumulator to 16 bits; only near-ties round differently).
//   row ops (softmax, rms_norm, cross-entropy, attention): f32 1e-5 absolute and relative (sums
//     in another order over up to 128K terms), f64 1e-11, bf16/f16 two ulps.
//   rope, swiglu, adamw: elementwise_tolerance(dtype) doubled. embedding: exact (same order).
#include "autograd/functions.h"
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

namespace {

Tolerance row_tolerance(DType dtype) {
  switch (dtype) {
    case DType::f32: return {1e-5, 1e-5};
    case DType::f64: return {1e-11, 1e-11};
    default: return scaled(elementwise_tolerance(dtype), 2);
  }
}

// Checks a matmul result per the tolerances above.
void check_product(const Tensor& actual, const Tensor& expected, DType dtype, int64_t k) {
  if (dtype == DType::bf16 || dtype == DType::f16) {
    const double error = relative_error(actual, expected);
    INFO("relative error " << error);
    CHECK(error <= (dtype == DType::bf16 ? 2e-3 : 5e-4));
    CHECK(actual.shape() == expected.shape());
  } else if (dtype == DType::f32) {
    CHECK_CLOSE(actual, expected, (Tolerance{2e-6 * double(k) + 1e-5, 1e-5}));
  } else {
    CHECK_CLOSE(actual, expected, (Tolerance{1e-12 * double(k) + 1e-13, 1e-12}));
  }
}

}  // namespace

TEST_CASE("matmul through cuBLASLt: transposes, batches, broadcasting and layouts") {
  struct Case {
    Shape a, b;
    bool transpose_a, transpose_b;
  };
  const std::vector<Case> cases = {
      {{5, 7}, {7, 3}, false, false},          {{7, 5}, {7, 3}, true, false},
      {{5, 7}, {3, 7}, false, true},           {{7, 5}, {3, 7}, true, true},
      {{1, 9}, {9, 1}, false, false},          {{13, 17}, {17, 11}, false, false},  // odd sizes: misaligned rows
      {{2, 3, 6, 8}, {8, 5}, false, false},                                         // batch folded into M
      {{2, 3, 6, 8}, {5, 8}, false, true},                                          // the Linear layout
      {{4, 6, 8}, {4, 8, 5}, false, false},                                         // plain batch
      {{2, 1, 6, 8}, {3, 8, 5}, false, false},                                      // broadcast batch dims
      {{8, 6}, {2, 3, 8, 5}, true, false},                                          // 2-D first operand, batched second
      {{3, 0, 4}, {3, 4, 5}, false, false},                                         // M = 0
      {{3, 6, 0}, {3, 0, 5}, false, false},                                         // K = 0: zeros
      {{64, 512}, {384, 512}, false, true},                                         // a projection-like shape
  };
  Generator gen(301);
  for (const Case& c : cases) {
    for (DType dtype : kGpuFloatDTypes) {
      CAPTURE(c.a);
      CAPTURE(c.b);
      CAPTURE(c.transpose_a);
      CAPTURE(c.transpose_b);
      CAPTURE(name(dtype));
      const Tensor a = random_tensor(c.a, dtype, gen), b = random_tensor(c.b, dtype, gen);
      const int64_t k = c.transpose_a ? c.a[c.a.size() - 2] : c.a.back();
      const Tensor expected = ops::matmul(a, b, c.transpose_a, c.transpose_b);
      for (Layout layout : kLayouts) {
        CAPTURE(name(layout));
        const Tensor a_in = in_layout(a, layout), b_in = in_layout(b, layout);
        for_each_poison([&] {
          check_product(ops::matmul(mirror(a_in), mirror(b_in), c.transpose_a, c.transpose_b), expected, dtype, k);
        });
      }
      // A transposed view passed with the flag flipped is the same product, read in place.
      for_each_poison([&] {
        const Tensor a_t = views::transpose(mirror(ops::contiguous(views::transpose(a, -1, -2))), -1, -2);
        check_product(ops::matmul(a_t, mirror(b), c.transpose_a, c.transpose_b), expected, dtype, k);
      });
      if (c.a.back() == 0 || expected.numel() == 0) continue;
      const Tensor grad = random_tensor(expected.shape(), dtype, gen);
      const auto expected_grads = ops::matmul_backward(grad, a, b, c.transpose_a, c.transpose_b);
      for_each_poison([&] {
        const auto grads = ops::matmul_backward(mirror(grad), mirror(a), mirror(b), c.transpose_a, c.transpose_b);
        const int64_t n = expected.size(-1), m = expected.size(-2);
        check_product(grads.first, expected_grads.first, dtype, n * (expected.numel() / (m * n)));
        check_product(grads.second, expected_grads.second, dtype, m * (expected.numel() / (m * n)));
      });
    }
  }
}

TEST_CASE("softmax and log_softmax, forward and backward, over any dim and row length") {
  Generator gen(302);
  for (DType dtype : kGpuFloatDTypes) {
    for (const Shape& shape : {Shape{7}, Shape{3, 5}, Shape{2, 3, 9}, Shape{4, 1, 6}, Shape{2, 0, 3}, Shape{3, 4096},
                               Shape{2, 13000}, Shape{5, 6145}}) {
      for (int64_t dim = 0; dim < int64_t(shape.size()); ++dim) {
        CAPTURE(name(dtype));
        CAPTURE(shape);
        CAPTURE(dim);
        if (shape.size() == 2 && shape[1] > 1000 && dim == 0) continue;  // the long rows are the point
        const Tensor x = random_tensor(shape, dtype, gen, -4, 4);
        const Tensor grad = random_tensor(shape, dtype, gen);
        const Tolerance tol = row_tolerance(dtype);
        for (bool log_space : {false, true}) {
          CAPTURE(log_space);
          const Tensor y = log_space ? ops::log_softmax(x, dim) : ops::softmax(x, dim);
          const Tensor dx = log_space ? ops::log_softmax_backward(grad, y, dim) : ops::softmax_backward(grad, y, dim);
          for (Layout layout : {Layout::contiguous, Layout::transposed, Layout::offset_slice}) {
            CAPTURE(name(layout));
            const Tensor input = in_layout(x, layout);
            for_each_poison([&] {
              const Tensor gy = log_space ? ops::log_softmax(mirror(input), dim) : ops::softmax(mirror(input), dim);
              CHECK_CLOSE(gy, y, tol);
              const Tensor gdx = log_space ? ops::log_softmax_backward(mirror(grad), mirror(y), dim)
                                           : ops::softmax_backward(mirror(grad), mirror(y), dim);
              CHECK_CLOSE(gdx, dx, scaled(tol, 2));
            });
          }
        }
      }
    }
  }
  // A row of -inf gives no NaN elsewhere; large logits do not overflow.
  const Tensor masked =
      Tensor::from_vector(std::vector<double>{0, -INFINITY, 1000, 1001, -INFINITY, -INFINITY}, {3, 2});
  for_each_poison([&] {
    CHECK_CLOSE(ops::softmax(mirror(masked), -1), ops::softmax(masked, -1), row_tolerance(DType::f32));
    CHECK_CLOSE(ops::log_softmax(mirror(masked), -1), ops::log_softmax(masked, -1), row_tolerance(DType::f32));
  });
}

TEST_CASE("rms_norm forward and backward, short and long rows, many row blocks") {
  Generator gen(303);
  for (DType dtype : kGpuFloatDTypes) {
    for (const Shape& shape :
         {Shape{5}, Shape{3, 8}, Shape{2, 3, 33}, Shape{0, 4}, Shape{64, 4096}, Shape{7, 12000}, Shape{1000, 96}}) {
      CAPTURE(name(dtype));
      CAPTURE(shape);
      const Tensor x = random_tensor(shape, dtype, gen, -2, 2);
      const Tensor w = random_tensor({shape.back()}, dtype, gen, 0.5, 1.5);
      const Tensor dy = random_tensor(shape, dtype, gen);
      const ops::RmsNormResult expected = ops::rms_norm(x, w, 1e-5);
      const ops::RmsNormGrads expected_grads = ops::rms_norm_backward(dy, x, w, expected.rstd);
      const Tolerance tol = row_tolerance(dtype);
      const Tolerance stats_tol = dtype == DType::f64 ? Tolerance{1e-12, 1e-12} : Tolerance{1e-6, 1e-5};
      // The weight gradient sums over every row in f32 (f64 for f64) in blocks of another size.
      const Tolerance dweight_tol = dtype == DType::f64   ? Tolerance{1e-10, 1e-10}
                                    : dtype == DType::f32 ? Tolerance{1e-4, 1e-4}
                                                          : scaled(elementwise_tolerance(dtype), 4);
      for (Layout layout : {Layout::contiguous, Layout::strided, Layout::offset_slice}) {
        CAPTURE(name(layout));
        const Tensor input = in_layout(x, layout);
        for_each_poison([&] {
          const ops::RmsNormResult result = ops::rms_norm(mirror(input), mirror(w), 1e-5);
          CHECK_CLOSE(result.y, expected.y, tol);
          CHECK_CLOSE(result.rstd, expected.rstd, stats_tol);
          const ops::RmsNormGrads grads =
              ops::rms_norm_backward(mirror(in_layout(dy, layout)), mirror(input), mirror(w), mirror(expected.rstd));
          CHECK_CLOSE(grads.dx, expected_grads.dx, scaled(tol, 2));
          CHECK_CLOSE(grads.dweight, expected_grads.dweight, dweight_tol);
        });
      }
    }
  }
}

TEST_CASE("rope forward and backward, with and without Llama 3.1 scaling, any layout") {
  Generator gen(304);
  const RopeConfig plain{16, 10000.0, std::nullopt};
  const RopeConfig llama31{128, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 8192}};
  for (DType dtype : kGpuFloatDTypes) {
    for (const RopeConfig& config : {plain, llama31}) {
      for (const Shape& shape : {Shape{2, 5, 3, config.head_dim}, Shape{1, 33, 8, config.head_dim}}) {
        CAPTURE(name(dtype));
        CAPTURE(config.head_dim);
        CAPTURE(shape);
        const Tensor x = random_tensor(shape, dtype, gen);
        const Tensor shared_positions = ops::cast(randint(0, 8192, {shape[1]}, gen), DType::i64);
        const Tensor batch_positions = ops::cast(randint(0, 8192, {shape[0], shape[1]}, gen), DType::i32);
        const Tolerance tol = scaled(elementwise_tolerance(dtype), 2);
        for (const Tensor& positions : {shared_positions, batch_positions}) {
          const Tensor expected = ops::rope(x, positions, config);
          const Tensor expected_back = ops::rope_backward(x, positions, config);
          // contiguous, a [B, H, T, D] tensor viewed as [B, T, H, D], a strided D, an offset slice
          const Tensor bhtd = ops::contiguous(views::transpose(x, 1, 2));
          for (const Tensor& input :
               {x, views::transpose(bhtd, 1, 2), noncontiguous(x), in_layout(x, Layout::offset_slice)}) {
            for_each_poison([&] {
              Tensor on_gpu = mirror(input);
              CHECK_CLOSE(ops::rope(on_gpu, mirror(positions), config), expected, tol);
              CHECK_CLOSE(ops::rope_backward(on_gpu, mirror(noncontiguous(positions)), config), expected_back, tol);
            });
          }
        }
      }
    }
  }
}

TEST_CASE("swiglu forward (any layout) and backward") {
  Generator gen(305);
  for (DType dtype : kGpuFloatDTypes) {
    for (const Shape& shape : {Shape{3, 7}, Shape{64, 1000}, Shape{(1 << 16) | 5}}) {
      CAPTURE(name(dtype));
      CAPTURE(shape);
      const Tensor gate = random_tensor(shape, dtype, gen, -4, 4), up = random_tensor(shape, dtype, gen, -2, 2);
      const Tensor dy = random_tensor(shape, dtype, gen);
      const Tolerance tol = scaled(elementwise_tolerance(dtype), 2);
      const Tensor expected = ops::swiglu(gate, up);
      const auto expected_grads = ops::swiglu_backward(dy, gate, up);
      for (Layout layout : kLayouts) {
        CAPTURE(name(layout));
        for_each_poison([&] {
          CHECK_CLOSE(ops::swiglu(mirror(in_layout(gate, layout)), mirror(in_layout(up, layout))), expected, tol);
          const auto grads =
              ops::swiglu_backward(mirror(in_layout(dy, layout)), mirror(in_layout(gate, layout)), mirror(up));
          CHECK_CLOSE(grads.first, expected_grads.first, tol);
          CHECK_CLOSE(grads.second, expected_grads.second, tol);
        });
      }
    }
  }
}

TEST_CASE("embedding gathers rows and its backward adds repeated ids in token order, exactly") {
  Generator gen(306);
  for (DType dtype : kGpuFloatDTypes) {
    for (DType index_type : {DType::i64, DType::i32}) {
      for (const Shape& table : {Shape{11, 6}, Shape{500, 4096}}) {
        CAPTURE(name(dtype));
        CAPTURE(name(index_type));
        CAPTURE(table);
        const Tensor weight = random_tensor(table, dtype, gen);
        const Tensor ids = ops::cast(randint(0, std::min<int64_t>(table[0], 7), {4, 37}, gen), index_type);  // repeats
        const Tensor grad = random_tensor({4, 37, table[1]}, dtype, gen);
        const Tensor expected = ops::embedding(weight, ids);
        const Tensor expected_grad = ops::embedding_backward(grad, ids, table[0]);
        for_each_poison([&] {
          CHECK_CLOSE(ops::embedding(mirror(weight), mirror(ids)), expected, kExact);
          CHECK_CLOSE(ops::embedding(mirror(transposed_layout(weight)), mirror(ids)), expected, kExact);
          CHECK_CLOSE(ops::embedding_backward(mirror(grad), mirror(ids), table[0]), expected_grad, kExact);
        });
      }
    }
  }
}

TEST_CASE("cross-entropy chunked over the vocabulary, ignore_index, forward and backward") {
  Generator gen(307);
  for (DType dtype : {DType::f32, DType::bf16, DType::f64, DType::f16}) {
    for (const Shape& shape : {Shape{5, 10}, Shape{3, 1001}, Shape{2, 3, 4000}, Shape{3, 128256}, Shape{0, 8}}) {
      for (DType index_type : {DType::i64, DType::i32}) {
        CAPTURE(name(dtype));
        CAPTURE(shape);
        CAPTURE(name(index_type));
        const Shape rows(shape.begin(), shape.end() - 1);
        const Tensor logits = random_tensor(shape, dtype, gen, -6, 6);
        std::vector<int64_t> target_values = randint(0, shape.back(), rows, gen).to_vector<int64_t>();
        if (!target_values.empty()) target_values[0] = -100;  // ignored
        const Tensor targets = ops::cast(Tensor::from_vector(target_values, rows), index_type);
        const ops::CrossEntropyResult expected = ops::cross_entropy(logits, targets);
        const Tensor grad_losses = random_tensor(rows, DType::f32, gen);
        const Tensor expected_grad = ops::cross_entropy_backward(grad_losses, logits, targets, expected.lse);
        const Tolerance stats_tol = dtype == DType::f64 ? Tolerance{1e-11, 1e-11} : Tolerance{2e-5, 1e-5};
        for (Layout layout : {Layout::contiguous, Layout::transposed}) {
          CAPTURE(name(layout));
          for_each_poison([&] {
            const ops::CrossEntropyResult result =
                ops::cross_entropy(mirror(in_layout(logits, layout)), mirror(targets));
            CHECK(result.target_count == expected.target_count);
            CHECK_CLOSE(result.losses, expected.losses, stats_tol);
            CHECK_CLOSE(result.lse, expected.lse, stats_tol);
            const Tensor grad = ops::cross_entropy_backward(mirror(grad_losses), mirror(in_layout(logits, layout)),
                                                            mirror(targets), mirror(expected.lse));
            CHECK_CLOSE(grad, expected_grad, row_tolerance(dtype));
          });
        }
      }
    }
  }
}

TEST_CASE("dense attention with GQA, causal cut, masks and T != S, forward and backward") {
  Generator gen(308);
  struct Case {
    int64_t batch, heads, kv_heads, tokens, keys, head_dim;
    bool causal, masked;
  };
  const Case cases[] = {
      {2, 4, 2, 5, 7, 8, true, false},   {2, 4, 4, 6, 6, 16, false, true}, {1, 8, 2, 9, 9, 32, true, true},
      {1, 2, 1, 7, 4, 8, true, false},    // T > S: the first rows see no key (lse -inf, output 0)
      {2, 6, 3, 1, 40, 64, true, false},  // one new token against a cache of keys
  };
  for (const Case& c : cases) {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      CAPTURE(c.heads);
      CAPTURE(c.kv_heads);
      CAPTURE(c.tokens);
      CAPTURE(c.keys);
      CAPTURE(c.causal);
      CAPTURE(c.masked);
      CAPTURE(name(dtype));
      const Tensor q = random_tensor({c.batch, c.heads, c.tokens, c.head_dim}, dtype, gen);
      const Tensor k = random_tensor({c.batch, c.kv_heads, c.keys, c.head_dim}, dtype, gen);
      const Tensor v = random_tensor({c.batch, c.kv_heads, c.keys, c.head_dim}, dtype, gen);
      AttentionOptions options;
      options.causal = c.causal;
      if (c.masked) {
        std::vector<double> mask_values = random_tensor({c.tokens, c.keys}, DType::f64, gen, -1, 1).to_vector<double>();
        for (size_t i = 0; i < mask_values.size(); i += 5) mask_values[i] = -INFINITY;
        options.mask = Tensor::from_vector(mask_values, {c.tokens, c.keys}, dtype);
      }
      const ops::AttentionResult expected = ops::attention(q, k, v, options);
      const Tensor grad = random_tensor(expected.out.shape(), dtype, gen);
      const ops::AttentionGrads expected_grads =
          ops::attention_backward(grad, q, k, v, expected.out, expected.lse, options);
      const Tolerance tol = dtype == DType::f64   ? Tolerance{1e-11, 1e-11}
                            : dtype == DType::f32 ? Tolerance{2e-5, 1e-4}
                                                  : scaled(elementwise_tolerance(dtype), 2);
      AttentionOptions gpu_options = options;
      if (c.masked) gpu_options.mask = mirror(options.mask);
      for_each_poison([&] {
        const ops::AttentionResult result =
            ops::attention(mirror(q), mirror(k), mirror(transposed_layout(v)), gpu_options);
        CHECK_CLOSE(result.out, expected.out, tol);
        CHECK_CLOSE(result.lse, expected.lse, tol);
        const ops::AttentionGrads grads = ops::attention_backward(
            mirror(grad), mirror(q), mirror(k), mirror(v), mirror(expected.out), mirror(expected.lse), gpu_options);
        CHECK_CLOSE(grads.dq, expected_grads.dq, tol);
        CHECK_CLOSE(grads.dk, expected_grads.dk, tol);
        CHECK_CLOSE(grads.dv, expected_grads.dv, tol);
      });
    }
  }
}

TEST_CASE("fused AdamW steps match the CPU for every param/grad dtype pair") {
  struct Case {
    DType param, grad;
  };
  const Case cases[] = {{DType::f32, DType::f32},  {DType::f64, DType::f64},  {DType::bf16, DType::bf16},
                        {DType::bf16, DType::f32}, {DType::f32, DType::bf16}, {DType::f16, DType::f32}};
  Generator gen(309);
  for (const Case& c : cases) {
    for (int64_t count : {int64_t(300), int64_t((1 << 16) | 3)}) {
      CAPTURE(name(c.param));
      CAPTURE(name(c.grad));
      CAPTURE(count);
      const DType state = c.param == DType::f64 ? DType::f64 : DType::f32;
      Tensor param = random_tensor({count}, c.param, gen);
      Tensor exp_avg = zeros({count}, state), exp_avg_sq = zeros({count}, state);
      const Tolerance param_tol = scaled(elementwise_tolerance(c.param), 2);
      const Tolerance state_tol = scaled(elementwise_tolerance(state), 2);
      for (int64_t step = 1; step <= 3; ++step) {
        ops::AdamWStep hyper;
        hyper.lr = 1e-2;
        hyper.beta2 = 0.99;
        hyper.weight_decay = 0.1;
        hyper.step = step;
        const Tensor grad = random_tensor({count}, c.grad, gen);
        // Each step from the same (CPU) state on both devices, so that rounding cannot compound.
        const Tensor gpu_param = mirror(param), gpu_avg = mirror(exp_avg), gpu_avg_sq = mirror(exp_avg_sq);
        ops::adamw_step_(param, grad, exp_avg, exp_avg_sq, hyper);
        ops::adamw_step_(gpu_param, mirror(grad), gpu_avg, gpu_avg_sq, hyper);
        CHECK_CLOSE(gpu_param, param, param_tol);
        CHECK_CLOSE(gpu_avg, exp_avg, state_tol);
        CHECK_CLOSE(gpu_avg_sq, exp_avg_sq, state_tol);
      }
    }
  }
}

TEST_CASE("a small model trains the same on the GPU: forward loss and every gradient") {
  Generator gen(310);
  const int64_t batch = 2, tokens = 6, width = 32, hidden = 48, vocab = 50;
  auto leaf = [&](const Shape& shape, double scale) {
    return ops::binary(ops::BinaryOp::mul, random_tensor(shape, DType::f32, gen), scale);
  };
  const std::vector<Tensor> cpu_params = {leaf({vocab, width}, 1.0), leaf({width}, 1.0), leaf({hidden, width}, 0.2),
                                          leaf({hidden, width}, 0.2), leaf({width, hidden}, 0.2)};
  const Tensor ids = randint(0, vocab, {batch, tokens}, gen), targets = randint(0, vocab, {batch, tokens}, gen);
  auto run = [&](const std::vector<Tensor>& params, const Tensor& token_ids, const Tensor& labels) {
    for (const Tensor& p : params) p.set_requires_grad();
    const Tensor x = embedding(params[0], token_ids);
    const Tensor h = rms_norm(x, params[1], 1e-5);
    const Tensor mixed = swiglu(matmul(h, params[2], false, true), matmul(h, params[3], false, true));
    const Tensor y = x + matmul(mixed, params[4], false, true);
    const Tensor logits = matmul(y, params[0], false, true);  // tied embeddings
    const Tensor loss = cross_entropy(logits, labels);
    loss.backward();
    return loss;
  };
  std::vector<Tensor> gpu_params;
  for (const Tensor& p : cpu_params) gpu_params.push_back(mirror(p));
  const Tensor cpu_loss = run(cpu_params, ids, targets);
  const Tensor gpu_loss = run(gpu_params, mirror(ids), mirror(targets));
  CHECK(gpu_loss.device() == kCuda);
  CHECK_CLOSE(gpu_loss, cpu_loss, (Tolerance{1e-5, 1e-5}));
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    CAPTURE(i);
    REQUIRE(gpu_params[i].grad().defined());
    CHECK(gpu_params[i].grad().device() == kCuda);
    CHECK_CLOSE(gpu_params[i].grad(), cpu_params[i].grad(), (Tolerance{2e-5, 1e-4}));
  }
}
