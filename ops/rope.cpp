// RoPE: frequency table (with Llama 3.1 scaling) and checks; kernels in ops/cpu/rope.cpp and
// ops/cuda/rope.cu.
#include <cmath>

#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {
namespace {

void check_rope_config(const RopeConfig& config) {
  LAMINA_CHECK(config.head_dim > 0 && config.head_dim % 2 == 0, "rope: head_dim must be positive and even, got ",
               config.head_dim);
  LAMINA_CHECK(config.theta > 0, "rope: theta must be positive, got ", config.theta);
  if (config.llama3_scaling) {
    const Llama3RopeScaling& s = *config.llama3_scaling;
    LAMINA_CHECK(s.factor > 0 && s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor &&
                     s.original_max_position > 0,
                 "rope: invalid llama3 scaling (factor ", s.factor, ", low_freq_factor ", s.low_freq_factor,
                 ", high_freq_factor ", s.high_freq_factor, ", original_max_position_embeddings ",
                 s.original_max_position, ")");
  }
}

Tensor rotate(const char* op, const Tensor& x_in, const Tensor& positions, const RopeConfig& config, bool inverse) {
  const Device device = check_device(op, {{"x", &x_in}, {"positions", &positions}});
  check_floating(op, "x", x_in);
  check_index_dtype(op, "positions", positions);
  check_rope_config(config);
  check_dim(op, "x", x_in, 4);
  LAMINA_CHECK(x_in.size(3) == config.head_dim, op, ": x ", x_in.shape(), " is [B, T, H, D] with D = ",
               x_in.size(3), " but head_dim is ", config.head_dim);
  const bool shared = positions.dim() == 1 && positions.size(0) == x_in.size(1);
  const bool per_batch = positions.dim() == 2 && positions.size(0) == x_in.size(0) && positions.size(1) == x_in.size(1);
  LAMINA_CHECK(shared || per_batch, op, ": positions ", positions.shape(), " must be [T] or [B, T] for x ",
               x_in.shape());
  const Tensor x = x_in;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, rope_rotate(out, x, positions, rope_frequencies(config), inverse));
  return out;
}

}  // namespace

std::vector<float> rope_frequencies(const RopeConfig& config) {
  check_rope_config(config);
  const int64_t half = config.head_dim / 2;
  std::vector<float> frequencies(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // inv_freq = 1 / theta^(2i/D), each step in f32 like torch does.
    const float exponent = float(2 * i) / float(config.head_dim);
    float inv_freq = 1.0f / std::pow(float(config.theta), exponent);
    if (config.llama3_scaling) {
      const Llama3RopeScaling& s = *config.llama3_scaling;
      const float wavelength = float(2.0 * M_PI) / inv_freq;
      const float low_wavelength = float(s.original_max_position) / float(s.low_freq_factor);
      const float high_wavelength = float(s.original_max_position) / float(s.high_freq_factor);
      if (wavelength > low_wavelength) {
        inv_freq = inv_freq / float(s.factor);
      } else if (wavelength >= high_wavelength) {
        const float smooth = (float(s.original_max_position) / wavelength - float(s.low_freq_factor)) /
                             float(s.high_freq_factor - s.low_freq_factor);
        inv_freq = (1.0f - smooth) * inv_freq / float(s.factor) + smooth * inv_freq;
      }
    }
    frequencies[size_t(i)] = inv_freq;
  }
  return frequencies;
}

Tensor rope(const Tensor& x, const Tensor& positions, const RopeConfig& config) {
  return rotate("rope", x, positions, config, false);
}

Tensor rope_backward(const Tensor& grad_out, const Tensor& positions, const RopeConfig& config) {
  return rotate("rope_backward", grad_out, positions, config, true);
}

}  // namespace lamina::ops
