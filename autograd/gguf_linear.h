// The differentiable product with a frozen weight kept in a GGUF block format (Q8_0, Q4_0, Q4_1,
// Q4_K, Q6_K): a model read from a GGUF file computes with its weights as stored, and LoRA
// adapters can train over them as over a 4-bit base.
#pragma once

#include "ops/gguf_matmul.h"
#include "tensor/tensor.h"

namespace lamina {

// x [..., in] (f32) -> x W^T [..., out] (ops::gguf_matmul: activations rounded to 8 bits per
// block). Its backward gives x the gradient grad @ W (ops::gguf_matmul_input_grad, W exact) and
// nothing to the weight, which is not a tensor of the graph.
Tensor linear_gguf(const Tensor& x, const ops::GgufWeight& w);

}  // namespace lamina
