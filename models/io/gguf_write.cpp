// The GGUF writer and ggml's reference quantizers (see gguf_write.h).
#include "models/io/gguf_write.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "ops/ggml_blocks.h"
#include "ops/ops.h"
#include "tensor/dtype.h"
#include "tensor/error.h"

namespace lamina::gguf {

// ---- metadata values

namespace {

Value fixed(ValueType type, uint64_t bits) {
  Value value;
  value.type = type;
  value.bits = bits;
  return value;
}

// Little-endian appends.
void put(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char((value >> (8 * i)) & 0xFF);
}
void put_string(std::string& out, const std::string& text) {
  put(out, text.size(), 8);
  out += text;
}

int fixed_bytes(ValueType type) {
  switch (type) {
    case ValueType::u8: case ValueType::i8: case ValueType::boolean: return 1;
    case ValueType::u16: case ValueType::i16: return 2;
    case ValueType::u32: case ValueType::i32: case ValueType::f32: return 4;
    case ValueType::u64: case ValueType::i64: case ValueType::f64: return 8;
    default: return 0;
  }
}

void put_value(std::string& out, const Value& value, const std::string& where) {
  if (value.type == ValueType::string) {
    put_string(out, value.text);
  } else if (value.type == ValueType::array) {
    put(out, uint32_t(value.element_type), 4);
    put(out, value.elements.size(), 8);
    for (size_t i = 0; i < value.elements.size(); ++i) {
      const Value& element = value.elements[i];
      LAMINA_CHECK(element.type == value.element_type, "gguf writer: ", where, "[", i, "] is ",
                   value_type_name(element.type), " in an array of ", value_type_name(value.element_type));
      put_value(out, element, where);
    }
  } else {
    const int bytes = fixed_bytes(value.type);
    LAMINA_CHECK(bytes > 0, "gguf writer: ", where, ": unknown value type ", uint32_t(value.type));
    LAMINA_CHECK(value.type != ValueType::boolean || value.bits <= 1, "gguf writer: ", where, ": a bool holding ",
                 value.bits);
    put(out, value.bits, bytes);
  }
}

}  // namespace

Value u8_value(uint8_t value) { return fixed(ValueType::u8, value); }
Value i8_value(int8_t value) { return fixed(ValueType::i8, uint64_t(int64_t(value))); }
Value u16_value(uint16_t value) { return fixed(ValueType::u16, value); }
Value i16_value(int16_t value) { return fixed(ValueType::i16, uint64_t(int64_t(value))); }
Value u32_value(uint32_t value) { return fixed(ValueType::u32, value); }
Value i32_value(int32_t value) { return fixed(ValueType::i32, uint64_t(int64_t(value))); }
Value u64_value(uint64_t value) { return fixed(ValueType::u64, value); }
Value i64_value(int64_t value) { return fixed(ValueType::i64, uint64_t(value)); }
Value f32_value(float value) { return fixed(ValueType::f32, detail::float_bits(value)); }
Value f64_value(double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return fixed(ValueType::f64, bits);
}
Value bool_value(bool value) { return fixed(ValueType::boolean, value ? 1 : 0); }
Value string_value(std::string value) {
  Value out;
  out.type = ValueType::string;
  out.text = std::move(value);
  return out;
}
Value array_value(ValueType element_type, std::vector<Value> elements) {
  Value out;
  out.type = ValueType::array;
  out.element_type = element_type;
  out.elements = std::move(elements);
  return out;
}
Value string_array(const std::vector<std::string>& values) {
  std::vector<Value> elements;
  elements.reserve(values.size());
  for (const std::string& value : values) elements.push_back(string_value(value));
  return array_value(ValueType::string, std::move(elements));
}
Value i32_array(const std::vector<int32_t>& values) {
  std::vector<Value> elements;
  elements.reserve(values.size());
  for (int32_t value : values) elements.push_back(i32_value(value));
  return array_value(ValueType::i32, std::move(elements));
}
Value f32_array(const std::vector<float>& values) {
  std::vector<Value> elements;
  elements.reserve(values.size());
  for (float value : values) elements.push_back(f32_value(value));
  return array_value(ValueType::f32, std::move(elements));
}

// ---- quantizers

namespace {

// A block scale as the little-endian f16 ggml stores.
void put_half(uint8_t* out, float value) {
  const uint16_t bits = f16::from_float(value);
  out[0] = uint8_t(bits & 0xFF);
  out[1] = uint8_t(bits >> 8);
}

// Rounds to nearest, half to even (ggml's nearest_int for the K-quants), then clamps to
// [low, high]; clamping in float keeps a huge or NaN input (NaN gives `low`) from an undefined
// conversion to int.
int nearest_even_clamped(float value, int low, int high) {
  const float rounded = std::nearbyint(value);
  if (!(rounded >= float(low))) return low;
  if (rounded > float(high)) return high;
  return int(rounded);
}

}  // namespace

// ggml rounds x * id to f32 before adding 8.5. A compiler allowed to contract (GCC does across
// statements with -march=native) would fuse the two into one FMA that rounds once, and about
// one Q4_0 block in 10^4 would get another nibble; the product goes through a volatile to keep
// the two roundings (in Q4_1 too, whose (x - min) * id + 0.5 could fuse the same way).

void quantize_block_q8_0(const float* values, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(values[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_half(out, d);
  for (int j = 0; j < 32; ++j) {
    const float scaled = values[j] * id;
    out[2 + j] = uint8_t(int8_t(std::roundf(scaled)));
  }
}

void quantize_block_q4_0(const float* values, uint8_t* out) {
  // The signed value of largest magnitude (the first one on ties) maps exactly to q = 0.
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < 32; ++j) {
    if (amax < std::fabs(values[j])) {
      amax = std::fabs(values[j]);
      max = values[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_half(out, d);
  const auto nibble = [id](float value) {
    const volatile float scaled = value * id;
    const float shifted = scaled + 8.5f;
    return uint8_t(std::min(15, int(int8_t(shifted))));
  };
  for (int j = 0; j < 16; ++j) out[2 + j] = uint8_t(nibble(values[j]) | (nibble(values[j + 16]) << 4));
}

void quantize_block_q4_1(const float* values, uint8_t* out) {
  float min = values[0], max = values[0];
  for (int j = 1; j < 32; ++j) {
    min = std::min(min, values[j]);
    max = std::max(max, values[j]);
  }
  const float d = (max - min) / 15.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_half(out, d);
  put_half(out + 2, min);
  // (x - min) * id is at least 0, so truncating after adding 0.5 rounds half up.
  const auto nibble = [id, min](float value) {
    const volatile float scaled = (value - min) * id;
    const float shifted = scaled + 0.5f;
    return uint8_t(std::min(15, int(int8_t(shifted))));
  };
  for (int j = 0; j < 16; ++j) out[4 + j] = uint8_t(nibble(values[j]) | (nibble(values[j + 16]) << 4));
}

void quantize_block_q4_k(const float* values, uint8_t* out) {
  // Each sub-block's scale and (non-negative) min, as if stored exactly.
  float scales[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
  for (int j = 0; j < 8; ++j) {
    const float* sub = values + 32 * j;
    float low = sub[0], high = sub[0];
    for (int l = 1; l < 32; ++l) {
      low = std::min(low, sub[l]);
      high = std::max(high, sub[l]);
    }
    low = std::min(low, 0.0f);  // the decoder subtracts dmin * mn, and mn cannot be negative
    scales[j] = (high - low) / 15.0f;
    mins[j] = -low;
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inverse_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inverse_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t scale_codes[8], min_codes[8];
  for (int j = 0; j < 8; ++j) {
    scale_codes[j] = uint8_t(nearest_even_clamped(inverse_scale * scales[j], 0, 63));
    min_codes[j] = uint8_t(nearest_even_clamped(inverse_min * mins[j], 0, 63));
  }
  std::memset(out, 0, 144);
  put_half(out, max_scale / 63.0f);
  put_half(out + 2, max_min / 63.0f);
  // 12 bytes of 6-bit pairs: sub-blocks 0-3 whole in bytes 0-7, sub-blocks 4-7 as low nibbles in
  // bytes 8-11 and their top two bits in the spare top bits of bytes 0-7.
  uint8_t* packed = out + 4;
  for (int j = 0; j < 4; ++j) {
    packed[j] = scale_codes[j];
    packed[j + 4] = min_codes[j];
  }
  for (int j = 4; j < 8; ++j) {
    packed[j + 4] = uint8_t((scale_codes[j] & 0xF) | ((min_codes[j] & 0xF) << 4));
    packed[j - 4] |= uint8_t((scale_codes[j] >> 4) << 6);
    packed[j] |= uint8_t((min_codes[j] >> 4) << 6);
  }
  // The codes against the scales the decoder will compute, f16 and 6-bit rounding included.
  const float d = ops::ggml::half_to_float(out), dmin = ops::ggml::half_to_float(out + 2);
  uint8_t codes[256] = {};
  for (int j = 0; j < 8; ++j) {
    const float step = d * float(scale_codes[j]);
    if (step == 0.0f) continue;
    const float offset = dmin * float(min_codes[j]);
    for (int l = 0; l < 32; ++l)
      codes[32 * j + l] = uint8_t(nearest_even_clamped((values[32 * j + l] + offset) / step, 0, 15));
  }
  // Each 32 bytes hold two sub-blocks: the first in the low nibbles, the second in the high.
  uint8_t* nibbles = out + 16;
  for (int chunk = 0; chunk < 4; ++chunk)
    for (int l = 0; l < 32; ++l)
      nibbles[32 * chunk + l] = uint8_t(codes[64 * chunk + l] | (codes[64 * chunk + 32 + l] << 4));
}

void quantize_block_q6_k(const float* values, uint8_t* out) {
  // Each sub-block's scale maps its value of largest magnitude (the first on ties) to -32, the
  // end of the 6-bit range that has no positive twin.
  float scales[16], max_scale = 0.0f, max_scale_magnitude = 0.0f;
  for (int j = 0; j < 16; ++j) {
    float magnitude = 0.0f, extreme = 0.0f;
    for (int l = 0; l < 16; ++l) {
      if (magnitude < std::fabs(values[16 * j + l])) {
        magnitude = std::fabs(values[16 * j + l]);
        extreme = values[16 * j + l];
      }
    }
    scales[j] = extreme / -32.0f;
    if (max_scale_magnitude < std::fabs(scales[j])) {
      max_scale_magnitude = std::fabs(scales[j]);
      max_scale = scales[j];
    }
  }
  std::memset(out, 0, 210);
  if (max_scale == 0.0f) return;  // all zeros: d = 0
  const float inverse = -128.0f / max_scale;
  int8_t* scale_codes = reinterpret_cast<int8_t*>(out + 192);
  for (int j = 0; j < 16; ++j) scale_codes[j] = int8_t(nearest_even_clamped(inverse * scales[j], -128, 127));
  put_half(out + 208, 1.0f / inverse);
  const float d = ops::ggml::half_to_float(out + 208);
  uint8_t codes[256];  // q + 32, 0..63
  for (int j = 0; j < 16; ++j) {
    const float step = d * float(scale_codes[j]);
    for (int l = 0; l < 16; ++l)
      codes[16 * j + l] =
          step == 0.0f ? 32 : uint8_t(nearest_even_clamped(values[16 * j + l] / step, -32, 31) + 32);
  }
  // Per 128 values: ql holds low nibbles (values l and l + 64 share byte l, values l + 32 and
  // l + 96 share byte l + 32), qh the top two bits of values l, l + 32, l + 64, l + 96 in byte l.
  for (int half = 0; half < 2; ++half) {
    const uint8_t* q = codes + 128 * half;
    uint8_t* low = out + 64 * half;
    uint8_t* high = out + 128 + 32 * half;
    for (int l = 0; l < 32; ++l) {
      low[l] = uint8_t((q[l] & 0xF) | ((q[l + 64] & 0xF) << 4));
      low[l + 32] = uint8_t((q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4));
      high[l] = uint8_t((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
    }
  }
}

bool writable_type(TensorType type) {
  switch (type) {
    case TensorType::f32: case TensorType::f16: case TensorType::bf16: case TensorType::q8_0: case TensorType::q4_0:
    case TensorType::q4_1: case TensorType::q4_k: case TensorType::q6_k:
      return true;
    default:
      return false;
  }
}

std::vector<uint8_t> encode(TensorType type, const float* values, uint64_t count) {
  LAMINA_CHECK(writable_type(type), "gguf writer: cannot write tensors of type ", tensor_type_name(uint32_t(type)));
  const uint64_t block = block_elements(type);
  LAMINA_CHECK(count % block == 0, "gguf writer: ", count, " values are not whole blocks of ", block, " for ",
               tensor_type_name(uint32_t(type)));
  std::vector<uint8_t> out(size_t(count / block * block_bytes(type)));
  uint8_t* to = out.data();
  switch (type) {
    case TensorType::f32:
      if (count != 0) std::memcpy(to, values, size_t(count) * 4);  // the host is little-endian, as GGUF is
      break;
    case TensorType::f16:
      for (uint64_t i = 0; i < count; ++i) {
        const uint16_t bits = f16::from_float(values[i]);
        to[2 * i] = uint8_t(bits & 0xFF), to[2 * i + 1] = uint8_t(bits >> 8);
      }
      break;
    case TensorType::bf16:
      for (uint64_t i = 0; i < count; ++i) {
        const uint16_t bits = bf16::from_float(values[i]);
        to[2 * i] = uint8_t(bits & 0xFF), to[2 * i + 1] = uint8_t(bits >> 8);
      }
      break;
    case TensorType::q8_0:
      for (uint64_t b = 0; b < count / 32; ++b) quantize_block_q8_0(values + 32 * b, to + 34 * b);
      break;
    case TensorType::q4_0:
      for (uint64_t b = 0; b < count / 32; ++b) quantize_block_q4_0(values + 32 * b, to + 18 * b);
      break;
    case TensorType::q4_1:
      for (uint64_t b = 0; b < count / 32; ++b) quantize_block_q4_1(values + 32 * b, to + 20 * b);
      break;
    case TensorType::q4_k:
      for (uint64_t b = 0; b < count / 256; ++b) quantize_block_q4_k(values + 256 * b, to + 144 * b);
      break;
    case TensorType::q6_k:
      for (uint64_t b = 0; b < count / 256; ++b) quantize_block_q6_k(values + 256 * b, to + 210 * b);
      break;
    default:
      break;
  }
  return out;
}

// ---- the writer

namespace {

uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

// The temporary file: removed unless renamed into place.
class PartialFile {
 public:
  explicit PartialFile(const std::string& path)
      : path_(path), partial_(path + ".partial-" + std::to_string(::getpid())) {
    file_ = std::fopen(partial_.c_str(), "wb");
    LAMINA_CHECK(file_ != nullptr, "gguf writer: cannot write ", partial_, ": ", std::strerror(errno));
  }
  ~PartialFile() {
    if (file_ != nullptr) std::fclose(file_);
    if (!committed_) std::remove(partial_.c_str());
  }
  PartialFile(const PartialFile&) = delete;
  PartialFile& operator=(const PartialFile&) = delete;

  void write(const void* data, size_t bytes) {
    if (bytes == 0) return;
    LAMINA_CHECK(std::fwrite(data, 1, bytes, file_) == bytes, "gguf writer: cannot write ", partial_, ": ",
                 std::strerror(errno));
    written_ += bytes;
  }
  void pad_to(uint64_t alignment) {
    static const char zeros[64] = {};
    while (written_ % alignment != 0) write(zeros, size_t(std::min<uint64_t>(64, alignment - written_ % alignment)));
  }
  uint64_t written() const { return written_; }

  void commit() {
    LAMINA_CHECK(std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0, "gguf writer: cannot write ", partial_, ": ",
                 std::strerror(errno));
    const int closed = std::fclose(file_);
    file_ = nullptr;
    LAMINA_CHECK(closed == 0, "gguf writer: cannot write ", partial_, ": ", std::strerror(errno));
    LAMINA_CHECK(std::rename(partial_.c_str(), path_.c_str()) == 0, "gguf writer: cannot rename ", partial_, " to ",
                 path_, ": ", std::strerror(errno));
    committed_ = true;
    // The rename itself reaches the disk with the folder's entry.
    const std::filesystem::path parent = std::filesystem::path(path_).parent_path();
    const std::filesystem::path folder = parent.empty() ? std::filesystem::path(".") : parent;
    const int descriptor = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY);
    if (descriptor >= 0) {
      ::fsync(descriptor);
      ::close(descriptor);
    }
  }

 private:
  std::string path_, partial_;
  std::FILE* file_ = nullptr;
  uint64_t written_ = 0;
  bool committed_ = false;
};

}  // namespace

Writer::Writer() { add_metadata("general.alignment", u32_value(uint32_t(alignment_))); }

void Writer::add_metadata(const std::string& key, Value value) {
  LAMINA_CHECK(!key.empty() && key.size() < 65536, "gguf writer: a metadata key must be 1 to 65535 bytes, got ",
               key.size());
  for (const auto& [existing, _] : metadata_)
    LAMINA_CHECK(existing != key, "gguf writer: metadata '", key, "' is given twice");
  metadata_.emplace_back(key, std::move(value));
}

void Writer::add_tensor(const std::string& name, std::vector<uint64_t> dims, TensorType type, TensorSource source) {
  LAMINA_CHECK(!name.empty() && name.size() < 64, "gguf writer: tensor name '", name,
               "' must be 1 to 63 bytes (ggml's limit)");
  for (const PendingTensor& tensor : tensors_)
    LAMINA_CHECK(tensor.name != name, "gguf writer: tensor '", name, "' is given twice");
  LAMINA_CHECK(writable_type(type), "gguf writer: tensor '", name, "': cannot write type ",
               tensor_type_name(uint32_t(type)));
  LAMINA_CHECK(!dims.empty() && dims.size() <= 4, "gguf writer: tensor '", name, "' has ", dims.size(),
               " dims (1 to 4 allowed)");
  const uint64_t block = block_elements(type);
  LAMINA_CHECK(dims[0] % block == 0, "gguf writer: tensor '", name, "': its rows of ", dims[0],
               " values are not whole blocks of ", block, " for ", tensor_type_name(uint32_t(type)));
  uint64_t elements = 1;
  for (uint64_t dim : dims) {
    LAMINA_CHECK(dim == 0 || elements <= UINT64_MAX / dim, "gguf writer: tensor '", name, "' is too large");
    elements *= dim;
  }
  tensors_.push_back({name, std::move(dims), type, elements / block * block_bytes(type), std::move(source)});
}

void Writer::add_tensor(const std::string& name, const Tensor& tensor, TensorType type) {
  std::vector<uint64_t> dims;
  for (int64_t axis = tensor.dim() - 1; axis >= 0; --axis) dims.push_back(uint64_t(tensor.shape()[size_t(axis)]));
  add_tensor(name, std::move(dims), type, [tensor, type]() {
    const Tensor values = tensor.dtype() == DType::f32 ? ops::contiguous(tensor) : ops::cast(tensor, DType::f32);
    return encode(type, values.data<float>(), uint64_t(values.numel()));
  });
}

void Writer::write(const std::string& path, const std::function<void(const std::string&)>& progress) const {
  std::string header;
  header += "GGUF";
  put(header, 3, 4);
  put(header, tensors_.size(), 8);
  put(header, metadata_.size(), 8);
  for (const auto& [key, value] : metadata_) {
    put_string(header, key);
    put(header, uint32_t(value.type), 4);
    put_value(header, value, key);
  }
  uint64_t offset = 0;
  for (const PendingTensor& tensor : tensors_) {
    put_string(header, tensor.name);
    put(header, tensor.dims.size(), 4);
    for (uint64_t dim : tensor.dims) put(header, dim, 8);
    put(header, uint32_t(tensor.type), 4);
    put(header, offset, 8);
    offset = round_up(offset + tensor.bytes, alignment_);
  }

  PartialFile file(path);
  file.write(header.data(), header.size());
  file.pad_to(alignment_);
  const uint64_t data_start = file.written();
  for (const PendingTensor& tensor : tensors_) {
    if (progress) progress(tensor.name);
    const std::vector<uint8_t> bytes = tensor.source();
    LAMINA_CHECK(bytes.size() == tensor.bytes, "gguf writer: tensor '", tensor.name, "' gave ", bytes.size(),
                 " bytes where its dims and type need ", tensor.bytes);
    file.write(bytes.data(), bytes.size());
    file.pad_to(alignment_);
  }
  LAMINA_CHECK(file.written() == data_start + offset, "gguf writer: internal size mismatch writing ", path);
  file.commit();
}

}  // namespace lamina::gguf
