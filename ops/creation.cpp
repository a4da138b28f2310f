// Factories: the tensors that start a computation (zeros, ones, full, arange, random draws), on
// the CPU or a CUDA device. The random and arange kernels are in ops/cpu/random.cpp and
// ops/cuda/random.cu; fills use the fill kernel of copy_.
#include <algorithm>

#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina {
namespace {

Tensor allocate(const char* op, const Shape& shape, DType dtype, Device device) {
#if !LAMINA_WITH_CUDA
  LAMINA_CHECK(device.is_cpu(), op, ": no kernel for device ", device.str(), " in this build (CUDA backend not built)");
#endif
  for (int64_t size : shape) LAMINA_CHECK(size >= 0, op, ": negative size in shape ", shape);
  if (device.is_cpu()) return Tensor::empty(shape, dtype, device);
  try {  // a missing device or an exhausted one: name the factory that asked
    return Tensor::empty(shape, dtype, device);
  } catch (const Error& error) {
    throw Error(str_cat(op, ": ", error.what()));
  }
}

// `op` is the public factory called, so that errors name it rather than a helper.
Tensor filled(const char* op, const Shape& shape, double value, DType dtype, Device device) {
  Tensor out = allocate(op, shape, dtype, device);
  LAMINA_DISPATCH(device, fill(out, value));
  return out;
}

}  // namespace

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  return filled("full", shape, value, dtype, device);
}

Tensor zeros(const Shape& shape, DType dtype, Device device) { return filled("zeros", shape, 0.0, dtype, device); }

Tensor ones(const Shape& shape, DType dtype, Device device) { return filled("ones", shape, 1.0, dtype, device); }

Tensor zeros_like(const Tensor& t) {
  check_defined(t, "zeros_like", "t");
  return zeros(t.shape(), t.dtype(), t.device());
}

Tensor arange(int64_t start, int64_t end, int64_t step, DType dtype, Device device) {
  LAMINA_CHECK(step != 0, "arange: step must not be 0");
  const int64_t count = step > 0 ? std::max<int64_t>(0, (end - start + step - 1) / step)
                                 : std::max<int64_t>(0, (start - end - step - 1) / -step);
  Tensor out = allocate("arange", {count}, dtype, device);
  LAMINA_DISPATCH(device, arange(out, start, step));
  return out;
}

Tensor uniform(const Shape& shape, double low, double high, Generator& generator, DType dtype, Device device) {
  LAMINA_CHECK(low <= high, "uniform: low ", low, " is above high ", high);
  Tensor out = allocate("uniform", shape, dtype, device);
  const uint64_t words_per_value = dtype == DType::f64 ? 2 : 1;
  const uint64_t first = generator.reserve(uint64_t(out.numel()), words_per_value);
  LAMINA_DISPATCH(device, uniform(out, low, high, generator.seed(), first));
  return out;
}

Tensor randn(const Shape& shape, Generator& generator, DType dtype, Device device) {
  Tensor out = allocate("randn", shape, dtype, device);
  const uint64_t values = uint64_t(out.numel() + 1) / 2 * 2;  // Box-Muller works in pairs
  const uint64_t first = generator.reserve(values, dtype == DType::f64 ? 2 : 1);
  LAMINA_DISPATCH(device, normal(out, generator.seed(), first));
  return out;
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& generator, DType dtype, Device device) {
  LAMINA_CHECK(low < high, "randint: empty range [", low, ", ", high, ")");
  Tensor out = allocate("randint", shape, dtype, device);
  const uint64_t first = generator.reserve(uint64_t(out.numel()), 2);
  LAMINA_DISPATCH(device, randint(out, low, high, generator.seed(), first));
  return out;
}

}  // namespace lamina
