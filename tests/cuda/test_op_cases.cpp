// Every op case of tests/op_cases/ on the GPU against the CPU kernel on the same inputs: each
// case x dtype x call (the large ones too: they reach the multi-block paths) x layout, every
// output of the forward, and the raw backward from the same CPU outputs and upstream gradient.
// Inputs reach the kernels as mirrors of the CPU tensors (same strides, offsets and padding),
// every new allocation poisoned (cuda_cases.h). Tolerances are the case's cuda_tolerance (or
// elementwise_tolerance doubled) and cuda_backward_tolerance (or twice cuda_tolerance).
#include "cuda_cases.h"
#include "op_cases/op_case.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using namespace lamina::testing::op_cases;

namespace {

Tolerance forward_tolerance(const OpCase& op_case, DType dtype, const OpCall& call, size_t index) {
  return op_case.cuda_tolerance ? op_case.cuda_tolerance(dtype, call, index) : scaled(elementwise_tolerance(dtype), 2);
}

Tolerance backward_tolerance(const OpCase& op_case, DType dtype, const OpCall& call, size_t position) {
  if (op_case.cuda_backward_tolerance) return op_case.cuda_backward_tolerance(dtype, call, position);
  return scaled(forward_tolerance(op_case, dtype, call, 0), 2);
}

Tensors mirrored(const Tensors& tensors) {
  Tensors out;
  for (const Tensor& t : tensors) out.push_back(mirror(t));
  return out;
}

void check_case(const OpCase& op_case, DType dtype) {
  Generator gen(call_seed(op_case, dtype) + 2);
  for (const OpCall& call : calls_for(op_case, dtype, /*with_large=*/true)) {
    const Tensors expected = op_case.forward(call, call.inputs);
    const bool with_backward = op_case.backward && is_floating(dtype);
    const Tensor grad = with_backward ? upstream_gradient(expected[0], gen) : Tensor();
    const Tensors expected_grads = with_backward ? op_case.backward(call, call.inputs, expected, grad) : Tensors{};
    const std::vector<size_t> positions = grad_input_positions(op_case, call);
    for (size_t shift = 0; shift < std::size(kLayouts); ++shift) {
      const LaidOut laid = lay_out(op_case, call.inputs, shift);
      const Tensor grad_laid = expected_grads.empty() ? Tensor() : in_layout(grad, kLayouts[(shift + 2) % std::size(kLayouts)]);
      INFO(op_case.name << " " << name(dtype) << " " << call.label << ", layout " << laid.name);
      for_each_poison([&] {
        const Tensors outputs = op_case.forward(call, mirrored(laid.inputs));
        REQUIRE(outputs.size() == expected.size());
        for (size_t i = 0; i < outputs.size(); ++i) {
          INFO("output " << i);
          CHECK(outputs[i].device() == kCuda);
          CHECK(outputs[i].dtype() == expected[i].dtype());
          CHECK_CLOSE(outputs[i], expected[i], forward_tolerance(op_case, dtype, call, i));
        }
        if (expected_grads.empty()) return;
        // From the CPU's outputs, so that the backward is compared on its own.
        const Tensors grads = op_case.backward(call, mirrored(laid.inputs), mirrored(expected), mirror(grad_laid));
        REQUIRE(grads.size() == expected_grads.size());
        for (size_t j = 0; j < grads.size(); ++j) {
          INFO("gradient of input " << positions[j]);
          CHECK(grads[j].device() == kCuda);
          CHECK_CLOSE(grads[j], expected_grads[j], backward_tolerance(op_case, dtype, call, positions[j]));
        }
      });
    }
  }
}

}  // namespace

TEST_CASE("op cases: every CUDA kernel matches the CPU in every dtype, call and layout, forward and backward") {
  for (const OpCase& op_case : all_cases())
    for (DType dtype : op_case.dtypes) check_case(op_case, dtype);
}
