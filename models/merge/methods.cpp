// The merge methods' per-element loops (see methods.h).
#include "models/merge/methods.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "tensor/error.h"
#include "tensor/parallel.h"
#include "tensor/rng.h"

namespace lamina::merge {
namespace {

// Entries per thread at least: the loops are memory-bound, so small tensors stay on one thread.
constexpr int64_t kGrain = int64_t(1) << 15;

void check_input(const Tensor& tensor, const Shape& shape, const char* op, const char* what) {
  LAMINA_CHECK(tensor.defined(), "merge::", op, ": ", what, " is undefined");
  LAMINA_CHECK(tensor.dtype() == DType::f32 && tensor.device().is_cpu() && tensor.is_contiguous(), "merge::", op,
               ": ", what, " must be a contiguous f32 CPU tensor, got ", dtype_name(tensor.dtype()));
  LAMINA_CHECK(tensor.shape() == shape, "merge::", op, ": ", what, " has shape ", shape_str(tensor.shape()),
               ", expected ", shape_str(shape));
}

void check_inputs(const std::vector<Tensor>& tensors, const std::vector<double>& weights, const char* op) {
  LAMINA_CHECK(!tensors.empty(), "merge::", op, ": no tensors to merge");
  LAMINA_CHECK(tensors.size() == weights.size(), "merge::", op, ": ", tensors.size(), " tensors but ", weights.size(),
               " weights");
  for (const Tensor& tensor : tensors) check_input(tensor, tensors[0].shape(), op, "a model's tensor");
  for (double weight : weights) LAMINA_CHECK(std::isfinite(weight), "merge::", op, ": a weight is not finite");
}

double weight_sum(const std::vector<double>& weights, const char* op) {
  const double sum = std::accumulate(weights.begin(), weights.end(), 0.0);
  LAMINA_CHECK(sum != 0, "merge::", op, ": the weights sum to zero, so they cannot be normalised");
  return sum;
}

std::vector<const float*> pointers(const std::vector<Tensor>& tensors) {
  std::vector<const float*> result;
  for (const Tensor& tensor : tensors) result.push_back(tensor.data<float>());
  return result;
}

}  // namespace

Tensor weighted_delta_sum(const std::vector<Tensor>& deltas, const std::vector<double>& weights, bool normalize) {
  check_inputs(deltas, weights, "weighted_delta_sum");
  const double divisor = normalize ? weight_sum(weights, "weighted_delta_sum") : 1.0;
  Tensor out = Tensor::empty(deltas[0].shape());
  float* result = out.data<float>();
  const std::vector<const float*> inputs = pointers(deltas);
  const int64_t count = out.numel();
  // Each entry is summed on its own, in model order: the threads never change a result.
  parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double sum = 0;
      for (size_t i = 0; i < inputs.size(); ++i) sum += weights[i] * double(inputs[i][j]);
      result[j] = float(sum / divisor);
    }
  });
  return out;
}

Tensor linear(const std::vector<Tensor>& models, const std::vector<double>& weights, bool normalize) {
  return weighted_delta_sum(models, weights, normalize);  // the same sum, of weights instead of deltas
}

Tensor subtract(const Tensor& x, const Tensor& base) {
  check_input(base, base.shape(), "subtract", "the base");
  check_input(x, base.shape(), "subtract", "the model");
  Tensor out = Tensor::empty(base.shape());
  const float* left = x.data<float>();
  const float* right = base.data<float>();
  float* result = out.data<float>();
  parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) result[j] = left[j] - right[j];
  });
  return out;
}

Tensor add_scaled(const Tensor& base, const Tensor& delta, double lambda) {
  check_input(base, base.shape(), "add_scaled", "the base");
  check_input(delta, base.shape(), "add_scaled", "the delta");
  Tensor out = Tensor::empty(base.shape());
  const float* left = base.data<float>();
  const float* right = delta.data<float>();
  float* result = out.data<float>();
  parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) result[j] = float(double(left[j]) + lambda * double(right[j]));
  });
  return out;
}

Tensor task_arithmetic(const Tensor& base, const std::vector<Tensor>& models, const std::vector<double>& weights,
                       bool normalize, double lambda) {
  std::vector<Tensor> deltas;
  for (const Tensor& model : models) deltas.push_back(subtract(model, base));
  return add_scaled(base, weighted_delta_sum(deltas, weights, normalize), lambda);
}

SlerpWeights slerp_weights(double dot, double from_norm_squared, double to_norm_squared, double t,
                           double parallel_threshold) {
  LAMINA_CHECK(std::isfinite(t), "merge::slerp: t is not finite");
  SlerpWeights weights{1 - t, t};
  if (!(from_norm_squared > 0 && to_norm_squared > 0)) return weights;
  const double cosine = std::clamp(dot / std::sqrt(from_norm_squared * to_norm_squared), -1.0, 1.0);
  if (std::abs(cosine) > parallel_threshold) return weights;
  const double theta = std::acos(cosine);
  const double sin_theta = std::sin(theta);
  weights = {std::sin((1 - t) * theta) / sin_theta, std::sin(t * theta) / sin_theta};
  // Exactly 1 and 0 at the ends, so that the endpoints come back bit for bit.
  if (t == 0) weights = {1, 0};
  if (t == 1) weights = {0, 1};
  return weights;
}

