// linear_gguf: the product with a GGUF-quantized weight and its input gradient (autograd/gguf_linear.h).
#include "autograd/gguf_linear.h"

#include "autograd/functions/common.h"

namespace lamina {

using autograd::Grads;

Tensor linear_gguf(const Tensor& x, const ops::GgufWeight& w) {
  const profiler::Scope scope("forward:", "linear_gguf");
  Tensor out = ops::gguf_matmul(x, w.matrix);
  // The rule holds the weight's owner, so the bytes outlive the layer if the graph does.
  autograd::record("linear_gguf", {&out}, {x}, [w](const Grads& g) {
    return Grads{ops::gguf_matmul_input_grad(g[0].to(DType::f32), w.matrix)};
  });
  return out;
}

}  // namespace lamina
