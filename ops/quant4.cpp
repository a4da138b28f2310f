// 4-bit NF4/FP4 quantization: the code tables, blockwise quantization with optional double
// quantization (on the host: it runs once per weight, at load or conversion time), argument
// checks and dispatch for the dequantize and fused-product kernels (ops/cpu/quant4.cpp,
// ops/cuda/quant4.cu). The algorithm and every constant follow
// ../shared/docs/formats-and-quantization.md §4.
#include "ops/quant4.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/checks.h"
#include "ops/ops.h"

namespace lamina::ops {
namespace {

// The 127 positive entries of bitsandbytes' signed dynamic map below 1.0, ascending. A float32
// rebuild from the construction rule differs in the last bit for some entries, so the values
// are listed (9 significant digits round-trip float32 exactly).
constexpr float kDynamicPositive[127] = {
    5.50000038e-07f, 3.25000019e-06f, 7.7499999e-06f,  2.12499981e-05f, 4.37499984e-05f, 6.62500024e-05f,
    8.87499991e-05f, 0.000156250011f, 0.000268750038f, 0.000381250022f, 0.000493750034f, 0.000606250076f,
    0.00071875006f,  0.000831249985f, 0.000943750085f, 0.00128124992f,  0.00184375001f,  0.00240624999f,
    0.00296874996f,  0.00353124971f,  0.00409374991f,  0.00465624966f,  0.00521875033f,  0.00578125007f,
    0.00634374982f,  0.00690625003f,  0.00746874977f,  0.00803124998f,  0.00859375019f,  0.00915624946f,
    0.00971874967f,  0.0114062503f,   0.0142187504f,   0.0170312505f,   0.0198437516f,   0.0226562507f,
    0.0254687499f,   0.028281251f,    0.0310937501f,   0.0339062512f,   0.0367187522f,   0.0395312496f,
    0.0423437469f,   0.0451562516f,   0.047968749f,    0.05078125f,     0.053593751f,    0.0564062484f,
    0.0592187531f,   0.0620312504f,   0.0648437515f,   0.0676562563f,   0.0704687461f,   0.0732812509f,
    0.0760937482f,   0.078906253f,    0.0817187577f,   0.0845312476f,   0.0873437524f,   0.0901562497f,
    0.0929687545f,   0.0957812592f,   0.0985937491f,   0.107031256f,    0.12109375f,     0.135156244f,
    0.149218753f,    0.163281247f,    0.177343756f,    0.19140625f,     0.205468744f,    0.219531253f,
    0.233593747f,    0.247656241f,    0.26171875f,     0.275781274f,    0.289843738f,    0.303906262f,
    0.317968726f,    0.33203125f,     0.346093744f,    0.360156238f,    0.374218762f,    0.388281226f,
    0.40234375f,     0.416406244f,    0.430468738f,    0.444531262f,    0.458593726f,    0.47265625f,
    0.486718714f,    0.500781238f,    0.514843702f,    0.528906226f,    0.54296875f,     0.557031274f,
    0.571093798f,    0.585156262f,    0.599218726f,    0.61328125f,     0.627343774f,    0.641406298f,
    0.655468762f,    0.669531226f,    0.68359375f,     0.697656274f,    0.711718798f,    0.725781262f,
    0.739843726f,    0.75390625f,     0.767968774f,    0.782031238f,    0.796093762f,    0.810156226f,
    0.82421875f,     0.838281274f,    0.852343738f,    0.866406262f,    0.880468726f,    0.89453125f,
    0.908593774f,    0.922656238f,    0.936718762f,    0.950781226f,    0.96484375f,     0.978906274f,
    0.992968738f};

// Nearest-entry rounding over an ascending table: the index is the number of midpoints (taken
// exactly, in f64, between adjacent float32 entries) that the value is strictly above, so a
// value exactly on a midpoint goes to the lower entry.
template <size_t N>
std::array<double, N - 1> midpoints_of(const std::array<float, N>& ascending) {
  std::array<double, N - 1> midpoints{};
  for (size_t i = 0; i + 1 < N; ++i) midpoints[i] = (double(ascending[i]) + double(ascending[i + 1])) / 2.0;
  return midpoints;
}

template <size_t M>
int nearest_index(const std::array<double, M>& midpoints, float value) {
  // upper_bound-style count of midpoints strictly below value
  return int(std::upper_bound(midpoints.begin(), midpoints.end(), double(value),
                              [](double v, double t) { return v <= t; }) -
             midpoints.begin());
}

// How one format maps a scaled value in [-1, 1] to its 4-bit code.
class CodeRounder {
 public:
  explicit CodeRounder(Quant4Format format) : format_(format) {
    if (format == Quant4Format::nf4) {
      midpoints_ = midpoints_of(nf4_code_values());
      return;
    }
    // FP4 rounds the magnitude over its 8 non-negative values (ascending), then adds the sign bit.
    const auto& table = fp4_code_values();
    std::array<int, 8> order{0, 1, 2, 3, 4, 5, 6, 7};
    std::sort(order.begin(), order.end(), [&](int a, int b) { return table[size_t(a)] < table[size_t(b)]; });
    std::array<float, 8> magnitudes{};
    for (size_t i = 0; i < 8; ++i) {
      magnitudes[i] = table[size_t(order[i])];
      magnitude_codes_[i] = uint8_t(order[i]);
    }
    const auto mids = midpoints_of(magnitudes);
    std::copy(mids.begin(), mids.end(), magnitude_midpoints_.begin());
  }

