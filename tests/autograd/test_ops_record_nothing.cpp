// The raw op catalogue (ops/ops.h) never records on the autograd tape. Every op family is called
// with grad mode on and every floating input a leaf that requires grad, and the test checks that
// no node was created and no output carries a grad_fn. This is what lets the differentiable
// functions (autograd/functions/) call the raw ops with grad mode left on.
#include <functional>
#include <string>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "helpers.h"

using namespace lamina;
using testing::random_tensor;

namespace {

using Outputs = std::vector<Tensor>;

// Nodes created so far in the process: each new node takes the next sequence number, so the
// number a fresh probe node gets counts every node before it.
uint64_t nodes_created() {
  const autograd::FunctionNode probe("probe", nullptr);
  return probe.sequence_nr();
}

// Runs `call` with grad mode on and checks that it put nothing on the tape: no new node, and
// every output it returns is a leaf.
void check_records_nothing(const std::string& op, const std::function<Outputs()>& call) {
  INFO("op: " << op);
  autograd::EnableGradGuard grad_on;
  const uint64_t before = nodes_created();
  const Outputs outputs = call();
  const uint64_t nodes = nodes_created() - before - 1;  // less the second probe
  CHECK_MESSAGE(nodes == 0, op << " created " << nodes << " autograd node(s)");
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined()) continue;
    CHECK_MESSAGE(outputs[i].is_leaf(), op << ": output " << i << " has grad_fn '"
                                           << outputs[i].autograd_meta()->grad_fn->name() << "'");
  }
}

// A leaf that requires grad (t may be a raw view: it gets autograd state of its own).
Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

Tensor random_leaf(const Shape& shape, Generator& gen, double low = -1.0, double high = 1.0) {
  return leaf(random_tensor(shape, DType::f32, gen, low, high));
}

Tensor ids(const std::vector<int64_t>& values, const Shape& shape) { return Tensor::from_vector(values, shape); }

Tensor bools(const std::vector<int>& values, const Shape& shape) {
  return ops::cast(Tensor::from_vector(values, shape, DType::i32), DType::boolean);
}

}  // namespace

TEST_CASE("the watch sees what the tape records") {
  // Without this, a watch that could never count a node would pass everything below.
  Generator gen(1);
  const Tensor x = random_leaf({2, 3}, gen);
  autograd::EnableGradGuard grad_on;
  uint64_t before = nodes_created();
  const Tensor y = exp(x);
  CHECK(nodes_created() - before - 1 > 0);
  CHECK_FALSE(y.is_leaf());
  before = nodes_created();
  const Tensor viewed = x.view({3, 2});  // the kind of Tensor method the ops must not call
  CHECK(nodes_created() - before - 1 > 0);
  CHECK_FALSE(viewed.is_leaf());
}

TEST_CASE("creation, copy and cast ops record nothing") {
  Generator gen(2);
  const Tensor x = random_leaf({2, 3}, gen);
  const Tensor transposed = leaf(views::transpose(random_tensor({3, 2}, DType::f32, gen), 0, 1));
  check_records_nothing("zeros/ones/full/zeros_like", [&] {
    return Outputs{zeros({2}), ones({2}), full({2}, 3.0), zeros_like(x)};
  });
  check_records_nothing("arange/uniform/randn/randint", [&] {
    return Outputs{arange(0, 4), uniform({2}, 0, 1, gen), randn({2}, gen), randint(0, 5, {2}, gen)};
  });
  check_records_nothing("cast", [&] { return Outputs{ops::cast(x, DType::f64)}; });
  check_records_nothing("contiguous", [&] { return Outputs{ops::contiguous(transposed), ops::contiguous(x)}; });
  check_records_nothing("clone", [&] { return Outputs{ops::clone(transposed)}; });
  check_records_nothing("to_device", [&] { return Outputs{ops::to_device(x, Device::cpu())}; });
  check_records_nothing("copy_/fill_", [&] {
    const Tensor destination = leaf(zeros({2, 3}));
    ops::copy_(destination, random_leaf({3}, gen));
    ops::fill_(destination, 1.0);
    return Outputs{destination};
  });
  check_records_nothing("dropout_mask", [&] { return Outputs{ops::dropout_mask({2, 3}, 0.5, gen)}; });
}

