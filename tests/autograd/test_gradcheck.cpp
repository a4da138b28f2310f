// gradcheck itself, the differentiable functions that are no op case of tests/op_cases/ (the
// Tensor view and copy methods, split, dropout) against central differences in f64, then a
// whole Llama-style block end to end, with and without activation checkpointing. The functions
// of the op catalogue are gradchecked on every f64 call of their op case by
// test_op_gradcheck.cpp: the elementwise ones (lamina::exp and every other unary function,
// lamina::add, lamina::sub, lamina::mul, lamina::div and their scalar forms, lamina::pow,
// lamina::maximum, lamina::minimum, lamina::where, lamina::masked_fill, lamina::clamp), the
// reductions (lamina::sum, lamina::mean, lamina::max, lamina::min, lamina::logsumexp,
// lamina::var), lamina::matmul, lamina::softmax, lamina::log_softmax, lamina::embedding,
// lamina::rms_norm, lamina::rope, lamina::swiglu, lamina::cross_entropy, lamina::attention,
// lamina::cat, lamina::index_select, lamina::gather, lamina::token_logprobs and lamina::log1mexp.
#include <functional>

#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "helpers.h"

using namespace lamina;
using testing::random_tensor;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

void expect_gradcheck(const char* name, const Fn& fn, const std::vector<Tensor>& inputs) {
  const autograd::GradcheckResult result = autograd::gradcheck(fn, inputs);
  INFO(std::string(name) << ": max abs err " << result.max_abs_error << ", max rel err " << result.max_rel_error << "; "
            << result.worst);
  CHECK(result.passed);
}

Tensor f64(const Shape& shape, Generator& gen, double low = -1, double high = 1) {
  return random_tensor(shape, DType::f64, gen, low, high);
}

}  // namespace

TEST_CASE("gradcheck catches a wrong backward rule") {
  // exp with the derivative of a different function must fail the check.
  const Fn wrong = [](const std::vector<Tensor>& in) {
    Tensor out = ops::exp(in[0]);
    autograd::record("wrong_exp", {&out}, {in[0]}, [x = in[0].detach()](const std::vector<Tensor>& g) {
      return std::vector<Tensor>{ops::mul(g[0], x)};
    });
    return out;
  };
  Generator gen(1);
  CHECK_FALSE(autograd::gradcheck(wrong, {f64({3}, gen)}).passed);
}

TEST_CASE("views and copies") {
  Generator gen(4);
  const Tensor x = f64({2, 3, 4}, gen);
  expect_gradcheck("view", [](const auto& in) { return in[0].view({6, 4}) * 2.0; }, {x});
  expect_gradcheck("reshape of a transpose", [](const auto& in) { return in[0].transpose(0, 2).reshape({-1}); }, {x});
  expect_gradcheck("permute", [](const auto& in) { return in[0].permute({2, 0, 1}) * in[0].permute({2, 0, 1}); }, {x});
  expect_gradcheck("slice with step", [](const auto& in) { return in[0].slice(2, 0, 4, 2); }, {x});
  expect_gradcheck("narrow + select", [](const auto& in) { return in[0].narrow(1, 1, 2).select(0, 1); }, {x});
  expect_gradcheck("expand", [](const auto& in) { return in[0].select(2, 0).unsqueeze(-1).expand({2, 3, 5}); }, {x});
  expect_gradcheck("squeeze", [](const auto& in) { return in[0].slice(1, 0, 1).squeeze(1); }, {x});
  expect_gradcheck("flatten + contiguous", [](const auto& in) { return in[0].transpose(1, 2).contiguous().flatten(1); }, {x});
  expect_gradcheck("clone", [](const auto& in) { return in[0].clone() * in[0]; }, {x});
  expect_gradcheck("split", [](const auto& in) {
    std::vector<Tensor> parts = split(in[0], {1, 3}, 2);
    return parts[0] * parts[1].slice(2, 0, 1);
  }, {x});
}

