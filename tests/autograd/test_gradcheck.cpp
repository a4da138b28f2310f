// Every differentiable function against central differences in f64, then a whole Llama-style
// block end to end, with and without activation checkpointing.
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

TEST_CASE("elementwise functions") {
  Generator gen(2);
  const Tensor a = f64({2, 3}, gen), b = f64({2, 3}, gen), row = f64({3}, gen), positive = f64({2, 3}, gen, 0.5, 2);
  const std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> unary = {
      {"neg", [](const Tensor& x) { return neg(x); }},         {"exp", [](const Tensor& x) { return exp(x); }},
      {"abs", [](const Tensor& x) { return abs(x); }},         {"square", [](const Tensor& x) { return square(x); }},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }}, {"silu", [](const Tensor& x) { return silu(x); }},
      {"tanh", [](const Tensor& x) { return tanh(x); }},       {"relu", [](const Tensor& x) { return relu(x); }},
      {"gelu", [](const Tensor& x) { return gelu(x); }},       {"softplus", [](const Tensor& x) { return softplus(x); }},
      {"log_sigmoid", [](const Tensor& x) { return log_sigmoid(x); }},
  };
  for (const auto& [name, f] : unary) expect_gradcheck(name, [f = f](const auto& in) { return f(in[0]); }, {a});
  const std::vector<std::pair<const char*, std::function<Tensor(const Tensor&)>>> positive_only = {
      {"log", [](const Tensor& x) { return log(x); }},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }},
      {"reciprocal", [](const Tensor& x) { return reciprocal(x); }},
      {"pow_scalar", [](const Tensor& x) { return pow(x, 2.5); }},
      {"rdiv_scalar", [](const Tensor& x) { return 3.0 / x; }},
  };
  for (const auto& [name, f] : positive_only) expect_gradcheck(name, [f = f](const auto& in) { return f(in[0]); }, {positive});
  expect_gradcheck("add", [](const auto& in) { return in[0] + in[1]; }, {a, row});
  expect_gradcheck("sub", [](const auto& in) { return in[1] - in[0]; }, {a, row});
  expect_gradcheck("mul", [](const auto& in) { return in[0] * in[1]; }, {a, b});
  expect_gradcheck("mul broadcast", [](const auto& in) { return in[0] * in[1]; }, {a, row.view({1, 3})});
  expect_gradcheck("div", [](const auto& in) { return in[0] / in[1]; }, {a, positive});
  expect_gradcheck("pow", [](const auto& in) { return pow(in[0], in[1]); }, {positive, b});
  expect_gradcheck("maximum", [](const auto& in) { return maximum(in[0], in[1]); }, {a, b});
  expect_gradcheck("minimum", [](const auto& in) { return minimum(in[0], in[1]); }, {a, row});
  expect_gradcheck("scalars", [](const auto& in) { return (in[0] + 2.0) * 3.0 - 1.0 / 4.0 - (1.0 - in[0]) / 2.0; }, {a});
  const Tensor condition = ops::compare(ops::CompareOp::gt, b, 0.0);
  expect_gradcheck("where", [&](const auto& in) { return where(condition, in[0], in[1]); }, {a, row});
  expect_gradcheck("masked_fill", [&](const auto& in) { return masked_fill(in[0], condition, 7.0); }, {a});
  expect_gradcheck("clamp", [](const auto& in) { return clamp(in[0], -0.5, 0.4); }, {a});
}

