// CPU row kernels of the fused LM head + cross-entropy; the derivation sits above
// ops::linear_cross_entropy in ops/linear_cross_entropy.cpp. Rows are spread over the threads
// like every row kernel (rows.h); each row's statistics are f32 (f64 for f64), whatever the
// dtype of the logits chunk (a bf16 chunk is upcast element by element as it is read).
#include "ops/cpu/linear_cross_entropy.h"

#include "ops/cpu/rows.h"

namespace lamina::ops::cpu {

void linear_cross_entropy_update(const Tensor& running_max, const Tensor& running_sum, const Tensor& target_logit,
                                 const Tensor& logits, const Tensor& targets, int64_t first_column,
                                 int64_t ignore_index) {
  const int64_t width = logits.size(-1), rows = logits.size(0);
  visit_floating(logits.dtype(), "linear_cross_entropy", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(targets.dtype(), "linear_cross_entropy", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const T* x = static_cast<const T*>(logits.raw_data());
      const I* target = static_cast<const I*>(targets.raw_data());
      C* peak = static_cast<C*>(running_max.raw_data());
      C* total = static_cast<C*>(running_sum.raw_data());
      C* picked = static_cast<C*>(target_logit.raw_data());
      for_each_row(rows, width, [&](int64_t r) {
        const T* row = x + r * width;
        const C new_peak = std::max(peak[r], row_max(row, width));
        // The first chunk finds peak = -inf: its old sum is 0 and must stay 0, not 0 * exp(nan).
        const C rescaled = peak[r] == C(-INFINITY) ? C(0) : total[r] * std::exp(peak[r] - new_peak);
        total[r] = rescaled + row_sum_exp(row, width, new_peak);
        peak[r] = new_peak;
        const int64_t column = int64_t(target[r]) - first_column;
        if (int64_t(target[r]) != ignore_index && column >= 0 && column < width) picked[r] = load(row[column]);
      });
    });
  });
}

namespace {

// C: the statistics' type, float or double.
template <typename C>
void finish_rows(const Tensor& losses, const Tensor& lse, const Tensor& running_max, const Tensor& running_sum,
                 const Tensor& target_logit, const Tensor& targets, int64_t ignore_index) {
  visit_index(targets.dtype(), "linear_cross_entropy", [&](auto index_tag) {
    using I = typename decltype(index_tag)::type;
    const I* target = static_cast<const I*>(targets.raw_data());
    const C* peak = static_cast<const C*>(running_max.raw_data());
    const C* total = static_cast<const C*>(running_sum.raw_data());
    const C* picked = static_cast<const C*>(target_logit.raw_data());
    C* loss = static_cast<C*>(losses.raw_data());
    C* row_lse = static_cast<C*>(lse.raw_data());
    for (int64_t r = 0; r < losses.numel(); ++r) {
      row_lse[r] = peak[r] + std::log(total[r]);
      loss[r] = int64_t(target[r]) == ignore_index ? C(0) : row_lse[r] - picked[r];
    }
  });
}

}  // namespace

void linear_cross_entropy_finish(const Tensor& losses, const Tensor& lse, const Tensor& running_max,
                                 const Tensor& running_sum, const Tensor& target_logit, const Tensor& targets,
                                 int64_t ignore_index) {
  if (losses.dtype() == DType::f64)
    finish_rows<double>(losses, lse, running_max, running_sum, target_logit, targets, ignore_index);
  else
    finish_rows<float>(losses, lse, running_max, running_sum, target_logit, targets, ignore_index);
}

void linear_cross_entropy_chunk_gradient(const Tensor& logits, const Tensor& grad_losses, const Tensor& lse,
                                         const Tensor& targets, int64_t first_column, int64_t ignore_index) {
  const int64_t width = logits.size(-1), rows = logits.size(0);
  visit_floating(logits.dtype(), "linear_cross_entropy_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    visit_index(targets.dtype(), "linear_cross_entropy_backward", [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      T* x = static_cast<T*>(logits.raw_data());
      const I* target = static_cast<const I*>(targets.raw_data());
      const C* g = static_cast<const C*>(grad_losses.raw_data());
      const C* row_lse = static_cast<const C*>(lse.raw_data());
      for_each_row(rows, width, [&](int64_t r) {
        T* row = x + r * width;
        if (int64_t(target[r]) == ignore_index) {
          for (int64_t j = 0; j < width; ++j) row[j] = T(C(0));
          return;
        }
        const C scale = g[r], shift = row_lse[r];
        // The target's logit is read before the row is overwritten: its p - 1 is then rounded
        // once (a bf16 chunk), and the main loop stays free of a branch.
        const int64_t column = int64_t(target[r]) - first_column;
        const bool target_here = column >= 0 && column < width;
        const C target_value = target_here ? load(row[column]) : C(0);
        for (int64_t j = 0; j < width; ++j) row[j] = T(scale * fast_exp(load(row[j]) - shift));
        if (target_here) row[column] = T(scale * (fast_exp(target_value - shift) - C(1)));
      });
    });
  });
}

}  // namespace lamina::ops::cpu
