// Gradient checking in f64: analytic gradients from backward() against central differences.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace lamina::autograd {

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-6;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-5;
  uint64_t seed = 0;   // for the random projection of the output
};

struct GradcheckResult {
  bool passed = true;
  double max_abs_error = 0;
  double max_rel_error = 0;
  std::string worst;  // where the largest violation happened, with both values
};

// Checks d<fn(inputs), v>/d(input) for a random v, for every f64 input (other inputs, e.g.
// integer ids, are passed through unchanged). fn must be deterministic.
GradcheckResult gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                          const std::vector<Tensor>& inputs, const GradcheckOptions& options = {});

}  // namespace lamina::autograd