TEST_CASE("dropout, with the same mask on every evaluation") {
  Generator gen(5);
  const Tensor x = f64({2, 3, 6}, gen);
  Generator dropout_gen(11);
  expect_gradcheck("dropout", [&](const auto& in) {
    Generator fixed = dropout_gen;  // the same mask on every evaluation
    return dropout(in[0], 0.5, fixed);
  }, {x});
}

namespace {

// A Llama decoder block plus its head, in f64: the end-to-end check of autograd.
struct TinyBlock {
  static constexpr int64_t batch = 2, tokens = 3, dim = 8, heads = 2, kv_heads = 1, head_dim = 4, ffn = 12, vocab = 10;
  RopeConfig rope_config{head_dim, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 8}};
  Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 1, 2}, {tokens});
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{3, 9, -100, 0, 1, 2}, {batch, tokens});

  // inputs: x, attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down, lm_head
  static std::vector<Tensor> random_inputs(Generator& gen) {
    const double scale = 0.5;
    return {f64({batch, tokens, dim}, gen),
            f64({dim}, gen, 0.5, 1.5),
            f64({heads * head_dim, dim}, gen, -scale, scale),
            f64({kv_heads * head_dim, dim}, gen, -scale, scale),
            f64({kv_heads * head_dim, dim}, gen, -scale, scale),
            f64({dim, heads * head_dim}, gen, -scale, scale),
            f64({dim}, gen, 0.5, 1.5),
            f64({ffn, dim}, gen, -scale, scale),
            f64({ffn, dim}, gen, -scale, scale),
            f64({dim, ffn}, gen, -scale, scale),
            f64({vocab, dim}, gen, -scale, scale)};
  }

  Tensor decoder(const Tensor& x, const std::vector<Tensor>& w) const {
    Tensor h = x;
    const Tensor a = rms_norm(h, w[1], 1e-5);
    const Tensor q = rope(matmul(a, w[2], false, true).view({batch, tokens, heads, head_dim}), positions, rope_config);
    const Tensor k = rope(matmul(a, w[3], false, true).view({batch, tokens, kv_heads, head_dim}), positions, rope_config);
    const Tensor v = matmul(a, w[4], false, true).view({batch, tokens, kv_heads, head_dim});
    const Tensor o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
    h = h + matmul(o.transpose(1, 2).reshape({batch, tokens, heads * head_dim}), w[5], false, true);
    const Tensor m = rms_norm(h, w[6], 1e-5);
    return h + matmul(swiglu(matmul(m, w[7], false, true), matmul(m, w[8], false, true)), w[9], false, true);
  }

  Tensor loss(const Tensor& h, const Tensor& lm_head) const {
    return cross_entropy(matmul(h, lm_head, false, true), targets);
  }
};

}  // namespace

TEST_CASE("a whole Llama-style block gradchecks end to end") {
  Generator gen(6);
  const TinyBlock block;
  expect_gradcheck("llama block", [&](const std::vector<Tensor>& in) {
    return block.loss(block.decoder(in[0], in), in[10]);
  }, TinyBlock::random_inputs(gen));
}

TEST_CASE("activation checkpointing gives the same loss and gradients") {
  Generator gen(7);
  const TinyBlock block;
  const std::vector<Tensor> inputs = TinyBlock::random_inputs(gen);
  for (const Tensor& t : inputs) t.set_requires_grad(true);
  const std::vector<Tensor> weights(inputs.begin() + 1, inputs.end());

  const Tensor plain = block.loss(block.decoder(inputs[0], inputs), inputs[10]);
  plain.backward();
  std::vector<std::vector<double>> plain_grads;
  for (const Tensor& t : inputs) {
    plain_grads.push_back(t.grad().to_vector<double>());
    t.set_grad(Tensor());
  }
  const Tensor h = autograd::checkpoint(
      [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{block.decoder(in[0], inputs)}; }, {inputs[0]},
      weights)[0];
  const Tensor checkpointed = block.loss(h, inputs[10]);
  CHECK(checkpointed.item<double>() == plain.item<double>());
  checkpointed.backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    CAPTURE(i);
    CHECK(inputs[i].grad().to_vector<double>() == plain_grads[i]);
  }
}
