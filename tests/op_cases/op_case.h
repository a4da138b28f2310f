// The op-case harness: one description per op, iterated by three suites.
//
//   tests/ops/test_op_cases.cpp          the CPU kernels against the f64 oracles of ops/reference.h,
//                                        every case x dtype x call x layout, and each low-precision
//                                        backward against the f64 backward on the same inputs;
//   tests/autograd/test_op_gradcheck.cpp the differentiable function of every case by gradcheck (f64);
//   tests/cuda/test_op_cases.cpp         every CUDA kernel against its CPU twin on the same inputs.
//
// A new op adds an OpCase to the family file here (elementwise.cpp, reduce.cpp, matmul.cpp,
// nn.cpp, index.cpp, logprob.cpp) and is then tested by all three suites; the suites hold no
// per-op loops. Tests of special semantics (ties, NaN, error messages, worked numbers) stay in
// the suites' own files.
#pragma once

#include <any>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ops/op_cases.h"

namespace lamina::testing::op_cases {

using Tensors = std::vector<Tensor>;

// One call of an op: the tensor inputs, in the dtype under test, and the arguments that are not
// tensors. Inputs may already be views (an expanded or transposed operand is a call of its own);
// the suites lay each input out again in every Layout on top.
struct OpCall {
  OpCall(std::string call_label, Tensors call_inputs, std::any call_arguments = {})
      : label(std::move(call_label)), inputs(std::move(call_inputs)), arguments(std::move(call_arguments)) {}

  std::string label;  // shapes and arguments, printed with every failure
  Tensors inputs;
  std::any arguments;     // the case's own argument struct (dims, flags, options), if it has one
  bool gradcheck = true;  // false where inputs sit on a kink (max ties, x on a clamp bound, x near 0 of log1mexp)

  template <typename Arguments>
  const Arguments& args() const {
    const Arguments* held = std::any_cast<Arguments>(&arguments);
    if (held == nullptr) throw std::logic_error("op case call '" + label + "' holds arguments of another type");
    return *held;
  }
};

using ForwardFn = std::function<Tensors(const OpCall& call, const Tensors& inputs)>;
// The tolerance of a call in the dtype under test, for output number `index` (forward) or for
// the gradient of the input at position `index` (backward).
using ToleranceFn = std::function<Tolerance(DType dtype, const OpCall& call, size_t index)>;

struct OpCase {
  std::string name;          // the public op, as in ops/ops.h: "ops::sum", "ops::unary(exp)"
  std::vector<DType> dtypes;  // every dtype the op accepts; each suite tests those its device has
  // The calls for one dtype. The generator is seeded from the case's name and the dtype, so every
  // suite sees the same calls. with_large adds, last (so the others stay the same), calls big
  // enough for the CUDA kernels' multi-block paths: only the CUDA suite asks for them (the naive
  // oracles would make the CPU suite slow; tests/ops/test_large_inputs.cpp covers the CPU's
  // threaded paths).
  std::function<std::vector<OpCall>(DType dtype, Generator& gen, bool with_large)> calls;

  // The lamina op on (possibly re-laid-out) inputs: every output of the op, the main one first.
  ForwardFn forward;
  // The f64 oracle on the same inputs; compared with the first oracle.size() outputs of forward.
  ForwardFn oracle;
  ToleranceFn tolerance;  // of forward against the oracle, which sees the same (rounded) inputs
  // The dtype of each output of forward for a dtype under test; unset: every output has that dtype.
  std::function<std::vector<DType>(DType dtype)> output_dtypes;
  // Outputs identical bit for bit in every layout (the kernel reads strides or copies the input
  // contiguous first; it never adds in another order).
  bool layout_independent = false;
  // The op may return an input itself rather than a fresh contiguous tensor (sum_to to the
  // input's own shape); every other op's outputs must be contiguous.
  bool may_return_input = false;
  // How an input is laid out; unset: in_layout (ops/op_cases.h). matmul transposes its last two dims.
  std::function<Tensor(const Tensor& input, Layout layout)> relayout;

  // The inputs that get gradients (in backward and gradcheck), by position; indices past a
  // call's inputs are skipped. Empty: every floating input.
  std::vector<size_t> grad_inputs;
  // Optional: the raw backward op (ops/ops.h): the gradient of each grad input, from the inputs,
  // forward's outputs and the upstream gradient of the main output. An empty result means the
  // call has no raw backward (a scalar form, say). Floating dtypes only.
  std::function<Tensors(const OpCall& call, const Tensors& inputs, const Tensors& outputs, const Tensor& grad_out)>
      backward;
  // Of backward in a dtype against backward in f64 on the same values; unset: `tolerance`.
  ToleranceFn backward_tolerance;
  // Optional: the function of autograd/functions.h, for gradcheck on the f64 calls.
  std::function<Tensor(const OpCall& call, const Tensors& inputs)> differentiable;

  // CUDA against the CPU; unset: elementwise_tolerance(dtype) (ops/op_cases.h) doubled.
  ToleranceFn cuda_tolerance;
  // CUDA backward against the CPU backward; unset: cuda_tolerance doubled.
  ToleranceFn cuda_backward_tolerance;
};

// Every case, family by family (defined in the family files).
const std::vector<OpCase>& all_cases();
std::vector<OpCase> elementwise_cases();
std::vector<OpCase> reduce_cases();
std::vector<OpCase> matmul_cases();
std::vector<OpCase> nn_cases();
std::vector<OpCase> index_cases();
std::vector<OpCase> logprob_cases();

// ---- what the suites share

// The seed of a case's calls for a dtype: stable across runs, suites and case order.
uint64_t call_seed(const OpCase& op_case, DType dtype);
std::vector<OpCall> calls_for(const OpCase& op_case, DType dtype, bool with_large = false);

// The inputs of a call, input i in layout kLayouts[(shift + i) % 4], so that over the four shifts
// every input takes every layout and no two inputs share one. The name lists the layouts.
struct LaidOut {
  Tensors inputs;
  std::string name;
};
LaidOut lay_out(const OpCase& op_case, const Tensors& inputs, size_t shift);

// The positions of a call's grad inputs (see OpCase::grad_inputs).
std::vector<size_t> grad_input_positions(const OpCase& op_case, const OpCall& call);

// The floating inputs as contiguous f64 copies, the others (indices, masks) as they are: the
// inputs of the f64 backward that a low-precision backward is compared with.
Tensors in_f64(const Tensors& inputs);

// The upstream gradient of an output: seeded uniform values in its dtype and shape.
Tensor upstream_gradient(const Tensor& output, Generator& gen);

// "[2, 3] x [3]": the shapes of a list of tensors, for labels.
std::string shapes_label(const Tensors& tensors);
// A number as a label prints it: 0.75, -1e+10.
std::string number_label(double value);

}  // namespace lamina::testing::op_cases
