// Reading and writing transformers' bitsandbytes 4-bit checkpoints (models/io/bnb4bit.h).
#include "models/io/bnb4bit.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <regex>

#include "ops/ops.h"

namespace lamina::bnb4bit {
namespace {

const char* kQuantStateMarker = ".quant_state.bitsandbytes__";

// Python's repr of a float: the shortest digits that round-trip, in fixed notation when the
// decimal exponent is in [-4, 16), otherwise d.ddde-XX with at least two exponent digits;
// a whole number keeps ".0".
std::string python_float_repr(double value) {
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
  const std::string text(buffer, result.ptr);
  const size_t e = text.find('e');
  std::string mantissa = text.substr(0, e);
  const int exponent = std::stoi(text.substr(e + 1));
  std::string sign;
  if (mantissa[0] == '-') {
    sign = "-";
    mantissa.erase(0, 1);
  }
  std::string digits;
  for (char c : mantissa)
    if (c != '.') digits += c;
  if (exponent >= -4 && exponent < 16) {
    std::string out;
    if (exponent < 0) {
      out = "0." + std::string(size_t(-exponent - 1), '0') + digits;
    } else if (size_t(exponent) + 1 >= digits.size()) {
      out = digits + std::string(size_t(exponent) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exponent) + 1) + "." + digits.substr(size_t(exponent) + 1);
    }
    return sign + out;
  }
  std::string out = digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  const int magnitude = exponent < 0 ? -exponent : exponent;
  out += std::string("e") + (exponent < 0 ? "-" : "+") + (magnitude < 10 ? "0" : "") + std::to_string(magnitude);
  return sign + out;
}

// The raw bytes of any tensor, as a contiguous u8 tensor of shape `shape` (a quant_storage of
// bf16 or f32 stores the same bytes under another dtype).
Tensor bytes_of(const Tensor& t, const Shape& shape) {
  const Tensor source = ops::contiguous(host_mirror(t));
  Tensor out = Tensor::empty(shape, DType::u8);
  LAMINA_CHECK(int64_t(source.nbytes()) == out.numel(), "bytes_of: ", source.nbytes(), " bytes do not fill ", shape);
  if (out.numel() > 0) std::memcpy(out.raw_data(), source.raw_data(), source.nbytes());
  return out;
}

Tensor text_tensor(const std::string& text) {
  Tensor out = Tensor::empty({int64_t(text.size())}, DType::u8);
  if (!text.empty()) std::memcpy(out.raw_data(), text.data(), text.size());
  return out;
}

Tensor read_f32(const safetensors::Checkpoint& checkpoint, const std::string& name, int64_t count,
                const std::string& what) {
  LAMINA_CHECK(checkpoint.contains(name), what, ": missing tensor '", name, "'");
  Tensor t = checkpoint.read(name);
  LAMINA_CHECK(t.dtype() == DType::f32, what, ": '", name, "' must be F32, got ", dtype_name(t.dtype()));
  LAMINA_CHECK(t.numel() == count, what, ": '", name, "' holds ", t.numel(), " values, expected ", count);
  return ops::clone(t).view({count});
}

}  // namespace

json::Value quantization_config_json(const QuantizationConfig& config) {
  json::Value block = json::Object{};
  block.set("quant_method", "bitsandbytes");
  block.set("load_in_4bit", true);
  block.set("load_in_8bit", false);
  block.set("_load_in_4bit", true);
  block.set("_load_in_8bit", false);
  block.set("bnb_4bit_quant_type", ops::quant4_format_name(config.format));
  block.set("bnb_4bit_use_double_quant", config.double_quant);
  block.set("bnb_4bit_compute_dtype", config.compute_dtype);
  block.set("bnb_4bit_quant_storage", config.quant_storage);
  block.set("llm_int8_skip_modules", nullptr);
  block.set("llm_int8_threshold", 6.0);
  block.set("llm_int8_has_fp16_weight", false);
  block.set("llm_int8_enable_fp32_cpu_offload", false);
  return block;
}