  uint8_t code(float scaled) const {
    if (format_ == Quant4Format::nf4) return uint8_t(nearest_index(midpoints_, scaled));
    const uint8_t magnitude = magnitude_codes_[size_t(nearest_index(magnitude_midpoints_, std::fabs(scaled)))];
    return uint8_t(magnitude | (scaled < 0 ? 8 : 0));
  }

 private:
  Quant4Format format_;
  std::array<double, 15> midpoints_{};
  std::array<double, 7> magnitude_midpoints_{};
  std::array<uint8_t, 8> magnitude_codes_{};
};

bool is_power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

Tensor f32_tensor(const float* values, int64_t count, const Shape& shape) {
  Tensor out = Tensor::empty(shape, DType::f32);
  std::copy(values, values + count, out.data<float>());
  return out;
}

// The fp32 absmax as a contiguous tensor on q's device.
Tensor decoded_absmax(const Quantized4Bit& q) {
  if (!q.double_quant) return q.absmax;
  Tensor out = Tensor::empty({q.block_count()}, DType::f32, q.device());
  LAMINA_DISPATCH(q.device(), quant4_decode_absmax(out, q));
  return out;
}

// x [..., features] as a contiguous 2-D tensor in the kernels' compute dtype (f64 stays f64).
Tensor as_rows(const Tensor& x, int64_t features) {
  const DType compute = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor flat = contiguous(x.dtype() == compute ? x : cast(x, compute));
  return Tensor(flat.storage(), {flat.numel() / std::max<int64_t>(features, 1), features}, {features, 1},
                flat.offset(), compute);
}

Tensor fused_product(const char* op, const Tensor& x, const Quantized4Bit& q, bool input_grad) {
  q.validate(op);
  const Device device = check_device(op, {{input_grad ? "grad_out" : "x", &x}, {"q.codes", &q.codes}});
  check_floating(op, input_grad ? "grad_out" : "x", x);
  LAMINA_CHECK(x.dim() >= 1, op, ": the input must have at least one dim, got a scalar");
  const int64_t reduced = input_grad ? q.out_features() : q.in_features();
  const int64_t produced = input_grad ? q.in_features() : q.out_features();
  LAMINA_CHECK(x.size(-1) == reduced, op, ": the input's last dim is ", x.size(-1), " but the ", q.shape[0], "x",
               q.shape[1], " 4-bit weight needs ", reduced, " (input shape ", x.shape(), ")");
  LAMINA_CHECK(!(device.is_cuda() && x.dtype() == DType::f64), op, ": f64 inputs are CPU-only");
  const Tensor rows = as_rows(x, reduced);
  Shape out_shape = x.shape();
  out_shape.back() = produced;
  Tensor out = Tensor::empty({rows.size(0), produced}, rows.dtype(), device);
  if (rows.size(0) > 0 && produced > 0) {
    if (input_grad) LAMINA_DISPATCH(device, quant4_matmul_input_grad(out, rows, q));
    else LAMINA_DISPATCH(device, quant4_matmul(out, rows, q));
  }
  out = Tensor(out.storage(), out_shape, contiguous_strides(out_shape), 0, out.dtype());
  return out.dtype() == x.dtype() ? out : cast(out, x.dtype());
}

}  // namespace

const char* quant4_format_name(Quant4Format format) { return format == Quant4Format::nf4 ? "nf4" : "fp4"; }

Quant4Format quant4_format_from_name(const std::string& name, const std::string& what) {
  if (name == "nf4") return Quant4Format::nf4;
  if (name == "fp4") return Quant4Format::fp4;
  throw Error(what + ": unknown 4-bit format '" + name + "' (expected nf4 or fp4)");
}

const std::array<float, 16>& nf4_code_values() {
  static const std::array<float, 16> table = {
      -1.0f,          -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
      -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
      0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
      0.44070982933044434f, 0.5626170039176941f,  0.7229568362236023f,  1.0f};
  return table;
}

const std::array<float, 16>& fp4_code_values() {
  // Magnitudes 0, 0.0625, 8, 12, 4, 6, 2, 3 for the low three bits, over 12; bit 3 is the sign.
  static const std::array<float, 16> table = [] {
    const float raw[8] = {0.0f, 0.0625f, 8.0f, 12.0f, 4.0f, 6.0f, 2.0f, 3.0f};
    std::array<float, 16> values{};
    for (size_t i = 0; i < 8; ++i) {
      values[i] = raw[i] / 12.0f;
      // Code 8 is +0 as in bitsandbytes' table (built from the integer -0), not -0.
      values[i + 8] = i == 0 ? 0.0f : -(raw[i] / 12.0f);
    }
    return values;
  }();
  return table;
}

const std::array<float, 16>& quant4_code_values(Quant4Format format) {
  return format == Quant4Format::nf4 ? nf4_code_values() : fp4_code_values();
}

const std::array<float, 256>& dynamic_map_8bit() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (size_t i = 0; i < 127; ++i) {
      values[128 + i] = kDynamicPositive[i];
      values[126 - i] = -kDynamicPositive[i];
    }
    values[127] = 0.0f;
    values[255] = 1.0f;
    return values;
  }();
  return table;
}

