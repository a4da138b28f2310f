// linear_4bit: the fused 4-bit product and its input gradient (autograd/quant4.h).
#include "autograd/quant4.h"

#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;

Tensor linear_4bit(const Tensor& x, const ops::Quantized4Bit& q) {
  const profiler::Scope scope("forward:", "linear_4bit");
  Tensor out = ops::matmul_4bit(x, q);
  // The rule keeps the 4-bit weight (codes and scales share their storage with q; nothing is
  // dequantized until backward runs, and then only a tile at a time).
  autograd::record("linear_4bit", {&out}, {x}, [q, dtype = x.dtype()](const Grads& g) {
    Tensor grad_x = ops::matmul_4bit_input_grad(g[0], q);
    return Grads{grad_x.dtype() == dtype ? grad_x : ops::cast(grad_x, dtype)};
  });
  return out;
}

}  // namespace lamina