std::optional<QuantizationConfig> read_quantization_config(const json::Value& config, const std::string& source) {
  const json::Value* block = config.find("quantization_config", source);
  if (block == nullptr || block->is_null()) return std::nullopt;
  const std::string what = source + ": quantization_config";
  const json::Value* method = block->find("quant_method", what);
  if (method == nullptr || method->as_string(what + ": quant_method") != "bitsandbytes") return std::nullopt;
  const json::Value* load_4bit = block->find("load_in_4bit", what);
  if (load_4bit == nullptr) load_4bit = block->find("_load_in_4bit", what);
  if (load_4bit == nullptr || !load_4bit->as_bool(what + ": load_in_4bit")) return std::nullopt;
  QuantizationConfig out;
  if (const json::Value* type = block->find("bnb_4bit_quant_type", what))
    out.format = ops::quant4_format_from_name(type->as_string(what + ": bnb_4bit_quant_type"),
                                              what + ": bnb_4bit_quant_type");
  if (const json::Value* dq = block->find("bnb_4bit_use_double_quant", what))
    out.double_quant = dq->as_bool(what + ": bnb_4bit_use_double_quant");
  if (const json::Value* dtype = block->find("bnb_4bit_compute_dtype", what); dtype && dtype->is_string())
    out.compute_dtype = dtype->as_string();
  if (const json::Value* storage = block->find("bnb_4bit_quant_storage", what); storage && storage->is_string())
    out.quant_storage = storage->as_string();
  return out;
}

bool is_default_quantized_weight(const std::string& name) {
  static const std::regex pattern(R"(model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight)");
  return std::regex_match(name, pattern);
}

std::string torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    default: throw Error(std::string("bnb4bit: no 4-bit source dtype ") + dtype_name(dtype));
  }
}

DType dtype_from_torch_name(const std::string& name, const std::string& what) {
  const std::string bare = name.rfind("torch.", 0) == 0 ? name.substr(6) : name;
  if (bare == "float32" || bare == "float") return DType::f32;
  if (bare == "bfloat16") return DType::bf16;
  if (bare == "float16" || bare == "half") return DType::f16;
  throw Error(what + ": unsupported dtype '" + name + "' (expected float32, bfloat16 or float16)");
}

std::string quant_state_json(const ops::Quantized4Bit& q) {
  std::string out = "{\"quant_type\": \"" + std::string(ops::quant4_format_name(q.format)) +
                    "\", \"blocksize\": " + std::to_string(q.blocksize) + ", \"dtype\": \"" +
                    torch_dtype_name(q.dtype) + "\", \"shape\": [" + std::to_string(q.shape.at(0)) + ", " +
                    std::to_string(q.shape.at(1)) + "]";
  if (q.double_quant)
    out += ", \"nested_blocksize\": " + std::to_string(q.nested_blocksize) +
           ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(double(q.nested_offset));
  return out + "}";
}

std::string quant_state_key(const std::string& weight_name, ops::Quant4Format format) {
  return weight_name + kQuantStateMarker + ops::quant4_format_name(format);
}

void append_quantized_weight(safetensors::NamedTensors& tensors, const std::string& weight_name,
                             const ops::Quantized4Bit& weight) {
  weight.validate("bnb4bit: " + weight_name);
  const ops::Quantized4Bit q = weight.to(Device::cpu());
  tensors.emplace_back(weight_name, q.codes);
  tensors.emplace_back(weight_name + ".absmax", q.absmax);
  tensors.emplace_back(weight_name + ".quant_map", q.code_values);
  if (q.double_quant) {
    tensors.emplace_back(weight_name + ".nested_absmax", q.nested_absmax);
    tensors.emplace_back(weight_name + ".nested_quant_map", q.nested_code_values);
  }
  tensors.emplace_back(quant_state_key(weight_name, q.format), text_tensor(quant_state_json(q)));
}

std::vector<std::string> quantized_weight_names(const safetensors::Checkpoint& checkpoint) {
  std::vector<std::string> names;
  for (const std::string& name : checkpoint.names()) {
    const size_t at = name.find(kQuantStateMarker);
    if (at != std::string::npos) names.push_back(name.substr(0, at));
  }
  std::sort(names.begin(), names.end());
  return names;
}

