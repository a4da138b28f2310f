#include "autograd/gradcheck.h"

#include <cmath>

#include "autograd/autograd.h"
#include "ops/ops.h"

namespace lamina::autograd {

GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options) {
  // Owned, contiguous f64 copies that the finite differences may poke.
  std::vector<Tensor> leaves;
  for (const Tensor& input : inputs) {
    if (input.defined() && input.dtype() == DType::f64) {
      Tensor leaf = ops::clone(input);
      leaf.set_requires_grad(true);
      leaves.push_back(leaf);
    } else {
      leaves.push_back(input);
    }
  }
  Generator generator(options.seed);
  Tensor out = fn(leaves);
  LAMINA_CHECK(out.dtype() == DType::f64, "gradcheck: the function must return f64, got ", dtype_name(out.dtype()));
  const Tensor projection = uniform(out.shape(), -1.0, 1.0, generator, DType::f64);
  out.backward(projection);

  auto objective = [&]() {
    NoGradGuard no_grad;
    return ops::sum(ops::mul(fn(leaves), projection)).item<double>();
  };

  GradcheckResult result;
  double worst_violation = 0;
  for (size_t i = 0; i < leaves.size(); ++i) {
    Tensor& leaf = leaves[i];
    if (!leaf.defined() || leaf.dtype() != DType::f64) continue;
    const Tensor analytic_grad = leaf.grad().defined() ? ops::contiguous(leaf.grad()) : zeros(leaf.shape(), DType::f64);
    const std::vector<double> analytic = analytic_grad.to_vector<double>();
    double* values = leaf.data<double>();
    for (int64_t j = 0; j < leaf.numel(); ++j) {
      const double original = values[j];
      values[j] = original + options.eps;
      const double plus = objective();
      values[j] = original - options.eps;
      const double minus = objective();
      values[j] = original;
      const double numeric = (plus - minus) / (2 * options.eps);
      const double abs_error = std::abs(analytic[size_t(j)] - numeric);
      const double rel_error = abs_error / std::max(std::abs(numeric), 1e-12);
      result.max_abs_error = std::max(result.max_abs_error, abs_error);
      result.max_rel_error = std::max(result.max_rel_error, rel_error);
      const double allowed = options.atol + options.rtol * std::abs(numeric);
      const double violation = abs_error - allowed;
      if (violation > 0 || std::isnan(abs_error)) {
        result.passed = false;
        if (violation > worst_violation || std::isnan(abs_error) || result.worst.empty()) {
          worst_violation = violation;
          result.worst = str_cat("input ", i, " ", leaf.shape(), " element ", j, ": analytic ", analytic[size_t(j)],
                                 ", numeric ", numeric);
        }
      }
    }
  }
  return result;
}

}  // namespace lamina::autograd
