// What the tape keeps alive until backward: only what each rule reads. A saved tensor lives until
// backward, so an op that keeps more than it needs (both addends of a sum, the input of a scaling)
// costs a whole activation per use; on LoRA branches that was a third of a training step's memory.
#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "helpers.h"
#include "tensor/storage.h"

using namespace lamina;

TEST_CASE("tape: a sum and a scaling keep none of their operands alive; a product keeps its factors") {
  Generator generator(3);
  Tensor x = randn({256, 1024}, generator);  // 1 MiB
  x.set_requires_grad(true);
  const int64_t megabyte = 256 * 1024 * 4;
  const Device cpu = Device::cpu();
  const int64_t before = memory_stats(cpu).live_bytes;
  // scaled = 3x is read by nothing but the sum: once the sum is recorded, only its result lives.
  Tensor y = add(mul(x, 3.0), div(x, 2.0));
  CHECK(memory_stats(cpu).live_bytes - before == megabyte);
  // A product keeps both factors for its backward: 2x lives on (y was alive already).
  Tensor z = mul(y, mul(x, 2.0));
  CHECK(memory_stats(cpu).live_bytes - before == 3 * megabyte);
  // And the gradients are still right: d/dx sum(z) = d/dx (3.5x * 2x) = 14x.
  sum(z).backward();
  const std::vector<float> gradient = x.grad().to_vector<float>(), values = x.to_vector<float>();
  for (size_t i = 0; i < values.size(); i += 997) CHECK(gradient[i] == doctest::Approx(14.0 * values[i]).epsilon(1e-5));
}
