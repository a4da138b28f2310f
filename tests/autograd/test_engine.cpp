// The tape and the backward engine: accumulation, graph reuse, hooks, grad mode, memory.
#include <pthread.h>

#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "autograd/functions.h"
#include "helpers.h"

using namespace lamina;
using testing::random_tensor;

namespace {
Tensor scalar_leaf(double value) {
  Tensor t = Tensor::scalar(value, DType::f64);
  t.set_requires_grad(true);
  return t;
}
double value_of(const Tensor& t) { return t.item<double>(); }
}  // namespace

TEST_CASE("backward of a small expression gives the analytic gradient") {
  const Tensor x = scalar_leaf(1.5), w = scalar_leaf(-2.0);
  const Tensor y = x * x * w + exp(x) / w - 3.0;  // dy/dx = 2xw + e^x/w, dy/dw = x^2 - e^x/w^2
  y.backward();
  CHECK(value_of(x.grad()) == doctest::Approx(2 * 1.5 * -2.0 + std::exp(1.5) / -2.0));
  CHECK(value_of(w.grad()) == doctest::Approx(1.5 * 1.5 - std::exp(1.5) / 4.0));
  CHECK(x.is_leaf());
  CHECK_FALSE(y.is_leaf());
  CHECK(y.requires_grad());
}

TEST_CASE("gradients accumulate across backward passes and over shared uses") {
  const Tensor x = scalar_leaf(3.0);
  const Tensor shared = x * 2.0;  // used twice below: the engine must sum both paths
  (shared * shared + shared).backward();
  CHECK(value_of(x.grad()) == doctest::Approx(2 * (2 * 6.0 + 1)));
  (x * 5.0).backward();
  CHECK(value_of(x.grad()) == doctest::Approx(26.0 + 5.0));
  x.set_grad(Tensor());
  (x * 5.0).backward();
  CHECK(value_of(x.grad()) == doctest::Approx(5.0));
}

TEST_CASE("a leaf's gradient is its own: never storage that another leaf, a hook or the caller holds") {
  // The engine takes a first gradient without copying it only when nothing else can reach it.
  // Addition hands one gradient tensor to both of its inputs, and a hook may return a tensor
  // the caller keeps: each leaf must still own its gradient, or accumulating into one would
  // change another.
  Generator gen(1);
  Tensor a = random_tensor({4}, DType::f64, gen), b = ops::clone(a);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  sum(a + b).backward();
  CHECK(a.grad().storage() != b.grad().storage());
  sum(a * 3.0).backward();
  CHECK(a.grad().to_vector<double>() == std::vector<double>(4, 4.0));
  CHECK(b.grad().to_vector<double>() == std::vector<double>(4, 1.0));

  const Tensor held = Tensor::from_vector(std::vector<double>{7, 7, 7, 7}, {4});
  Tensor c = ops::clone(a);
  c.set_requires_grad(true);
  c.register_hook([held](const Tensor&) { return held; });
  sum(c).backward();
  CHECK(c.grad().storage() != held.storage());
  sum(c).backward();
  CHECK(c.grad().to_vector<double>() == std::vector<double>(4, 14.0));
  CHECK(held.to_vector<double>() == std::vector<double>(4, 7.0));
}

TEST_CASE("a graph runs once unless retained") {
  const Tensor x = scalar_leaf(2.0);
  const Tensor y = exp(x) * x;
  y.backward(Tensor(), true);
  const double once = value_of(x.grad());
  y.backward();
  CHECK(value_of(x.grad()) == doctest::Approx(2 * once));
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("already run"), Error);
}

TEST_CASE("grad mode, detach and requires_grad rules") {
  const Tensor x = scalar_leaf(2.0);
  {
    autograd::NoGradGuard no_grad;
    const Tensor y = x * 3.0;
    CHECK_FALSE(y.requires_grad());
  }
  CHECK((x * 3.0).requires_grad());
  const Tensor stopped = (x * 3.0).detach() * x;  // only the second factor carries a gradient
  stopped.backward();
  CHECK(value_of(x.grad()) == doctest::Approx(6.0));
  CHECK_THROWS_WITH_AS((x * 2.0).set_requires_grad(true), doctest::Contains("only leaf tensors"), Error);
  CHECK_THROWS_WITH_AS(Tensor::from_vector(std::vector<int64_t>{1}, {1}).set_requires_grad(true),
                       doctest::Contains("only floating tensors"), Error);
  CHECK_THROWS_WITH_AS(Tensor::scalar(1.0).backward(), doctest::Contains("does not require grad"), Error);
  const Tensor v = ones({3}, DType::f64);
  v.set_requires_grad(true);
  CHECK_THROWS_WITH_AS((v * 2.0).backward(), doctest::Contains("non-scalar root"), Error);
  // Copies of a handle share the autograd state.
  const Tensor alias = v;
  (v * 2.0).backward(ones({3}, DType::f64));
  CHECK(alias.grad().defined());
}

TEST_CASE("hooks see and may replace gradients; retain_grad keeps non-leaf grads") {
  const Tensor x = scalar_leaf(1.0);
  x.register_hook([](const Tensor& g) { return ops::binary(ops::BinaryOp::mul, g, 10.0); });
  const Tensor middle = x * 3.0;
  double seen = 0;
  middle.register_hook([&](const Tensor& g) {
    seen = g.item<double>();
    return Tensor();
  });
  middle.retain_grad();
  (middle * 4.0).backward();
  CHECK(seen == doctest::Approx(4.0));
  CHECK(value_of(middle.grad()) == doctest::Approx(4.0));
  CHECK(value_of(x.grad()) == doctest::Approx(120.0));
  int post_calls = 0;
  x.autograd_meta()->post_accumulate_hooks.push_back([&](const Tensor& g) {
    ++post_calls;
    CHECK(g.is_same(x.grad()));
  });
  (x * 1.0).backward();
  CHECK(post_calls == 1);
}