int64_t Quantized4Bit::storage_bytes() const {
  int64_t bytes = int64_t(codes.nbytes() + code_values.nbytes() + absmax.nbytes());
  if (double_quant) bytes += int64_t(nested_absmax.nbytes() + nested_code_values.nbytes());
  return bytes;
}

Quantized4Bit Quantized4Bit::to(Device device) const {
  Quantized4Bit out = *this;
  auto move = [&](Tensor& t) {
    if (t.defined()) t = to_device(t, device);
  };
  move(out.codes);
  move(out.code_values);
  move(out.absmax);
  move(out.nested_absmax);
  move(out.nested_code_values);
  return out;
}

void Quantized4Bit::validate(const std::string& what) const {
  LAMINA_CHECK(shape.size() == 2 && shape[0] >= 0 && shape[1] >= 0, what, ": a 4-bit weight must be 2-D [out, in], got ",
               shape);
  LAMINA_CHECK(is_power_of_two(blocksize) && blocksize >= 32 && blocksize <= 4096, what,
               ": blocksize must be a power of two in [32, 4096], got ", blocksize);
  const Device device = codes.defined() ? codes.device() : Device::cpu();
  auto check_tensor = [&](const Tensor& t, const char* name, DType dtype, int64_t count) {
    LAMINA_CHECK(t.defined(), what, ": ", name, " is missing");
    LAMINA_CHECK(t.dtype() == dtype, what, ": ", name, " must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype()));
    LAMINA_CHECK(t.numel() == count, what, ": ", name, " must hold ", count, " elements, got ", t.numel(), " (shape ",
                 t.shape(), ")");
    LAMINA_CHECK(t.is_contiguous(), what, ": ", name, " must be contiguous");
    LAMINA_CHECK(t.device() == device, what, ": ", name, " is on ", t.device().str(), " but the codes are on ",
                 device.str());
  };
  check_tensor(codes, "codes", DType::u8, (numel() + 1) / 2);
  check_tensor(code_values, "code_values", DType::f32, 16);
  check_tensor(absmax, "absmax", double_quant ? DType::u8 : DType::f32, block_count());
  if (double_quant) {
    LAMINA_CHECK(nested_blocksize > 0, what, ": nested_blocksize must be positive, got ", nested_blocksize);
    check_tensor(nested_absmax, "nested_absmax", DType::f32, (block_count() + nested_blocksize - 1) / nested_blocksize);
    check_tensor(nested_code_values, "nested_code_values", DType::f32, 256);
  }
}

Quantized4Bit quantize_4bit(const Tensor& weight, Quant4Format format, int64_t blocksize, bool double_quant) {
  const char* op = "quantize_4bit";
  check_defined(weight, op, "weight");
  LAMINA_CHECK(weight.dtype() == DType::f32 || weight.dtype() == DType::bf16 || weight.dtype() == DType::f16, op,
               ": weight must be f32, bf16 or f16, got ", dtype_name(weight.dtype()));
  LAMINA_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out, in], got shape ", weight.shape());
  LAMINA_CHECK(is_power_of_two(blocksize) && blocksize >= 32 && blocksize <= 4096, op,
               ": blocksize must be a power of two in [32, 4096], got ", blocksize);

  Quantized4Bit q;
  q.format = format;
  q.shape = weight.shape();
  q.dtype = weight.dtype();
  q.blocksize = blocksize;
  q.double_quant = double_quant;
  const int64_t n = q.numel();
  const int64_t blocks = q.block_count();
  const std::vector<float> values = weight.to_vector<float>();  // f32 exactly (bf16/f16 widen exactly)

  Tensor codes = zeros({(n + 1) / 2, 1}, DType::u8);
  uint8_t* packed = codes.data<uint8_t>();
  std::vector<float> absmax(size_t(blocks), 0.0f);
  const CodeRounder rounder(format);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize, end = std::min(n, begin + blocksize);
    float largest = 0.0f;
    for (int64_t i = begin; i < end; ++i) largest = std::max(largest, std::fabs(values[size_t(i)]));
    absmax[size_t(b)] = largest;
    // The reference takes the reciprocal once and multiplies; an all-zero block divides by 1e-38,
    // which sends every element to the code of 0.
    const float inverse = 1.0f / std::max(largest, 1e-38f);
    for (int64_t i = begin; i < end; ++i) {
      const float scaled = std::clamp(values[size_t(i)] * inverse, -1.0f, 1.0f);
      const uint8_t code = rounder.code(scaled);
      packed[i / 2] |= uint8_t((i % 2 == 0) ? code << 4 : code);
    }
  }
  q.codes = codes;
  q.code_values = f32_tensor(quant4_code_values(format).data(), 16, {16});

  if (!double_quant) {
    q.absmax = f32_tensor(absmax.data(), blocks, {blocks});
  } else {
    // Subtract the mean so the scales are centred and signed, then store them as 8-bit indices
    // into the dynamic map with one fp32 scale per nested block.
    double total = 0;
    for (float a : absmax) total += a;
    const float offset = blocks > 0 ? float(total / double(blocks)) : 0.0f;
    const int64_t nested_blocks = (blocks + q.nested_blocksize - 1) / q.nested_blocksize;
    std::vector<float> centred(static_cast<size_t>(blocks)), nested(static_cast<size_t>(nested_blocks), 0.0f);
    for (int64_t j = 0; j < blocks; ++j) centred[size_t(j)] = absmax[size_t(j)] - offset;
    for (int64_t j = 0; j < blocks; ++j)
      nested[size_t(j / q.nested_blocksize)] =
          std::max(nested[size_t(j / q.nested_blocksize)], std::fabs(centred[size_t(j)]));
    const auto& dynamic = dynamic_map_8bit();
    const auto dynamic_midpoints = midpoints_of(dynamic);
    Tensor quantized = Tensor::empty({blocks}, DType::u8);
    uint8_t* indices = quantized.data<uint8_t>();
    for (int64_t j = 0; j < blocks; ++j) {
      const float scale = std::max(nested[size_t(j / q.nested_blocksize)], 1e-38f);
      const float scaled = std::clamp(centred[size_t(j)] / scale, -1.0f, 1.0f);
      indices[j] = uint8_t(nearest_index(dynamic_midpoints, scaled));
    }
    q.absmax = quantized;
    q.nested_absmax = f32_tensor(nested.data(), nested_blocks, {nested_blocks});
    q.nested_code_values = f32_tensor(dynamic.data(), 256, {256});
    q.nested_offset = offset;
  }
  return weight.device().is_cpu() ? q : q.to(weight.device());
}

Tensor dequantize_4bit_absmax(const Quantized4Bit& q) {
  q.validate("dequantize_4bit_absmax");
  return q.double_quant ? decoded_absmax(q) : clone(q.absmax);
}

Tensor dequantize_4bit(const Quantized4Bit& q) {
  q.validate("dequantize_4bit");
  Tensor out = Tensor::empty(q.shape, DType::f32, q.device());
  if (q.numel() == 0) return out;
  LAMINA_DISPATCH(q.device(), quant4_dequantize(out, q));
  return out;
}

Tensor matmul_4bit(const Tensor& x, const Quantized4Bit& q) { return fused_product("matmul_4bit", x, q, false); }

Tensor matmul_4bit_input_grad(const Tensor& grad_out, const Quantized4Bit& q) {
  return fused_product("matmul_4bit_input_grad", grad_out, q, true);
}

}  // namespace lamina::ops
