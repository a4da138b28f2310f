// Small pieces every loss family uses: detached values, constants in the inputs' dtype,
// masked token reductions, the batch mean, and the numerically careful primitives of
// preference-losses.md §1.5 that autograd/functions.h does not already provide.
#pragma once

#include <string>
#include <vector>

#include "autograd/functions.h"
#include "train/losses/loss.h"

namespace lamina::train {

// The values of t as doubles, outside the graph (for statistics that carry no gradient).
std::vector<double> values_of(const Tensor& t);
double mean_of(const std::vector<double>& values);
// A [n] tensor (or a scalar) of `like`'s dtype holding `values`; no gradient.
Tensor tensor_like(const std::vector<double>& values, const Tensor& like);
Tensor scalar_like(double value, const Tensor& like);

// x where mask is true, 0 elsewhere (also where x holds NaN or inf padding).
Tensor masked(const Tensor& x, const Tensor& mask);
// [B, T] -> [B]: the sum over the kept tokens of each row.
Tensor masked_row_sum(const Tensor& x, const Tensor& mask);
// Kept tokens per row of a bool mask [B, T].
std::vector<double> row_counts(const Tensor& mask);

// exp with its exponent capped (TRL caps at 80 in f32), for exponentials of log-ratios.
Tensor capped_exp(const Tensor& x, double cap = 80.0);
// log sigma(x) and softplus exist in autograd/functions.h; 1 - sigma(x) is sigma(-x).
inline Tensor one_minus_sigmoid(const Tensor& x) { return sigmoid(neg(x)); }

// The result of a loss that is the mean of per-example losses.
LossResult mean_result(const Tensor& per_example, Metrics metrics);
// The result of a batch-level loss (no per-example decomposition).
LossResult batch_result(const Tensor& loss, Metrics metrics);

// Throws "loss '<name>': <message>" when `condition` fails: cross-parameter and
// input-dependent checks that a single ParamSpec range cannot express.
void require(bool condition, const Hyperparameters& params, const std::string& message);

}  // namespace lamina::train
