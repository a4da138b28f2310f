// The CPU kernels against the f64 oracles, over every op case of tests/op_cases/: each case x
// dtype x call x layout. Each output must match the oracle within the case's tolerance, have the
// dtype the case names and be contiguous; layout-independent cases must give the same bits in
// every layout. Each low-precision backward must match the backward in f64 on the same values
// (gradcheck, in tests/autograd/test_op_gradcheck.cpp, holds the f64 backward to finite
// differences). A failure names the op, the dtype, the call and the layouts.
#include <set>

#include "op_cases/op_case.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::op_cases;

namespace {

const Tolerance kExact{0, 0};

// Runs `body`; an exception fails the check with `context` instead of ending the test case.
template <typename Body>
bool without_throwing(const std::string& context, Body&& body) {
  try {
    body();
    return true;
  } catch (const std::exception& error) {
    FAIL_CHECK(context << " threw: " << error.what());
    return false;
  }
}

std::vector<DType> expected_output_dtypes(const OpCase& op_case, DType dtype, size_t count) {
  if (op_case.output_dtypes) return op_case.output_dtypes(dtype);
  return std::vector<DType>(count, dtype);
}

void check_forward(const OpCase& op_case, DType dtype) {
  for (const OpCall& call : calls_for(op_case, dtype)) {
    const std::string context = op_case.name + " " + name(dtype) + " " + call.label;
    Tensors expected, baseline;
    if (!without_throwing(context + " (oracle)", [&] { expected = op_case.oracle(call, call.inputs); })) continue;
    if (!without_throwing(context, [&] { baseline = op_case.forward(call, call.inputs); })) continue;
    for (size_t shift = 0; shift < std::size(kLayouts); ++shift) {
      const LaidOut laid = lay_out(op_case, call.inputs, shift);
      INFO(context << ", layout " << laid.name);
      Tensors outputs;
      if (!without_throwing(context + ", layout " + laid.name, [&] { outputs = op_case.forward(call, laid.inputs); }))
        continue;
      REQUIRE(outputs.size() >= expected.size());
      const std::vector<DType> dtypes = expected_output_dtypes(op_case, dtype, outputs.size());
      REQUIRE(dtypes.size() == outputs.size());
      for (size_t i = 0; i < outputs.size(); ++i) {
        INFO("output " << i);
        CHECK(outputs[i].dtype() == dtypes[i]);
        if (!op_case.may_return_input) CHECK(outputs[i].is_contiguous());
        if (i < expected.size()) CHECK_CLOSE(outputs[i], expected[i], op_case.tolerance(dtype, call, i));
        if (op_case.layout_independent) CHECK_CLOSE(outputs[i], baseline[i], kExact);
      }
    }
  }
}

void check_backward(const OpCase& op_case, DType dtype) {
  Generator gen(call_seed(op_case, dtype) + 1);
  for (const OpCall& call : calls_for(op_case, dtype)) {
    const std::string context = op_case.name + " backward " + name(dtype) + " " + call.label;
    const std::vector<size_t> positions = grad_input_positions(op_case, call);
    Tensors expected;
    Tensor grad;
    if (!without_throwing(context + " (in f64)", [&] {
          const Tensors inputs64 = in_f64(call.inputs);
          grad = upstream_gradient(op_case.forward(call, call.inputs)[0], gen);
          expected = op_case.backward(call, inputs64, op_case.forward(call, inputs64), ops::cast(grad, DType::f64));
        }))
      continue;
    if (expected.empty()) continue;  // no raw backward for this call
    REQUIRE(expected.size() == positions.size());
    for (size_t shift = 0; shift < std::size(kLayouts); ++shift) {
      const LaidOut laid = lay_out(op_case, call.inputs, shift);
      const Tensor grad_laid = in_layout(grad, kLayouts[(shift + 2) % std::size(kLayouts)]);
      INFO(context << ", layout " << laid.name << ", grad " << name(kLayouts[(shift + 2) % std::size(kLayouts)]));
      Tensors grads;
      if (!without_throwing(context + ", layout " + laid.name,
                            [&] { grads = op_case.backward(call, laid.inputs, op_case.forward(call, laid.inputs), grad_laid); }))
        continue;
      REQUIRE(grads.size() == positions.size());
      for (size_t j = 0; j < grads.size(); ++j) {
        INFO("gradient of input " << positions[j]);
        CHECK(grads[j].dtype() == call.inputs[positions[j]].dtype());
        const Tolerance tol = op_case.backward_tolerance ? op_case.backward_tolerance(dtype, call, positions[j])
                                                         : op_case.tolerance(dtype, call, 0);
        CHECK_CLOSE(grads[j], expected[j], tol);
      }
    }
  }
}

}  // namespace

TEST_CASE("op cases: every case is complete and has calls in every dtype") {
  std::set<std::string> names;
  for (const OpCase& op_case : all_cases()) {
    INFO(op_case.name);
    CHECK(names.insert(op_case.name).second);
    CHECK(!op_case.dtypes.empty());
    CHECK((op_case.calls && op_case.forward && op_case.oracle && op_case.tolerance));
    if (op_case.differentiable || op_case.backward) {
      const auto& dtypes = op_case.dtypes;
      CHECK(std::find(dtypes.begin(), dtypes.end(), DType::f64) != dtypes.end());  // gradcheck runs in f64
    }
    for (DType dtype : op_case.dtypes) {
      INFO(name(dtype));
      CHECK(!calls_for(op_case, dtype).empty());
    }
    // The large calls (built here, run only by the CUDA suite) come after the others and leave
    // them as they are.
    const std::vector<OpCall> calls = calls_for(op_case, op_case.dtypes[0]);
    const std::vector<OpCall> with_large = calls_for(op_case, op_case.dtypes[0], true);
    REQUIRE(with_large.size() >= calls.size());
    for (size_t i = 0; i < calls.size(); ++i) CHECK(with_large[i].label == calls[i].label);
  }
  // The families every suite iterates: a case lost from the list would be tested nowhere.
  for (const char* op : {"ops::unary(exp)", "ops::binary(pow)", "ops::compare(ge)", "ops::where", "ops::clamp", "ops::sum",
                         "ops::argmax", "ops::var", "ops::matmul", "ops::log_softmax", "ops::rms_norm", "ops::rope",
                         "ops::swiglu", "ops::embedding", "ops::cross_entropy", "ops::attention", "ops::index_select",
                         "ops::gather", "ops::scatter_add", "ops::cat", "ops::token_logprobs", "ops::log1mexp"}) {
    INFO(op);
    CHECK(names.count(op) == 1);
  }
}

TEST_CASE("op cases: every CPU kernel matches its f64 oracle in every dtype, call and layout") {
  for (const OpCase& op_case : all_cases())
    for (DType dtype : op_case.dtypes) check_forward(op_case, dtype);
}

TEST_CASE("op cases: every backward in every dtype and layout matches the f64 backward on the same values") {
  for (const OpCase& op_case : all_cases()) {
    if (!op_case.backward) continue;
    for (DType dtype : op_case.dtypes)
      if (is_floating(dtype)) check_backward(op_case, dtype);
  }
}