Tensor slerp(const Tensor& from, const Tensor& to, double t, double parallel_threshold) {
  check_input(from, from.shape(), "slerp", "the first tensor");
  check_input(to, from.shape(), "slerp", "the second tensor");
  const float* a = from.data<float>();
  const float* b = to.data<float>();
  double dot = 0, norm_a = 0, norm_b = 0;
  for (int64_t j = 0; j < from.numel(); ++j) {
    dot += double(a[j]) * double(b[j]);
    norm_a += double(a[j]) * double(a[j]);
    norm_b += double(b[j]) * double(b[j]);
  }
  const SlerpWeights weights = slerp_weights(dot, norm_a, norm_b, t, parallel_threshold);
  return linear({from, to}, {weights.from, weights.to}, false);
}

MagnitudeCut magnitude_cut(std::vector<float>& magnitudes, double density) {
  LAMINA_CHECK(density >= 0 && density <= 1, "merge::keep_top_magnitude: density ", density, " is outside [0, 1]");
  const int64_t count = int64_t(magnitudes.size());
  // The epsilon keeps a density such as 0.6 (stored a hair below 3/5) from losing an entry to rounding.
  const int64_t keep = std::min<int64_t>(count, int64_t(std::floor(density * double(count) + 1e-9)));
  MagnitudeCut cut;
  if (keep == count) {
    cut.keep_all = true;
    return cut;
  }
  if (keep == 0) {
    cut.keep_none = true;
    return cut;
  }
  // The keep-th largest magnitude is the cut: everything above it stays, and of the entries equal
  // to it, the earliest ones until `keep` are reached.
  std::nth_element(magnitudes.begin(), magnitudes.begin() + (keep - 1), magnitudes.end(), std::greater<float>());
  cut.magnitude = magnitudes[size_t(keep - 1)];
  int64_t above = 0;
  for (float magnitude : magnitudes) above += magnitude > cut.magnitude ? 1 : 0;
  cut.keep_at_cut = keep - above;
  return cut;
}

Tensor apply_magnitude_cut(const Tensor& delta_chunk, MagnitudeCut& cut) {
  check_input(delta_chunk, delta_chunk.shape(), "keep_top_magnitude", "the delta");
  const int64_t count = delta_chunk.numel();
  const float* input = delta_chunk.data<float>();
  Tensor out = Tensor::empty(delta_chunk.shape());
  float* result = out.data<float>();
  for (int64_t j = 0; j < count; ++j) {
    const float magnitude = std::abs(input[j]);
    bool kept = cut.keep_all;
    if (!cut.keep_all && !cut.keep_none) {
      kept = magnitude > cut.magnitude;
      if (magnitude == cut.magnitude && cut.keep_at_cut > 0) {
        kept = true;
        cut.keep_at_cut -= 1;
      }
    }
    result[j] = kept ? input[j] : 0.0f;
  }
  return out;
}

Tensor keep_top_magnitude(const Tensor& delta, double density) {
  check_input(delta, delta.shape(), "keep_top_magnitude", "the delta");
  const float* input = delta.data<float>();
  std::vector<float> magnitudes(static_cast<size_t>(delta.numel()));
  for (size_t j = 0; j < magnitudes.size(); ++j) magnitudes[j] = std::abs(input[j]);
  MagnitudeCut cut = magnitude_cut(magnitudes, density);
  return apply_magnitude_cut(delta, cut);
}

Tensor drop_and_rescale(const Tensor& delta, double density, uint64_t seed, uint64_t stream, int64_t first_index) {
  check_input(delta, delta.shape(), "drop_and_rescale", "the delta");
  LAMINA_CHECK(density > 0 && density <= 1, "merge::drop_and_rescale: density ", density, " is outside (0, 1]");
  LAMINA_CHECK(first_index >= 0 && first_index % 4 == 0, "merge::drop_and_rescale: first_index ", first_index,
               " is not a multiple of 4");
  const int64_t count = delta.numel();
  const float* input = delta.data<float>();
  Tensor out = Tensor::empty(delta.shape());
  float* result = out.data<float>();
  const double scale = 1.0 / density;
  // One Philox block (four words) per four entries; the stream fills the counter's upper half so
  // that streams never share counters.
  parallel_for(0, (count + 3) / 4, kGrain / 4, [&](int64_t first_block, int64_t end_block) {
    for (int64_t block = first_block; block < end_block; ++block) {
      const uint64_t counter = uint64_t(first_index / 4 + block);
      const PhiloxBlock words = philox4x32_10(
          {uint32_t(counter), uint32_t(counter >> 32), uint32_t(stream), uint32_t(stream >> 32)}, seed);
      for (int64_t j = block * 4; j < std::min(count, block * 4 + 4); ++j) {
        const bool kept = double(uniform_from_word(words[size_t(j - block * 4)])) < density;
        result[j] = kept ? float(double(input[j]) * scale) : 0.0f;
      }
    }
  });
  return out;
}

Tensor sign_consensus_sum(const std::vector<Tensor>& deltas, const std::vector<double>& weights, bool normalize) {
  check_inputs(deltas, weights, "sign_consensus_sum");
  Tensor out = Tensor::empty(deltas[0].shape());
  float* result = out.data<float>();
  const std::vector<const float*> inputs = pointers(deltas);
  const int64_t count = out.numel();
  parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      double total = 0;
      for (size_t i = 0; i < inputs.size(); ++i) total += weights[i] * double(inputs[i][j]);
      double sum = 0, weight_of_agreeing = 0;
      if (total != 0) {
        for (size_t i = 0; i < inputs.size(); ++i) {
          const double value = weights[i] * double(inputs[i][j]);
          if (value != 0 && (value > 0) == (total > 0)) {
            sum += value;
            weight_of_agreeing += weights[i];
          }
        }
      }
      result[j] = float(normalize && weight_of_agreeing != 0 ? sum / weight_of_agreeing : sum);
    }
  });
  return out;
}

}  // namespace lamina::merge
