// The case list and the pieces of the op-case harness that every suite shares.
#include "op_cases/op_case.h"

#include <sstream>

namespace lamina::testing::op_cases {

const std::vector<OpCase>& all_cases() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> all;
    for (auto family : {elementwise_cases, reduce_cases, matmul_cases, nn_cases, index_cases, logprob_cases}) {
      std::vector<OpCase> some = family();
      for (OpCase& op_case : some) all.push_back(std::move(op_case));
    }
    return all;
  }();
  return cases;
}

uint64_t call_seed(const OpCase& op_case, DType dtype) {
  // FNV-1a over the name: independent of the order of the cases, so adding one changes no other's calls.
  uint64_t hash = 14695981039346656037ull;
  for (char c : op_case.name) hash = (hash ^ uint64_t(static_cast<unsigned char>(c))) * 1099511628211ull;
  return hash ^ (uint64_t(dtype) + 1) * 0x9E3779B97F4A7C15ull;
}

std::vector<OpCall> calls_for(const OpCase& op_case, DType dtype, bool with_large) {
  Generator gen(call_seed(op_case, dtype));
  return op_case.calls(dtype, gen, with_large);
}

LaidOut lay_out(const OpCase& op_case, const Tensors& inputs, size_t shift) {
  LaidOut out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Layout layout = kLayouts[(shift + i) % std::size(kLayouts)];
    out.inputs.push_back(op_case.relayout ? op_case.relayout(inputs[i], layout) : in_layout(inputs[i], layout));
    if (i > 0) out.name += '/';
    out.name += name(layout);
  }
  return out;
}

std::vector<size_t> grad_input_positions(const OpCase& op_case, const OpCall& call) {
  std::vector<size_t> positions;
  if (op_case.grad_inputs.empty()) {
    for (size_t i = 0; i < call.inputs.size(); ++i)
      if (is_floating(call.inputs[i].dtype())) positions.push_back(i);
  } else {
    for (size_t i : op_case.grad_inputs)
      if (i < call.inputs.size()) positions.push_back(i);
  }
  return positions;
}

Tensors in_f64(const Tensors& inputs) {
  Tensors out;
  for (const Tensor& t : inputs) out.push_back(is_floating(t.dtype()) ? ops::cast(t, DType::f64) : t);
  return out;
}

Tensor upstream_gradient(const Tensor& output, Generator& gen) {
  return uniform(output.shape(), -1.0, 1.0, gen, output.dtype());
}

std::string shapes_label(const Tensors& tensors) {
  std::ostringstream out;
  for (size_t i = 0; i < tensors.size(); ++i) out << (i == 0 ? "" : " x ") << tensors[i].shape();
  return out.str();
}

std::string number_label(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

}  // namespace lamina::testing::op_cases