TEST_CASE("casts pass the gradient back in the input's dtype") {
  const Tensor x = ones({3}, DType::f64);
  x.set_requires_grad(true);
  sum(x.to(DType::bf16).to(DType::f32) * 3.0).backward();
  CHECK(x.grad().dtype() == DType::f64);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{3.0, 3.0, 3.0});
}

TEST_CASE("a node with several outputs gets zeros for the unused ones") {
  Generator gen(1);
  const Tensor x = uniform({6}, -1, 1, gen, DType::f64);
  x.set_requires_grad(true);
  const std::vector<Tensor> parts = split(x, {2, 4}, 0);
  sum(parts[1] * parts[1]).backward();
  const std::vector<double> grad = x.grad().to_vector<double>(), values = x.to_vector<double>();
  CHECK(grad[0] == 0.0);
  CHECK(grad[1] == 0.0);
  for (size_t i = 2; i < 6; ++i) CHECK(grad[i] == doctest::Approx(2 * values[i]));
}

TEST_CASE("backward frees saved activations as it goes") {
  Generator gen(3);
  const Tensor w = random_tensor({256, 256}, DType::f32, gen);
  w.set_requires_grad(true);
  const int64_t before = memory_stats(Device::cpu()).live_bytes;
  Tensor loss;
  {
    Tensor h = random_tensor({64, 256}, DType::f32, gen);
    for (int layer = 0; layer < 4; ++layer) h = silu(matmul(h, w, false, true));
    loss = sum(h);
  }
  const int64_t with_graph = memory_stats(Device::cpu()).live_bytes;
  CHECK(with_graph - before > 4 * 64 * 256 * 4);  // four saved activations at least
  loss.backward();
  const int64_t after = memory_stats(Device::cpu()).live_bytes;
  // What remains: the gradient of w and the scalar loss, not the activations.
  CHECK(after - before <= 256 * 256 * 4 + 4096);
}

TEST_CASE("activation checkpointing recomputes with the same random stream") {
  Generator data_gen(5);
  const Tensor x = random_tensor({4, 8}, DType::f64, data_gen);
  const Tensor w = random_tensor({8, 8}, DType::f64, data_gen);
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  auto block = [&](Generator& gen) {
    return [&w, &gen](const std::vector<Tensor>& in) {
      return std::vector<Tensor>{dropout(tanh(matmul(in[0], w, false, true)), 0.3, gen)};
    };
  };
  Generator plain_gen(9);
  const Tensor plain = sum(square(block(plain_gen)({x})[0]));
  plain.backward();
  const std::vector<double> plain_dx = x.grad().to_vector<double>(), plain_dw = w.grad().to_vector<double>();
  x.set_grad(Tensor());
  w.set_grad(Tensor());
  Generator checkpoint_gen(9);
  const Tensor recomputed = sum(square(autograd::checkpoint(block(checkpoint_gen), {x}, {w}, &checkpoint_gen)[0]));
  CHECK(recomputed.item<double>() == plain.item<double>());
  const uint64_t offset_after_forward = checkpoint_gen.offset();
  recomputed.backward();
  CHECK(checkpoint_gen.offset() == offset_after_forward);  // the re-run does not consume the stream
  CHECK(x.grad().to_vector<double>() == plain_dx);
  CHECK(w.grad().to_vector<double>() == plain_dw);
}

TEST_CASE("checkpointing reaches parameters when the inputs need no gradient") {
  Generator gen(6);
  const Tensor x = random_tensor({3, 5}, DType::f64, gen);  // frozen input, as in LoRA fine-tuning
  const Tensor w = random_tensor({5, 5}, DType::f64, gen);
  w.set_requires_grad(true);
  const Tensor out = autograd::checkpoint(
      [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{matmul(in[0], w)}; }, {x}, {w})[0];
  CHECK(out.requires_grad());
  sum(out).backward();
  CHECK_CLOSE(w.grad(), ops::sum(x, {0}).unsqueeze(1).expand({5, 5}), testing::tolerance_for(DType::f64));
}

TEST_CASE("dropping a graph of a hundred thousand ops needs no stack per node") {
  // Built and dropped on a thread with a 1 MiB stack: a recursive teardown takes a frame per
  // node along the chain (tens of bytes each) and overflows it long before 100000 nodes.
  struct Chain {
    static void* run(void* result) {
      Tensor x = scalar_leaf(0.0);
      {
        Tensor y = x;
        for (int i = 0; i < 100000; ++i) y = y + 1.0;
        *static_cast<double*>(result) = value_of(y);
      }  // the last handle to the chain goes here
      return nullptr;
    }
  };
  pthread_attr_t attributes;
  REQUIRE(pthread_attr_init(&attributes) == 0);
  REQUIRE(pthread_attr_setstacksize(&attributes, size_t(1) << 20) == 0);
  double result = -1;
  pthread_t thread;
  REQUIRE(pthread_create(&thread, &attributes, &Chain::run, &result) == 0);
  REQUIRE(pthread_join(thread, nullptr) == 0);
  pthread_attr_destroy(&attributes);
  CHECK(result == 100000.0);
}