TEST_CASE("elementwise ops and their backwards record nothing") {
  Generator gen(3);
  const Tensor x = random_leaf({2, 3}, gen, 0.1, 1.0);
  const Tensor row = random_leaf({3}, gen, 0.1, 1.0);
  const Tensor column = random_leaf({2, 1}, gen, 0.1, 1.0);
  const Tensor grad = random_leaf({2, 3}, gen);
  for (int op = 0; op <= int(ops::UnaryOp::log_sigmoid); ++op) {
    const auto unary = ops::UnaryOp(op);
    check_records_nothing(ops::unary_op_name(unary), [&] {
      const Tensor out = ops::unary(unary, x);
      return Outputs{out, ops::unary_backward(unary, grad, x, leaf(out.detach()))};
    });
  }
  for (int op = 0; op <= int(ops::BinaryOp::minimum); ++op) {
    const auto binary = ops::BinaryOp(op);
    check_records_nothing(ops::binary_op_name(binary), [&] {
      const Tensor out = ops::binary(binary, column, row);  // broadcast both ways
      auto [grad_column, grad_row] = ops::binary_backward(binary, grad, column, row, leaf(out.detach()));
      return Outputs{out, ops::binary(binary, x, 2.0), ops::binary(binary, 2.0, x), grad_column, grad_row};
    });
  }
  check_records_nothing("add_/mul_", [&] {
    const Tensor destination = random_leaf({2, 3}, gen);
    ops::add_(destination, row, 0.5);
    ops::mul_(destination, 2.0);
    return Outputs{destination};
  });
  const Tensor condition = bools({1, 0, 1, 0, 0, 1}, {2, 3});
  check_records_nothing("compare/logical", [&] {
    Outputs outputs;
    for (int op = 0; op <= int(ops::CompareOp::ge); ++op) {
      outputs.push_back(ops::compare(ops::CompareOp(op), x, row));
      outputs.push_back(ops::compare(ops::CompareOp(op), x, 0.5));
    }
    outputs.push_back(ops::logical_not(condition));
    outputs.push_back(ops::logical_and(condition, outputs[0]));
    outputs.push_back(ops::logical_or(condition, outputs[0]));
    return outputs;
  });
  check_records_nothing("where/masked_fill", [&] {
    return Outputs{ops::where(condition, x, row), ops::masked_fill(x, condition, -1.0)};
  });
  check_records_nothing("clamp", [&] {
    return Outputs{ops::clamp(x, 0.2, 0.8), ops::clamp_backward(grad, x, 0.2, std::nullopt)};
  });
}

TEST_CASE("reductions and their backwards record nothing") {
  Generator gen(4);
  const Tensor x = random_leaf({2, 3, 4}, gen);
  const Tensor grad_rows = random_leaf({2, 4}, gen);  // the gradient of a reduction over dim 1
  check_records_nothing("sum/mean/max/min/argmax/logsumexp/var", [&] {
    return Outputs{ops::sum(x), ops::mean(x, {1}), ops::max(x, {-1}), ops::min(x, {0, 2}, true),
                   ops::argmax(x, 1), ops::logsumexp(x, {1}), ops::var(x, {1})};
  });
  check_records_nothing("sum_to", [&] {
    return Outputs{ops::sum_to(x, {3, 4}), ops::sum_to(x, {2, 1, 4}), ops::sum_to(x, {1, 1}),
                   ops::sum_to(x, x.shape())};
  });
  check_records_nothing("unsqueeze_reduced", [&] {
    return Outputs{ops::unsqueeze_reduced(grad_rows, x.shape(), {1}, false),
                   ops::unsqueeze_reduced(leaf(Tensor::scalar(1.0)), x.shape(), {}, false)};
  });
  check_records_nothing("extremum_backward", [&] {
    const Tensor out = leaf(ops::max(x, {1}).detach());
    return Outputs{ops::extremum_backward(grad_rows, x, out, {1}, false)};
  });
  check_records_nothing("logsumexp_backward", [&] {
    const Tensor out = leaf(ops::logsumexp(x, {1}).detach());
    return Outputs{ops::logsumexp_backward(grad_rows, x, out, {1}, false)};
  });
  check_records_nothing("var_backward", [&] { return Outputs{ops::var_backward(grad_rows, x, {1}, 1, false)}; });
}

