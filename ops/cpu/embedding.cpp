// Embedding lookup and its adjoint.
//   forward:  out[n, :] = weight[ids[n], :]
//   backward: dweight[v, :] = sum of dout[n, :] over the n with ids[n] = v
// The backward splits the columns (not the tokens) across threads, so every row of dweight
// accumulates its tokens in token order whatever the thread count.
#include <cstring>

#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void embedding(const Tensor& out, const Tensor& weight, const Tensor& ids) {
  const int64_t width = weight.size(1), tokens = ids.numel();
  const size_t row_bytes = size_t(width) * weight.element_size();
  visit_index(ids.dtype(), "embedding", [&](auto tag) {
    using I = typename decltype(tag)::type;
    const I* id = static_cast<const I*>(ids.raw_data());
    const char* table = static_cast<const char*>(weight.raw_data());
    char* output = static_cast<char*>(out.raw_data());
    for_each_row(tokens, width, [&](int64_t n) {
      std::memcpy(output + size_t(n) * row_bytes, table + size_t(id[n]) * row_bytes, row_bytes);
    });
  });
}

void embedding_backward(const Tensor& grad_weight, const Tensor& grad_out, const Tensor& ids) {
  const int64_t width = grad_weight.size(1), tokens = ids.numel();
  visit_floating(grad_weight.dtype(), "embedding_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    visit_index(ids.dtype(), "embedding_backward", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* id = static_cast<const I*>(ids.raw_data());
      const T* g = static_cast<const T*>(grad_out.raw_data());
      T* dw = static_cast<T*>(grad_weight.raw_data());
      const int64_t grain = std::max<int64_t>(16, kElementwiseGrain / std::max<int64_t>(1, tokens));
      parallel_for(0, width, grain, [&](int64_t begin, int64_t end) {
        for (int64_t n = 0; n < tokens; ++n) {
          T* row = dw + id[n] * width;
          const T* src = g + n * width;
          for (int64_t j = begin; j < end; ++j) row[j] = T(load(row[j]) + load(src[j]));
        }
      });
    });
  });
}

}  // namespace lamina::ops::cpu
