// Reductions and indexing on the GPU against the CPU where no op case applies: argmax ties and
// NaN, max/min propagating NaN, split's device views, one_hot and the host-side index check.
// (ops::sum, ops::mean, ops::max, ops::min, ops::argmax, ops::logsumexp, ops::var and the index
// ops ops::cat, ops::index_select, ops::index_add, ops::gather, ops::scatter_add over dims,
// layouts and dtypes are op cases, compared with the CPU by test_op_cases.cpp.)
//
// Tolerances: max/min/argmax, split and one_hot are exact; logsumexp elementwise_tolerance.
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using ops::CompareOp;

TEST_CASE("argmax takes the first maximum, and a NaN wins; max and min propagate NaN") {
  std::vector<double> values = {1, 5, 5, 2, /**/ 3, 3, 3, 3, /**/ 0, NAN, 7, NAN, /**/ -INFINITY, -1, -1, 4};
  const Tensor x = Tensor::from_vector(values, {4, 4});
  for_each_poison([&] {
    CHECK_CLOSE(ops::argmax(mirror(x), 1), ops::argmax(x, 1), kExact);
    CHECK_CLOSE(ops::argmax(mirror(x), 0), ops::argmax(x, 0), kExact);
    CHECK_CLOSE(ops::max(mirror(x), {1}), ops::max(x, {1}), kExact);
    CHECK_CLOSE(ops::min(mirror(x), {0}), ops::min(x, {0}), kExact);
    CHECK_CLOSE(ops::logsumexp(mirror(x), {1}), ops::logsumexp(x, {1}), elementwise_tolerance(DType::f32));
  });
  // Long rows with the maximum repeated across many threads' ranges: the first one wins.
  const Tensor ties = full({3, 5000}, 1.0, DType::f32);
  Tensor marked = ops::clone(ties);
  ops::fill_(views::slice(marked, 1, 777, 5000, 1000), 2.0);
  for_each_poison([&] { CHECK_CLOSE(ops::argmax(mirror(marked), 1), ops::argmax(marked, 1), kExact); });
}

TEST_CASE("split of a device tensor returns device views of the parts") {
  Generator gen(202);
  for (DType dtype : {DType::f32, DType::bf16, DType::i64, DType::boolean}) {
    CAPTURE(name(dtype));
    const Tensor values = random_tensor({3, 6, 5}, DType::f32, gen);
    const Tensor x = dtype == DType::boolean ? ops::compare(CompareOp::gt, values, 0.0) : ops::cast(values, dtype);
    for_each_poison([&] {
      const Tensor on_gpu = mirror(x);
      const std::vector<Tensor> parts = ops::split(on_gpu, {1, 5}, 1);
      CHECK(parts[1].device() == kCuda);
      CHECK(parts[1].storage() == on_gpu.storage());
      CHECK_CLOSE(parts[1], ops::split(x, {1, 5}, 1)[1], kExact);
    });
  }
}

TEST_CASE("one_hot on the device; out-of-range indices are caught on the host") {
  Generator gen(203);
  const Tensor labels = randint(0, 10, {4, 6}, gen);
  for_each_poison([&] { CHECK_CLOSE(ops::one_hot(mirror(labels), 10), ops::one_hot(labels, 10), kExact); });
  // Out-of-range indices are caught on the host before any kernel runs.
  const Tensor bad = Tensor::from_vector(std::vector<int64_t>{0, 9}, {2});
  CHECK_THROWS_WITH_AS(ops::index_select(zeros({3, 4}, DType::f32, kCuda), 0, mirror(bad)),
                       doctest::Contains("index 9 at flat position 1"), Error);
}
