// The fused AdamW step and a small model end to end through autograd on the GPU against the
// CPU, plus the edge rows of softmax and cross-entropy's target count. (ops::matmul through
// cuBLASLt and ops::matmul_backward, ops::softmax, ops::softmax_backward, ops::log_softmax,
// ops::log_softmax_backward, ops::rms_norm, ops::rms_norm_backward, ops::rope,
// ops::rope_backward, ops::swiglu, ops::swiglu_backward, ops::embedding,
// ops::embedding_backward, ops::cross_entropy, ops::cross_entropy_backward, ops::attention and
// ops::attention_backward over shapes, dtypes and layouts are op cases, compared with the CPU by
// test_op_cases.cpp.)
// Tolerances: adamw elementwise_tolerance(dtype) doubled; the model's loss and gradients 1e-5 and
// 2e-5 absolute (f32 sums in another order through several ops).
#include "autograd/functions.h"
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

TEST_CASE("softmax and log_softmax: a row of -inf gives no NaN elsewhere; large logits do not overflow") {
  const Tensor masked =
      Tensor::from_vector(std::vector<double>{0, -INFINITY, 1000, 1001, -INFINITY, -INFINITY}, {3, 2});
  const Tolerance tol{1e-5, 1e-5};  // a row op in f32
  for_each_poison([&] {
    CHECK_CLOSE(ops::softmax(mirror(masked), -1), ops::softmax(masked, -1), tol);
    CHECK_CLOSE(ops::log_softmax(mirror(masked), -1), ops::log_softmax(masked, -1), tol);
  });
}

TEST_CASE("cross-entropy on the device counts the targets that are not ignored") {
  Generator gen(307);
  const Tensor logits = random_tensor({2, 3, 50}, DType::f32, gen, -5, 5);
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{4, -100, 49, 0, 7, -100}, {2, 3});
  for_each_poison([&] { CHECK(ops::cross_entropy(mirror(logits), mirror(targets)).target_count == 4); });
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