TEST_CASE("matmul and its backward record nothing, on every path") {
  Generator gen(5);
  const Tensor batched = random_leaf({2, 3, 4}, gen);
  const Tensor weight = random_leaf({4, 5}, gen);
  const Tensor weight_t = random_leaf({5, 4}, gen);
  const Tensor other = random_leaf({2, 4, 5}, gen);
  const Tensor grad = random_leaf({2, 3, 5}, gen);
  check_records_nothing("matmul", [&] {
    return Outputs{ops::matmul(batched, weight), ops::matmul(batched, weight_t, false, true),
                   ops::matmul(batched, other), ops::matmul(leaf(views::transpose(batched, 1, 2)), weight, true)};
  });
  // A 2-D weight under a batched input takes the one-product path that flattens the batch.
  check_records_nothing("matmul_backward shared weight", [&] {
    auto [grad_a, grad_b] = ops::matmul_backward(grad, batched, weight, false, false);
    auto [grad_a_t, grad_b_t] = ops::matmul_backward(grad, batched, weight_t, false, true);
    return Outputs{grad_a, grad_b, grad_a_t, grad_b_t};
  });
  check_records_nothing("matmul_backward batched", [&] {
    auto [grad_a, grad_b] = ops::matmul_backward(grad, batched, other, false, false);
    return Outputs{grad_a, grad_b};
  });
  check_records_nothing("matmul_backward broadcast batch", [&] {
    auto [grad_a, grad_b] = ops::matmul_backward(grad, random_leaf({3, 4}, gen), other, false, false);
    return Outputs{grad_a, grad_b};
  });
}

TEST_CASE("the nn ops and their backwards record nothing") {
  Generator gen(6);
  const Tensor x = random_leaf({2, 3, 4}, gen);
  const Tensor grad = random_leaf({2, 3, 4}, gen);
  check_records_nothing("softmax/log_softmax", [&] {
    const Tensor y = leaf(ops::softmax(x, 1).detach());
    const Tensor log_y = leaf(ops::log_softmax(x, -1).detach());
    return Outputs{ops::softmax(x, 1), ops::log_softmax(x, -1), ops::softmax_backward(grad, y, 1),
                   ops::log_softmax_backward(grad, log_y, -1)};
  });
  const Tensor token_ids = ids({0, 4, 2, 1, 1, 3}, {2, 3});
  check_records_nothing("embedding", [&] {
    return Outputs{ops::embedding(random_leaf({5, 4}, gen), token_ids), ops::embedding_backward(grad, token_ids, 5)};
  });
  check_records_nothing("rms_norm", [&] {
    const Tensor weight = random_leaf({4}, gen);
    ops::RmsNormResult result = ops::rms_norm(x, weight, 1e-5);
    ops::RmsNormGrads grads = ops::rms_norm_backward(grad, x, weight, result.rstd);
    return Outputs{result.y, result.rstd, grads.dx, grads.dweight};
  });
  check_records_nothing("rope", [&] {
    RopeConfig config;
    config.head_dim = 4;
    CHECK(ops::rope_frequencies(config).size() == 2);
    const Tensor heads = random_leaf({1, 3, 2, 4}, gen);
    const Tensor positions = arange(0, 3);
    return Outputs{ops::rope(heads, positions, config),
                   ops::rope_backward(random_leaf({1, 3, 2, 4}, gen), positions, config)};
  });
  check_records_nothing("swiglu", [&] {
    const Tensor gate = random_leaf({2, 3, 4}, gen), up = random_leaf({2, 3, 4}, gen);
    auto [grad_gate, grad_up] = ops::swiglu_backward(grad, gate, up);
    return Outputs{ops::swiglu(gate, up), grad_gate, grad_up};
  });
  check_records_nothing("cross_entropy", [&] {
    const Tensor logits = random_leaf({2, 3, 5}, gen);
    const Tensor targets = ids({0, 4, -100, 1, 2, 3}, {2, 3});
    ops::CrossEntropyResult result = ops::cross_entropy(logits, targets);
    return Outputs{result.losses, result.lse,
                   ops::cross_entropy_backward(random_leaf({2, 3}, gen), logits, targets, result.lse)};
  });
  check_records_nothing("attention", [&] {
    const Tensor q = random_leaf({1, 2, 3, 4}, gen);
    const Tensor k = random_leaf({1, 1, 3, 4}, gen), v = random_leaf({1, 1, 3, 4}, gen);
    AttentionOptions options;
    options.mask = random_leaf({3, 3}, gen);
    ops::AttentionResult result = ops::attention(q, k, v, options);
    const Tensor out = leaf(result.out.detach());
    const Tensor grad_out = random_leaf({1, 2, 3, 4}, gen);
    ops::AttentionGrads grads = ops::attention_backward(grad_out, q, k, v, out, result.lse, options);
    return Outputs{result.out, result.lse, grads.dq, grads.dk, grads.dv};
  });
}

