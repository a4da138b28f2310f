// The differentiable function of every op case (tests/op_cases/) against central differences:
// gradcheck on each f64 call of the case, the case's grad inputs as the variables and the other
// inputs (indices, masks, conditions) held fixed. Calls marked as sitting on a kink, and calls
// too large for finite differences to stay quick, are left out; every differentiable case must
// keep at least one call.
#include "autograd/gradcheck.h"
#include "op_cases/op_case.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::op_cases;

namespace {

// Finite differences evaluate the function twice per input element.
constexpr int64_t kMaxGradcheckElements = 2048;

}  // namespace

TEST_CASE("op cases: every differentiable function passes gradcheck on its f64 calls") {
  for (const OpCase& op_case : all_cases()) {
    if (!op_case.differentiable) continue;
    int checked = 0;
    for (const OpCall& call : calls_for(op_case, DType::f64)) {
      if (!call.gradcheck) continue;
      const std::vector<size_t> positions = grad_input_positions(op_case, call);
      std::vector<Tensor> variables;
      int64_t elements = 0;
      for (size_t position : positions) {
        variables.push_back(call.inputs[position]);
        elements += call.inputs[position].numel();
      }
      if (elements == 0 || elements > kMaxGradcheckElements) continue;
      const auto function = [&](const std::vector<Tensor>& values) {
        Tensors inputs = call.inputs;
        for (size_t k = 0; k < positions.size(); ++k) inputs[positions[k]] = values[k];
        return op_case.differentiable(call, inputs);
      };
      autograd::GradcheckResult result;
      try {
        result = autograd::gradcheck(function, variables);
      } catch (const std::exception& error) {
        FAIL_CHECK(op_case.name << " " << call.label << " threw: " << error.what());
        continue;
      }
      INFO(op_case.name << " " << call.label << ": max abs err " << result.max_abs_error << ", max rel err "
                        << result.max_rel_error << "; " << result.worst);
      CHECK(result.passed);
      ++checked;
    }
    INFO(op_case.name);
    CHECK_MESSAGE(checked > 0, "no call of the case was gradchecked");
  }
}