TEST_CASE("reductions and matmul") {
  Generator gen(3);
  const Tensor x = f64({2, 3, 4}, gen);
  expect_gradcheck("sum all", [](const auto& in) { return sum(in[0]); }, {x});
  expect_gradcheck("sum dims", [](const auto& in) { return sum(in[0], {0, 2}); }, {x});
  expect_gradcheck("sum keepdim", [](const auto& in) { return sum(in[0], {-1}, true) * in[0]; }, {x});
  expect_gradcheck("mean", [](const auto& in) { return mean(in[0], {1}); }, {x});
  expect_gradcheck("max", [](const auto& in) { return max(in[0], {2}); }, {x});
  expect_gradcheck("min keepdim", [](const auto& in) { return min(in[0], {0, 1}, true); }, {x});
  expect_gradcheck("logsumexp", [](const auto& in) { return logsumexp(in[0], {-1}); }, {x});
  expect_gradcheck("var", [](const auto& in) { return var(in[0], {1, 2}); }, {x});
  const Tensor a = f64({2, 3, 5}, gen), b = f64({5, 4}, gen), batch_b = f64({2, 5, 4}, gen);
  expect_gradcheck("matmul shared weight", [](const auto& in) { return matmul(in[0], in[1]); }, {a, b});
  expect_gradcheck("matmul batched", [](const auto& in) { return matmul(in[0], in[1]); }, {a, batch_b});
  expect_gradcheck("matmul b^T", [](const auto& in) { return matmul(in[0], in[1], false, true); }, {a, f64({4, 5}, gen)});
  expect_gradcheck("matmul a^T b^T", [](const auto& in) { return matmul(in[0], in[1], true, true); },
                   {f64({2, 5, 3}, gen), f64({2, 4, 5}, gen)});
  expect_gradcheck("matmul broadcast batch", [](const auto& in) { return matmul(in[0], in[1]); },
                   {f64({1, 3, 5}, gen), batch_b});
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
  expect_gradcheck("cat", [](const auto& in) { return cat({in[0], in[1] * 2.0}, 1); }, {x, f64({2, 2, 4}, gen)});
  expect_gradcheck("split", [](const auto& in) {
    std::vector<Tensor> parts = split(in[0], {1, 3}, 2);
    return parts[0] * parts[1].slice(2, 0, 1);
  }, {x});
  const Tensor index = Tensor::from_vector(std::vector<int64_t>{2, 0, 2}, {3});
  expect_gradcheck("index_select", [&](const auto& in) { return index_select(in[0], 1, index); }, {x});
  const Tensor gather_index = Tensor::from_vector(std::vector<int64_t>{3, 3, 0, 1, 2, 3}, {2, 3, 1});
  expect_gradcheck("gather", [&](const auto& in) { return gather(in[0], 2, gather_index); }, {x});
}

TEST_CASE("neural-network primitives") {
  Generator gen(5);
  const Tensor x = f64({2, 3, 6}, gen);
  expect_gradcheck("softmax", [](const auto& in) { return softmax(in[0], 1); }, {x});
  expect_gradcheck("log_softmax", [](const auto& in) { return log_softmax(in[0], -1); }, {x});
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 4, 1, 0}, {2, 2});
  expect_gradcheck("embedding", [&](const auto& in) { return embedding(in[0], ids); }, {f64({5, 3}, gen)});
  expect_gradcheck("rms_norm", [](const auto& in) { return rms_norm(in[0], in[1], 1e-5); }, {x, f64({6}, gen, 0.5, 1.5)});
  const RopeConfig config{4, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 16}};
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 5, 900}, {3});
  expect_gradcheck("rope", [&](const auto& in) { return rope(in[0], positions, config); }, {f64({2, 3, 2, 4}, gen)});
  expect_gradcheck("swiglu", [](const auto& in) { return swiglu(in[0], in[1]); }, {x, f64({2, 3, 6}, gen)});
  Generator dropout_gen(11);
  expect_gradcheck("dropout", [&](const auto& in) {
    Generator fixed = dropout_gen;  // the same mask on every evaluation
    return dropout(in[0], 0.5, fixed);
  }, {x});
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{5, -100, 0, 2, 3, -100}, {2, 3});
  for (Reduction reduction : {Reduction::none, Reduction::sum, Reduction::mean}) {
    expect_gradcheck("cross_entropy", [&](const auto& in) { return cross_entropy(in[0], targets, reduction); }, {x});
  }
  AttentionOptions options;
  expect_gradcheck("attention GQA causal", [&](const auto& in) { return attention(in[0], in[1], in[2], options); },
                   {f64({1, 4, 3, 2}, gen), f64({1, 2, 5, 2}, gen), f64({1, 2, 5, 2}, gen)});
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
