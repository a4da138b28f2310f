// Preference-loss inputs and results as JSON, for `lamina preference-loss` and for tests.
//
// An inputs document is one object keyed by input name (TRL's names where TRL has them):
//   sequence inputs   an array over the batch: [-12.0, -20.0]; labels as true/false or 1/0
//   token inputs      one array per example, ragged: [[-0.5, -1.0], [-2.0, -0.3, -1.5]]; the mask
//                     the loss needs (completion_mask, chosen_mask, ...) is derived from the row
//                     lengths, and token arrays sharing a mask must agree on them
//   scalar inputs     a number
// Results are {"loss": x, "grad": {input: gradient, ...}, "metrics": {...}}, the gradient of every
// policy input present, shaped like the input (ragged for token inputs).
#pragma once

#include <string>
#include <vector>

#include "tensor/io/json.h"
#include "train/losses/loss.h"

namespace lamina::train {

struct JsonInputs {
  LossInputs inputs;                  // tensors of `dtype`, masks bool
  std::vector<std::string> warnings;  // keys this loss ignores that other losses take
};

// Throws a lamina::Error naming `source`, the key and the position for any malformed entry,
// a missing required input, a batch-size mismatch or a key no loss takes.
JsonInputs inputs_from_json(const json::Value& document, const LossDefinition& definition, const std::string& source,
                            DType dtype = DType::f64);

// The result as JSON; `inputs` must be the tensors the loss ran on (their .grad() is read).
// A non-finite number is written as null.
json::Value result_to_json(const LossResult& result, const LossDefinition& definition, const LossInputs& inputs);

// A tensor as JSON: [B] -> array, [B, T] with a mask -> ragged arrays of the kept entries
// (left-aligned rows, as inputs_from_json builds them).
json::Value tensor_to_json(const Tensor& values, const Tensor* mask = nullptr);

}  // namespace lamina::train
