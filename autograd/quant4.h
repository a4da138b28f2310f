// The differentiable product with a frozen 4-bit weight: the base layer of QLoRA.
#pragma once

#include "ops/quant4.h"
#include "tensor/tensor.h"

namespace lamina {

// x [..., in] -> x @ W^T [..., out] with W the 4-bit weight q (ops::matmul_4bit). Its backward
// gives x the gradient grad @ W (ops::matmul_4bit_input_grad, fused the same way) and nothing
// to the base: a Quantized4Bit is not a tensor of the graph, so it can never receive one.
Tensor linear_4bit(const Tensor& x, const ops::Quantized4Bit& q);

}  // namespace lamina
