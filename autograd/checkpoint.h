// Activation checkpointing: run a function without keeping its activations, and run it
// again during backward to get them (trading compute for memory, one block at a time).
#pragma once

#include <functional>
#include <vector>

#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace lamina::autograd {

using CheckpointFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// fn must compute the same thing when re-run. `params` are the trainable tensors fn reads
// besides its inputs (e.g. a module's parameters): their gradients accumulate during the
// re-run. When fn draws random numbers from `generator`, pass it: the re-run restarts it
// from the state of the first run, so dropout masks repeat. It must outlive the backward.
std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const std::vector<Tensor>& params = {}, Generator* generator = nullptr);

}  // namespace lamina::autograd
