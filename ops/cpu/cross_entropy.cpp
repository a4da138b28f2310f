// Fused cross-entropy over rows of logits [N, V] with integer targets [N].
//   loss_n = lse_n - x[n, t_n],  lse_n = log(sum_j exp(x[n, j]))
//   dx[n, j] = g_n (exp(x[n, j] - lse_n) - [j = t_n])
// Rows whose target is ignore_index get loss 0 and gradient 0. The softmax is never stored:
// the backward recomputes it from the saved lse, one row at a time.
#include "ops/cpu/kernels.h"
#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void cross_entropy(const Tensor& losses, const Tensor& lse, const Tensor& logits, const Tensor& targets,
                   int64_t ignore_index) {
  const int64_t vocab = logits.size(-1), rows = logits.numel() / std::max<int64_t>(1, vocab);
  visit_floating(logits.dtype(), "cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(targets.dtype(), "cross_entropy", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* x = static_cast<const T*>(logits.raw_data());
      const I* target = static_cast<const I*>(targets.raw_data());
      C* loss = static_cast<C*>(losses.raw_data());
      C* row_lse = static_cast<C*>(lse.raw_data());
      for_each_row(rows, vocab, [&](int64_t n) {
        const T* row = x + n * vocab;
        const C peak = row_max(row, vocab);
        const C log_total = peak + std::log(row_sum_exp(row, vocab, peak));
        row_lse[n] = log_total;
        loss[n] = int64_t(target[n]) == ignore_index ? C(0) : log_total - load(row[target[n]]);
      });
    });
  });
}

void cross_entropy_backward(const Tensor& grad_logits, const Tensor& grad_losses, const Tensor& logits,
                            const Tensor& targets, const Tensor& lse, int64_t ignore_index) {
  const int64_t vocab = logits.size(-1), rows = logits.numel() / std::max<int64_t>(1, vocab);
  visit_floating(logits.dtype(), "cross_entropy_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(targets.dtype(), "cross_entropy_backward", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* x = static_cast<const T*>(logits.raw_data());
      const I* target = static_cast<const I*>(targets.raw_data());
      const C* g = static_cast<const C*>(grad_losses.raw_data());
      const C* row_lse = static_cast<const C*>(lse.raw_data());
      T* dx = static_cast<T*>(grad_logits.raw_data());
      for_each_row(rows, vocab, [&](int64_t n) {
        const T* row = x + n * vocab;
        T* out = dx + n * vocab;
        if (int64_t(target[n]) == ignore_index) {
          for (int64_t j = 0; j < vocab; ++j) out[j] = T(C(0));
          return;
        }
        const C scale = g[n], shift = row_lse[n];
        for (int64_t j = 0; j < vocab; ++j) out[j] = T(scale * fast_exp(load(row[j]) - shift));
        out[target[n]] = T(load(out[target[n]]) - scale);
      });
    });
  });
}

}  // namespace lamina::ops::cpu
