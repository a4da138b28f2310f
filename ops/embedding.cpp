// Embedding: checks (including every id in range) and allocation; kernels in
// ops/cpu/embedding.cpp and ops/cuda/embedding.cu.
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {
namespace {

void check_ids_in_range(const char* op, const Tensor& ids, int64_t num_embeddings) {
  const std::vector<int64_t> values = ids.to_vector<int64_t>();
  for (size_t n = 0; n < values.size(); ++n)
    LAMINA_CHECK(values[n] >= 0 && values[n] < num_embeddings, op, ": id ", values[n], " at flat position ", n,
                 " is out of range for ", num_embeddings, " embeddings");
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const Device device = check_device("embedding", {{"weight", &weight}, {"ids", &ids}});
  check_dim("embedding", "weight", weight, 2);
  check_index_dtype("embedding", "ids", ids);
  check_ids_in_range("embedding", ids, weight.size(0));
  Shape out_shape = ids.shape();
  out_shape.push_back(weight.size(1));
  Tensor out = Tensor::empty(out_shape, weight.dtype(), device);
  LAMINA_DISPATCH(device, embedding(out, contiguous(weight), contiguous(ids)));
  return out;
}

Tensor embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t num_embeddings) {
  check_device("embedding_backward", {{"grad_out", &grad_out}, {"ids", &ids}});
  check_floating("embedding_backward", "grad_out", grad_out);
  check_index_dtype("embedding_backward", "ids", ids);
  Shape expected = ids.shape();
  LAMINA_CHECK(grad_out.dim() == ids.dim() + 1, "embedding_backward: grad_out ", grad_out.shape(),
               " must be ids shape ", ids.shape(), " plus an embedding dim");
  expected.push_back(grad_out.size(-1));
  check_shape("embedding_backward", "grad_out", grad_out, expected);
  check_ids_in_range("embedding_backward", ids, num_embeddings);
  Tensor grad_weight = zeros({num_embeddings, grad_out.size(-1)}, grad_out.dtype(), grad_out.device());
  LAMINA_DISPATCH(grad_weight.device(), embedding_backward(grad_weight, contiguous(grad_out), contiguous(ids)));
  return grad_weight;
}

}  // namespace lamina::ops
