// Fused LM head + token cross-entropy: hidden [..., d], weight [V, d], targets [...] -> the
// losses of logits = hidden weight^T without ever holding the [N, V] logits (N = rows of
// hidden) or their gradient. Checks and the chunk loop live here; the row kernels in
// ops/cpu/linear_cross_entropy.cpp; the GEMMs are ops::matmul's.
//
// Forward, over vocabulary chunks c = [v0, v1) of the rows that have a target:
//   z_c = H W_c^T                                 [R, |c|]  (one chunk at a time)
//   m <- max(m, max_j z_c),  s <- s exp(m_old - m) + sum_j exp(z_c - m)   (online log-sum-exp)
//   lse = m + log s,   loss_r = lse_r - z[r, t_r]
// Backward with the saved lse, recomputing each chunk's logits:
//   G_c = g ⊙ (exp(z_c - lse) - onehot(t) restricted to c)        [R, |c|]  (in place of z_c)
//   dH += G_c W_c         dW_c = G_c^T H     (each chunk owns its rows of dW: no accumulation)
// Rows whose target is ignore_index have loss 0 and gradient 0, so they are dropped before the
// GEMMs (SFT masks the prompt: those rows cost nothing) and their lse is reported as 0.
//
// Memory beyond the inputs and outputs: the kept rows of H when some are ignored [R, d], one
// logits chunk [R, chunk] in the inputs' dtype (plus ops::matmul's own f32 copies for bf16), the
// per-row statistics [R]; the backward adds the f32 accumulator of dH [R, d], one product
// [R, d] and one dW chunk [chunk, d]. That is O(R x chunk + R x d + chunk x d), against the
// unfused path's two [N, V] f32 buffers (logits and their gradient).
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/checks.h"
#include "ops/cpu/linear_cross_entropy.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

constexpr const char* kForward = "linear_cross_entropy";
constexpr const char* kBackward = "linear_cross_entropy_backward";

// The automatic chunk: about 2^21 logits (8 MiB in f32) at once, so the chunk stays near the
// caches for the row kernel that reads it right after the GEMM wrote it, and wide enough
// (at least 256 columns) for the GEMM to run at speed.
constexpr int64_t kChunkElements = int64_t(1) << 21;

int64_t chunk_columns(int64_t requested, int64_t rows, int64_t vocab) {
  if (requested > 0) return std::min(requested, vocab);
  const int64_t by_budget = kChunkElements / std::max<int64_t>(1, rows);
  return std::min(vocab, std::max<int64_t>(256, by_budget / 64 * 64));
}

DType statistics_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

Shape row_shape(const Tensor& hidden) { return Shape(hidden.shape().begin(), hidden.shape().end() - 1); }

// The inputs as the kernels want them, with the rows that have a target picked out.
struct Prepared {
  Device device;
  int64_t rows = 0;         // N: rows of hidden
  int64_t vocab = 0;        // V
  int64_t width = 0;        // d
  int64_t target_count = 0;  // R: rows whose target is not ignore_index
  Tensor hidden;            // [R, d] contiguous: the kept rows
  Tensor weight;            // [V, d] contiguous
  Tensor targets;           // [R] contiguous
  Tensor kept;              // [R] i64 row numbers into [N]; undefined when every row is kept
};