ops::Quantized4Bit read_quantized_weight(const safetensors::Checkpoint& checkpoint, const std::string& weight_name) {
  const std::string what = checkpoint.directory() + ": " + weight_name;
  std::string state_key;
  for (const char* format : {"nf4", "fp4"})
    if (checkpoint.contains(weight_name + kQuantStateMarker + format)) state_key = weight_name + kQuantStateMarker + format;
  LAMINA_CHECK(!state_key.empty(), what, ": no quant_state.bitsandbytes__nf4 (or __fp4) tensor; not a 4-bit weight");
  const std::vector<uint8_t> state_bytes = checkpoint.read(state_key).to_vector<uint8_t>();
  const json::Value state =
      json::parse(std::string(state_bytes.begin(), state_bytes.end()), state_key);

  ops::Quantized4Bit q;
  q.format = ops::quant4_format_from_name(state.at("quant_type", state_key).as_string(state_key + ": quant_type"),
                                          state_key + ": quant_type");
  LAMINA_CHECK(state_key.substr(state_key.size() - 3) == ops::quant4_format_name(q.format), what, ": the key says ",
               state_key.substr(state_key.size() - 3), " but quant_type is ", ops::quant4_format_name(q.format));
  q.blocksize = state.at("blocksize", state_key).as_int64(state_key + ": blocksize");
  q.dtype = dtype_from_torch_name(state.at("dtype", state_key).as_string(state_key + ": dtype"), state_key + ": dtype");
  const json::Array& shape = state.at("shape", state_key).as_array(state_key + ": shape");
  LAMINA_CHECK(shape.size() == 2, what, ": quant_state shape must have 2 dims, got ", shape.size());
  q.shape = Shape({shape[0].as_int64(state_key + ": shape"), shape[1].as_int64(state_key + ": shape")});
  LAMINA_CHECK(q.shape[0] >= 0 && q.shape[1] >= 0, what, ": negative shape in quant_state");
  q.double_quant = state.find("nested_blocksize", state_key) != nullptr;
  if (q.double_quant) {
    q.nested_blocksize = state.at("nested_blocksize", state_key).as_int64(state_key + ": nested_blocksize");
    q.nested_offset = float(state.at("nested_offset", state_key).as_double(state_key + ": nested_offset"));
    if (const json::Value* nested_dtype = state.find("nested_dtype", state_key))
      LAMINA_CHECK(nested_dtype->as_string() == "float32", what, ": nested_dtype '", nested_dtype->as_string(),
                   "' is not supported (expected float32)");
    LAMINA_CHECK(q.nested_blocksize > 0, what, ": nested_blocksize must be positive");
  }
  LAMINA_CHECK(q.blocksize >= 32 && q.blocksize <= 4096 && (q.blocksize & (q.blocksize - 1)) == 0, what,
               ": blocksize ", q.blocksize, " is not a power of two in [32, 4096]");

  const int64_t packed = (q.numel() + 1) / 2;
  LAMINA_CHECK(checkpoint.contains(weight_name), what, ": missing the packed weight");
  const safetensors::TensorInfo& info = checkpoint.info(weight_name);
  LAMINA_CHECK(int64_t(info.end - info.begin) == packed, what, ": the packed weight holds ", info.end - info.begin,
               " bytes, but shape ", q.shape, " needs ", packed);
  q.codes = bytes_of(checkpoint.read(weight_name), {packed, 1});
  q.code_values = read_f32(checkpoint, weight_name + ".quant_map", 16, what);
  const std::string absmax_name = weight_name + ".absmax";
  LAMINA_CHECK(checkpoint.contains(absmax_name), what, ": missing tensor '", absmax_name, "'");
  const Tensor absmax = checkpoint.read(absmax_name);
  LAMINA_CHECK(absmax.numel() == q.block_count(), what, ": '", absmax_name, "' holds ", absmax.numel(),
               " values, expected ", q.block_count());
  if (q.double_quant) {
    LAMINA_CHECK(absmax.dtype() == DType::u8, what, ": '", absmax_name, "' must be U8 with double quantization, got ",
                 dtype_name(absmax.dtype()));
    q.absmax = ops::clone(absmax).view({q.block_count()});
    q.nested_absmax = read_f32(checkpoint, weight_name + ".nested_absmax",
                               (q.block_count() + q.nested_blocksize - 1) / q.nested_blocksize, what);
    q.nested_code_values = read_f32(checkpoint, weight_name + ".nested_quant_map", 256, what);
  } else {
    LAMINA_CHECK(absmax.dtype() == DType::f32, what, ": '", absmax_name, "' must be F32, got ",
                 dtype_name(absmax.dtype()));
    q.absmax = ops::clone(absmax).view({q.block_count()});
  }
  q.validate(what);
  return q;
}

std::map<std::string, ops::Quantized4Bit> load_quantized_weights(const std::string& directory) {
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(directory);
  std::map<std::string, ops::Quantized4Bit> weights;
  for (const std::string& name : quantized_weight_names(checkpoint))
    weights.emplace(name, read_quantized_weight(checkpoint, name));
  return weights;
}

}  // namespace lamina::bnb4bit