TEST_CASE("indexing, joining, the optimizer step and log-prob ops record nothing") {
  Generator gen(7);
  const Tensor x = random_leaf({3, 4}, gen);
  const Tensor rows = ids({2, 0}, {2});
  const Tensor positions = ids({0, 3, 1, 1, 2, 0}, {3, 2});
  check_records_nothing("cat/split", [&] {
    Outputs outputs = ops::split(x, {1, 3}, 1);
    outputs.push_back(ops::cat({x, random_leaf({2, 4}, gen)}, 0));
    return outputs;
  });
  check_records_nothing("index_select/index_add", [&] {
    return Outputs{ops::index_select(x, 0, rows), ops::index_add({3, 4}, 0, rows, random_leaf({2, 4}, gen))};
  });
  check_records_nothing("gather/scatter_add/one_hot", [&] {
    return Outputs{ops::gather(x, 1, positions), ops::scatter_add(x, 1, positions, random_leaf({3, 2}, gen)),
                   ops::one_hot(rows, 3)};
  });
  check_records_nothing("adamw_step_", [&] {
    const Tensor param = random_leaf({3, 4}, gen);
    ops::adamw_step_(param, random_leaf({3, 4}, gen), zeros({3, 4}), zeros({3, 4}), ops::AdamWStep{});
    return Outputs{param};
  });
  const Tensor logits = random_leaf({2, 3, 5}, gen);
  const Tensor labels = ids({0, 4, 2, 1, 9, 3}, {2, 3});  // 9 sits under a false mask
  const Tensor mask = bools({1, 1, 1, 1, 0, 1}, {2, 3});
  check_records_nothing("token_logprobs", [&] {
    ops::TokenLogprobsResult result = ops::token_logprobs(logits, labels, mask, 0.7);
    return Outputs{result.logprobs, result.lse,
                   ops::token_logprobs_backward(random_leaf({2, 3}, gen), logits, labels, mask, result.lse, 0.7)};
  });
  check_records_nothing("token_distribution_stats", [&] {
    ops::TokenDistributionStats stats = ops::token_distribution_stats(logits, labels, mask);
    return Outputs{stats.entropy, stats.logit_mean, stats.log_sum_sq_probs, stats.argmax_matches};
  });
  check_records_nothing("log1mexp", [&] {
    const Tensor negative = random_leaf({2, 3}, gen, -3.0, -0.1);
    return Outputs{ops::log1mexp(negative), ops::log1mexp_backward(random_leaf({2, 3}, gen), negative)};
  });
}