Prepared prepare(const char* op, const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                 int64_t ignore_index, int64_t chunk_size) {
  Prepared p;
  p.device = check_device(op, {{"hidden", &hidden}, {"weight", &weight}, {"targets", &targets}});
  LAMINA_CHECK(p.device.is_cpu(), op, ": runs on the CPU only so far (got ", p.device.str(),
               "); on another device use matmul then cross_entropy");
  check_floating(op, "hidden", hidden);
  check_same_dtype(op, {{"hidden", &hidden}, {"weight", &weight}});
  check_index_dtype(op, "targets", targets);
  check_dim(op, "weight", weight, 2);
  LAMINA_CHECK(hidden.dim() >= 1, op, ": hidden must be [..., d], got shape ", hidden.shape());
  LAMINA_CHECK(hidden.size(-1) == weight.size(1), op, ": hidden ", hidden.shape(), " has width ", hidden.size(-1),
               " but weight ", weight.shape(), " (the head, [V, d]) has ", weight.size(1));
  LAMINA_CHECK(weight.size(0) >= 1, op, ": weight ", weight.shape(), " has an empty vocabulary");
  LAMINA_CHECK(chunk_size >= 0, op, ": chunk_size must be >= 0 (0 = automatic), got ", chunk_size);
  check_shape(op, "targets", targets, row_shape(hidden));
  p.vocab = weight.size(0);
  p.width = weight.size(1);
  p.rows = shape_numel(row_shape(hidden));

  const std::vector<int64_t> values = targets.to_vector<int64_t>();
  std::vector<int64_t> kept;
  kept.reserve(values.size());
  for (size_t n = 0; n < values.size(); ++n) {
    if (values[n] == ignore_index) continue;
    LAMINA_CHECK(values[n] >= 0 && values[n] < p.vocab, op, ": target ", values[n], " at flat position ", n,
                 " is outside the vocabulary of ", p.vocab, " (and is not ignore_index ", ignore_index, ")");
    kept.push_back(int64_t(n));
  }
  p.target_count = int64_t(kept.size());
  p.weight = contiguous(weight);
  const Tensor all_rows = views::view(contiguous(hidden), {p.rows, p.width});
  const Tensor all_targets = views::view(contiguous(targets), {p.rows});
  if (p.target_count == p.rows) {
    p.hidden = all_rows;
    p.targets = all_targets;
  } else {
    p.kept = Tensor::from_vector(kept, {p.target_count}, DType::i64);
    p.hidden = index_select(all_rows, 0, p.kept);
    p.targets = index_select(all_targets, 0, p.kept);
  }
  return p;
}

// The kept rows' values [R] spread back over all N rows, 0 on the others.
Tensor scatter_rows(const Prepared& p, const Tensor& kept_values) {
  if (!p.kept.defined()) return kept_values;
  return index_add({p.rows}, 0, p.kept, kept_values);
}

}  // namespace

CrossEntropyResult linear_cross_entropy(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                                        int64_t ignore_index, int64_t chunk_size, bool keep_logits) {
  const Prepared p = prepare(kForward, hidden, weight, targets, ignore_index, chunk_size);
  const DType stats = statistics_dtype(hidden.dtype());
  const int64_t rows = p.target_count;
  Tensor losses = zeros({rows}, stats), lse = zeros({rows}, stats);
  CrossEntropyResult result;
  if (rows > 0) {
    const Tensor running_max = full({rows}, -INFINITY, stats), running_sum = zeros({rows}, stats);
    const Tensor target_logit = zeros({rows}, stats);
    const int64_t chunk = chunk_columns(chunk_size, rows, p.vocab);
    for (int64_t first = 0; first < p.vocab; first += chunk) {
      const Tensor head_chunk = views::slice(p.weight, 0, first, std::min(p.vocab, first + chunk));
      const Tensor logits = matmul(p.hidden, head_chunk, false, true);
      cpu::linear_cross_entropy_update(running_max, running_sum, target_logit, logits, p.targets, first,
                                       ignore_index);
      if (keep_logits) result.logit_chunks.push_back(logits);
    }
    cpu::linear_cross_entropy_finish(losses, lse, running_max, running_sum, target_logit, p.targets, ignore_index);
  }
  result.losses = views::view(scatter_rows(p, losses), row_shape(hidden));
  result.lse = views::view(scatter_rows(p, lse), row_shape(hidden));
  result.target_count = p.target_count;
  return result;
}

LinearCrossEntropyGrads linear_cross_entropy_backward(const Tensor& grad_losses, const Tensor& hidden,
                                                      const Tensor& weight, const Tensor& targets, const Tensor& lse,
                                                      int64_t ignore_index, bool want_hidden, bool want_weight,
                                                      int64_t chunk_size, std::vector<Tensor> logit_chunks) {
  const Prepared p = prepare(kBackward, hidden, weight, targets, ignore_index, chunk_size);
  check_device(kBackward, {{"grad_losses", &grad_losses}, {"lse", &lse}, {"hidden", &hidden}});
  check_shape(kBackward, "grad_losses", grad_losses, row_shape(hidden));
  check_shape(kBackward, "lse", lse, row_shape(hidden));
  const DType dtype = hidden.dtype(), stats = statistics_dtype(dtype);
  check_dtype(kBackward, "lse", lse, stats);
  check_floating(kBackward, "grad_losses", grad_losses);

  const int64_t rows = p.target_count;
  const auto kept_rows = [&](const Tensor& per_row) {
    const Tensor flat = views::view(contiguous(cast(per_row, stats)), {p.rows});
    return p.kept.defined() ? index_select(flat, 0, p.kept) : flat;
  };
  const Tensor row_grads = kept_rows(grad_losses), row_lse = kept_rows(lse);

  // dH is summed over the chunks in f32 (f64 for f64), so a bf16 model rounds it once at the end.
  Tensor grad_hidden_sum = want_hidden ? zeros({rows, p.width}, stats) : Tensor();
  LinearCrossEntropyGrads grads;
  // Every chunk writes its own rows of dW; only a step with no target leaves them all at 0.
  if (want_weight) grads.grad_weight = rows > 0 ? Tensor::empty(weight.shape(), dtype) : zeros(weight.shape(), dtype);
  if (rows > 0 && (want_hidden || want_weight)) {
    const int64_t chunk = chunk_columns(chunk_size, rows, p.vocab);
    const int64_t chunks = (p.vocab + chunk - 1) / chunk;
    LAMINA_CHECK(logit_chunks.empty() || int64_t(logit_chunks.size()) == chunks, kBackward, ": ",
                 logit_chunks.size(), " kept logit chunks for ", chunks, " chunks of ", chunk,
                 " columns (the forward's chunk_size must be the backward's)");
    for (int64_t first = 0; first < p.vocab; first += chunk) {
      const int64_t last = std::min(p.vocab, first + chunk);
      const Tensor head_chunk = views::slice(p.weight, 0, first, last);
      // The logits, then G_c in place.
      const Tensor chunk_grad = logit_chunks.empty() ? matmul(p.hidden, head_chunk, false, true)
                                                     : std::move(logit_chunks[size_t(first / chunk)]);
      const bool fits = chunk_grad.dim() == 2 && chunk_grad.size(0) == rows && chunk_grad.size(1) == last - first &&
                        chunk_grad.dtype() == dtype && chunk_grad.is_contiguous();
      LAMINA_CHECK(fits, kBackward,
                   ": a kept logit chunk is ", chunk_grad.shape(), " ", dtype_name(chunk_grad.dtype()),
                   ", expected [", rows, ", ", last - first, "] ", dtype_name(dtype));
      cpu::linear_cross_entropy_chunk_gradient(chunk_grad, row_grads, row_lse, p.targets, first, ignore_index);
      if (want_hidden) {
        const Tensor product = matmul(chunk_grad, head_chunk);
        add_(grad_hidden_sum, product.dtype() == stats ? product : cast(product, stats));
      }
      if (want_weight) copy_(views::slice(grads.grad_weight, 0, first, last), matmul(chunk_grad, p.hidden, true));
    }
  }
  if (want_hidden) {
    Tensor all_rows = p.kept.defined() ? index_add({p.rows, p.width}, 0, p.kept, grad_hidden_sum) : grad_hidden_sum;
    if (all_rows.dtype() != dtype) all_rows = cast(all_rows, dtype);
    grads.grad_hidden = views::view(all_rows, hidden.shape());
  }
  return grads;
}

}  // namespace lamina::ops
