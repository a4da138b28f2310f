// Llama config and weights from a GGUF file (see gguf_llama.h).
#include "models/io/gguf_llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "ops/ops.h"

namespace lamina::gguf {

namespace {

// Metadata accessors that name the file and the key in errors.
struct Keys {
  const File& file;

  std::string where(const std::string& key) const { return str_cat("gguf: ", file.path(), ": metadata '", key, "'"); }
  const Value& required(const std::string& key) const {
    const Value* value = file.find_metadata(key);
    LAMINA_CHECK(value != nullptr, "gguf: ", file.path(), ": metadata '", key,
                 "' is missing (needed for a Llama model)");
    return *value;
  }
  int64_t size(const std::string& key) const {
    const uint64_t value = required(key).as_u64(where(key));
    LAMINA_CHECK(value <= uint64_t(llama::kMaxConfigSize), where(key), " is ", value, ", beyond lamina's limit of ",
                 llama::kMaxConfigSize);
    return int64_t(value);
  }
  std::optional<int64_t> optional_size(const std::string& key) const {
    if (file.find_metadata(key) == nullptr) return std::nullopt;
    return size(key);
  }
  double number(const std::string& key) const { return required(key).as_f64(where(key)); }
};

// GGUF layer-tensor suffixes and their Hugging Face counterparts.
const std::map<std::string, std::string>& layer_names() {
  static const std::map<std::string, std::string> names = {
      {"attn_norm.weight", "input_layernorm.weight"},    {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},       {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  return names;
}

std::vector<float> llama3_rope_divisors(const llama::LlamaConfig& config);

// The llama3 RoPE scaling whose divisors are `rope_freqs.weight` (how llama.cpp stores Llama 3.1's
// scaling: a divisor of inv_freq per frequency, formats-and-quantization.md §5.6). The file does
// not keep the four parameters, and only two ratios of them matter (the wavelengths where
// smoothing starts and ends), so: factor = the largest divisor; the original context from
// llama.rope.scaling.original_context_length, else Llama 3.1's 8192; low/high frequency factors
// Llama 3.1's 1 and 4 when they reproduce the divisors, else solved from the smoothed
// frequencies (their 1/divisor is linear in 1/wavelength). Whatever is chosen must give back
// every stored divisor to f32 rounding, or the file is refused: lamina computes RoPE from the
// parameters, and a model must not load with frequencies other than the file's.
Llama3RopeScaling llama3_scaling_from_divisors(const File& file, const llama::LlamaConfig& config) {
  const std::string where = str_cat("gguf: ", file.path(), ": tensor 'rope_freqs.weight'");
  const Tensor stored = file.read("rope_freqs.weight");
  const int64_t frequencies = config.head_dim / 2;
  LAMINA_CHECK(stored.dim() == 1 && stored.shape()[0] == frequencies, where, " has shape ", stored.shape(),
               "; the head dimension ", config.head_dim, " needs [", frequencies, "]");
  const std::vector<double> divisors = stored.to_vector<double>();
  double factor = 1.0;
  for (double divisor : divisors) {
    LAMINA_CHECK(std::isfinite(divisor) && divisor >= 1.0 - 1e-6, where, " holds ", divisor,
                 "; llama3 scaling divides frequencies by values of at least 1");
    factor = std::max(factor, divisor);
  }
  LAMINA_CHECK(factor > 1.0 + 1e-6, where, " divides no frequency (all divisors are 1): expected llama3 scaling");
  const Keys keys{file};
  Llama3RopeScaling scaling;
  scaling.factor = factor;
  scaling.original_max_position = keys.optional_size("llama.rope.scaling.original_context_length").value_or(8192);
  const auto reproduces = [&](const Llama3RopeScaling& candidate) {
    llama::LlamaConfig trial = config;
    trial.rope_scaling = candidate;
    const std::vector<float> computed = llama3_rope_divisors(trial);
    for (int64_t k = 0; k < frequencies; ++k)
      if (std::fabs(double(computed[size_t(k)]) - divisors[size_t(k)]) > 2e-6 * divisors[size_t(k)]) return false;
    return true;
  };
  if (reproduces(scaling)) return scaling;  // Llama 3.1's low 1, high 4

  // Solve: for a smoothed frequency, s = (1/d - 1/F) / (1 - 1/F) = a / wavelength + b with
  // a = context / (high - low) and b = -low / (high - low).
  const double context = double(scaling.original_max_position);
  std::vector<std::pair<double, double>> points;  // (1 / wavelength, s)
  double longest_kept = 0, shortest_divided = std::numeric_limits<double>::infinity();
  for (int64_t k = 0; k < frequencies; ++k) {
    const double wavelength = 2.0 * M_PI * std::pow(config.rope_theta, double(2 * k) / double(config.head_dim));
    const double d = divisors[size_t(k)];
    if (d <= 1.0 + 1e-6) longest_kept = std::max(longest_kept, wavelength);
    else if (d >= factor * (1 - 1e-6)) shortest_divided = std::min(shortest_divided, wavelength);
    else points.push_back({1.0 / wavelength, (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor)});
  }
  double low_wavelength = 0, high_wavelength = 0;  // divided above the first, kept below the second
  if (points.size() >= 2) {
    double mean_x = 0, mean_y = 0;
    for (const auto& [x, y] : points) mean_x += x / double(points.size()), mean_y += y / double(points.size());
    double sxx = 0, sxy = 0;
    for (const auto& [x, y] : points) sxx += (x - mean_x) * (x - mean_x), sxy += (x - mean_x) * (y - mean_y);
    const double a = sxy / sxx, b = mean_y - a * mean_x;
    LAMINA_CHECK(a > 0 && b < 0, where, " holds divisors that no llama3 scaling gives (the smoothed ones do not fall as the wavelength grows)");
    low_wavelength = -a / b;        // s = 0
    high_wavelength = a / (1 - b);  // s = 1
  } else if (points.empty()) {
    // No frequency is smoothed: any boundaries in the gap between kept and divided give these
    // divisors; put them at a third and two thirds of it (geometrically).
    const double upper = shortest_divided, lower = longest_kept > 0 ? longest_kept : upper / 2;
    const double step = std::cbrt(upper / lower);
    high_wavelength = lower * step;
    low_wavelength = lower * step * step;
  }
  LAMINA_CHECK(low_wavelength > high_wavelength && high_wavelength > 0, where,
               " holds divisors that no llama3 scaling (factor ", factor, ") gives");
  scaling.low_freq_factor = context / low_wavelength;
  scaling.high_freq_factor = context / high_wavelength;
  LAMINA_CHECK(reproduces(scaling), where, " holds divisors that no llama3 scaling (factor ", factor,
               ") gives; lamina computes RoPE from the scaling's parameters");
  return scaling;
}

}  // namespace

llama::LlamaConfig llama_config_from_gguf(const File& file) {
  const Keys keys{file};
  const std::string& architecture = keys.required("general.architecture").as_string(keys.where("general.architecture"));
  LAMINA_CHECK(architecture == "llama", "gguf: ", file.path(), ": general.architecture is '", architecture,
               "', not 'llama'");
  llama::LlamaConfig config;
  config.hidden_size = keys.size("llama.embedding_length");
  config.intermediate_size = keys.size("llama.feed_forward_length");
  config.num_hidden_layers = keys.size("llama.block_count");
  config.num_attention_heads = keys.size("llama.attention.head_count");
  config.num_key_value_heads = keys.optional_size("llama.attention.head_count_kv").value_or(config.num_attention_heads);
  config.max_position_embeddings = keys.size("llama.context_length");
  config.rms_norm_eps = keys.number("llama.attention.layer_norm_rms_epsilon");
  config.rope_theta = file.find_metadata("llama.rope.freq_base") ? keys.number("llama.rope.freq_base") : 10000.0;
  LAMINA_CHECK(config.num_attention_heads > 0, keys.where("llama.attention.head_count"), " is 0");
  config.head_dim = keys.optional_size("llama.attention.key_length")
                        .value_or(config.hidden_size / config.num_attention_heads);
  if (const auto value_length = keys.optional_size("llama.attention.value_length"))
    LAMINA_CHECK(*value_length == config.head_dim, keys.where("llama.attention.value_length"), " is ", *value_length,
                 " but the key length is ", config.head_dim, "; lamina needs them equal");
  if (const auto rope_dims = keys.optional_size("llama.rope.dimension_count"))
    LAMINA_CHECK(*rope_dims == config.head_dim, keys.where("llama.rope.dimension_count"), " is ", *rope_dims,
                 " but the head dimension is ", config.head_dim, "; lamina rotates whole heads only");
  if (const Value* scaling = file.find_metadata("llama.rope.scaling.type")) {
    const std::string& type = scaling->as_string(keys.where("llama.rope.scaling.type"));
    LAMINA_CHECK(type == "none", keys.where("llama.rope.scaling.type"), " is '", type,
                 "', a RoPE scaling lamina does not compute");
  }
  if (file.find("rope_freqs.weight") != nullptr) config.rope_scaling = llama3_scaling_from_divisors(file, config);

  // The vocabulary: llama.vocab_size, else the token list, else the embedding's rows.
  if (const auto vocab = keys.optional_size("llama.vocab_size")) {
    config.vocab_size = *vocab;
  } else if (const Value* tokens = file.find_metadata("tokenizer.ggml.tokens")) {
    config.vocab_size = int64_t(tokens->as_array(keys.where("tokenizer.ggml.tokens")).size());
  } else {
    const TensorInfo* embedding = file.find("token_embd.weight");
    LAMINA_CHECK(embedding != nullptr && embedding->dims.size() == 2, "gguf: ", file.path(),
                 ": no llama.vocab_size, tokenizer.ggml.tokens or 2-D token_embd.weight to give the vocabulary size");
    config.vocab_size = int64_t(embedding->dims[1]);
  }
  config.tie_word_embeddings = file.find("output.weight") == nullptr;
  if (const auto bos = keys.optional_size("tokenizer.ggml.bos_token_id")) config.bos_token_id = *bos;
  config.eos_token_ids.clear();
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"})
    if (const auto id = keys.optional_size(key))
      if (std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), *id) == config.eos_token_ids.end())
        config.eos_token_ids.push_back(*id);
  config.pad_token_id = keys.optional_size("tokenizer.ggml.padding_token_id");
  config.dtype = DType::f32;  // what dequantization gives
  try {
    config.validate();
  } catch (const Error& error) {
    throw Error(str_cat("gguf: ", file.path(), ": ", error.what()));
  }
  return config;
}

std::optional<std::string> llama_hf_tensor_name(const std::string& gguf_name) {
  if (gguf_name == "token_embd.weight") return "model.embed_tokens.weight";
  if (gguf_name == "output_norm.weight") return "model.norm.weight";
  if (gguf_name == "output.weight") return "lm_head.weight";
  if (gguf_name.rfind("blk.", 0) != 0) return std::nullopt;
  const size_t dot = gguf_name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return std::nullopt;
  const std::string layer = gguf_name.substr(4, dot - 4);
  if (layer.find_first_not_of("0123456789") != std::string::npos || (layer.size() > 1 && layer[0] == '0'))
    return std::nullopt;
  const auto suffix = layer_names().find(gguf_name.substr(dot + 1));
  if (suffix == layer_names().end()) return std::nullopt;
  return str_cat("model.layers.", layer, ".", suffix->second);
}

namespace {

// Moves the rows of a q or k projection [heads * head_dim, in] between Hugging Face order (row
// h*hd + p*hd/2 + k) and Meta's interleaved order (row h*hd + 2k + p), in f32.
Tensor reorder_rope_rows(const Tensor& weight, int64_t heads, bool to_meta, const char* what) {
  LAMINA_CHECK(weight.dim() == 2 && heads > 0 && weight.shape()[0] % (2 * heads) == 0, what,
               ": expected [heads * head_dim, in] with an even head_dim for ", heads, " heads, got ", weight.shape());
  const Tensor source = weight.dtype() == DType::f32 ? ops::contiguous(weight) : ops::cast(weight, DType::f32);
  const int64_t rows = source.shape()[0], columns = source.shape()[1];
  const int64_t head_dim = rows / heads, half = head_dim / 2;
  Tensor out = Tensor::empty(source.shape(), DType::f32);
  const float* from = source.data<float>();
  float* to = out.data<float>();
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t p = 0; p < 2; ++p)
      for (int64_t k = 0; k < half; ++k) {
        const int64_t hf_row = h * head_dim + p * half + k, meta_row = h * head_dim + 2 * k + p;
        std::memcpy(to + (to_meta ? meta_row : hf_row) * columns, from + (to_meta ? hf_row : meta_row) * columns,
                    size_t(columns) * sizeof(float));
      }
  return out;
}

}  // namespace

Tensor unpermute_meta_rows(const Tensor& weight, int64_t heads) {
  return reorder_rope_rows(weight, heads, false, "unpermute_meta_rows");
}

std::map<std::string, const TensorInfo*> llama_tensors_by_hf_name(const File& file, const llama::LlamaConfig& config) {
  const std::string& path = file.path();
  std::map<std::string, const TensorInfo*> by_hf_name;
  for (const TensorInfo& info : file.tensors()) {
    if (info.name == "rope_freqs.weight") continue;  // config.rope_scaling (llama_config_from_gguf)
    const std::optional<std::string> name = llama_hf_tensor_name(info.name);
    LAMINA_CHECK(name.has_value(), "gguf: ", path, ": tensor '", info.name, "' is not part of the Llama layout");
    by_hf_name[*name] = &info;
  }
  std::set<std::string> expected;
  llama::LlamaForCausalLM::for_each_parameter_shape(config, [&](const std::string& name, const Shape& shape) {
    const auto found = by_hf_name.find(name);
    LAMINA_CHECK(found != by_hf_name.end(), "gguf: ", path, " has no tensor for '", name, "'");
    LAMINA_CHECK(found->second->shape() == shape, "gguf: ", path, ": tensor '", found->second->name, "' has shape ",
                 found->second->shape(), " (dims reversed) but the config needs ", shape, " for '", name, "'");
    expected.insert(name);
  });
  for (const auto& [name, info] : by_hf_name)
    LAMINA_CHECK(expected.count(name) != 0, "gguf: ", path, ": tensor '", info->name,
                 "' has no parameter in this config (", config.num_hidden_layers, " layers)");
  return by_hf_name;
}

std::shared_ptr<llama::LlamaForCausalLM> load_llama_gguf(const std::string& path, DType dtype) {
  const File file = File::open(path);
  const llama::LlamaConfig config = llama_config_from_gguf(file);
  // HF name -> GGUF tensor, checked against the config's parameters before anything is built.
  const std::map<std::string, const TensorInfo*> by_hf_name = llama_tensors_by_hf_name(file, config);

  auto model = std::make_shared<llama::LlamaForCausalLM>(config, dtype, nn::ParameterInit::uninitialized);
  for (const auto& [name, parameter] : model->named_parameters()) {
    const TensorInfo& info = *by_hf_name.at(name);
    Tensor value = file.read(info.name);
    if (info.name.ends_with(".attn_q.weight")) value = unpermute_meta_rows(value, config.num_attention_heads);
    if (info.name.ends_with(".attn_k.weight")) value = unpermute_meta_rows(value, config.num_key_value_heads);
    parameter.set_data(dtype == DType::f32 ? value : ops::cast(value, dtype));
  }
  return model;
}

// ---- writing

std::optional<std::string> llama_gguf_tensor_name(const std::string& hf_name) {
  if (hf_name == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf_name == "model.norm.weight") return "output_norm.weight";
  if (hf_name == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  if (hf_name.rfind(prefix, 0) != 0) return std::nullopt;
  const size_t dot = hf_name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return std::nullopt;
  const std::string layer = hf_name.substr(prefix.size(), dot - prefix.size());
  if (layer.find_first_not_of("0123456789") != std::string::npos || (layer.size() > 1 && layer[0] == '0'))
    return std::nullopt;
  const std::string suffix = hf_name.substr(dot + 1);
  for (const auto& [gguf_suffix, hf_suffix] : layer_names())
    if (hf_suffix == suffix) return str_cat("blk.", layer, ".", gguf_suffix);
  return std::nullopt;
}

Tensor permute_to_meta_rows(const Tensor& weight, int64_t heads) {
  return reorder_rope_rows(weight, heads, true, "permute_to_meta_rows");
}

uint32_t llama_file_type(TensorType type) {
  switch (type) {
    case TensorType::f32: return 0;
    case TensorType::f16: return 1;
    case TensorType::q4_0: return 2;
    case TensorType::q4_1: return 3;
    case TensorType::q8_0: return 7;
    case TensorType::q4_k: return 14;  // Q4_K_S: llama.cpp's Q4_K_M (15) mixes in Q6_K matrices
    case TensorType::q6_k: return 18;
    case TensorType::bf16: return 32;
    default: throw Error(str_cat("gguf writer: no general.file_type for ", tensor_type_name(uint32_t(type))));
  }
}

namespace {

// llama3 RoPE scaling as llama.cpp stores it: for each frequency, the divisor of inv_freq
// (formats-and-quantization.md §2.5 and §5.6).
std::vector<float> llama3_rope_divisors(const llama::LlamaConfig& config) {
  const Llama3RopeScaling& scaling = *config.rope_scaling;
  const double context = double(scaling.original_max_position);
  const double low_wavelength = context / scaling.low_freq_factor, high_wavelength = context / scaling.high_freq_factor;
  std::vector<float> divisors;
  for (int64_t k = 0; k < config.head_dim / 2; ++k) {
    const double inv_freq = 1.0 / std::pow(config.rope_theta, double(2 * k) / double(config.head_dim));
    const double wavelength = 2.0 * M_PI / inv_freq;
    double divisor = 1.0;
    if (wavelength > low_wavelength) {
      divisor = scaling.factor;
    } else if (wavelength >= high_wavelength) {
      const double smooth = (context / wavelength - scaling.low_freq_factor) /
                            (scaling.high_freq_factor - scaling.low_freq_factor);
      divisor = 1.0 / ((1.0 - smooth) / scaling.factor + smooth);
    }
    divisors.push_back(float(divisor));
  }
  return divisors;
}

// The type a matrix with rows of `row_length` values gets when asked for `type`: the first of
// type, its fallback (Q4_K -> Q4_1 and Q6_K -> Q8_0, 32-value blocks of about the same bits),
// F16 whose blocks the rows fill.
TensorType type_for_rows(TensorType type, uint64_t row_length) {
  if (row_length % block_elements(type) == 0) return type;
  if (type == TensorType::q4_k) return type_for_rows(TensorType::q4_1, row_length);
  if (type == TensorType::q6_k) return type_for_rows(TensorType::q8_0, row_length);
  return TensorType::f16;
}

}  // namespace

void add_llama_model(Writer& writer, const llama::LlamaForCausalLM& model, TensorType type, const std::string& name,
                     const std::function<void(const std::string&)>& note, std::optional<TensorType> embedding_type) {
  LAMINA_CHECK(writable_type(type), "gguf writer: cannot write tensors of type ", tensor_type_name(uint32_t(type)));
  if (embedding_type)
    LAMINA_CHECK(writable_type(*embedding_type), "gguf writer: cannot write tensors of type ",
                 tensor_type_name(uint32_t(*embedding_type)));
  const llama::LlamaConfig& config = model.config();
  const auto u32 = [&](const std::string& key, int64_t value) {
    LAMINA_CHECK(value >= 0 && value <= int64_t(UINT32_MAX), "gguf writer: ", key, " = ", value, " does not fit u32");
    writer.add_metadata(key, u32_value(uint32_t(value)));
  };
  writer.add_metadata("general.architecture", string_value("llama"));
  writer.add_metadata("general.type", string_value("model"));
  writer.add_metadata("general.name", string_value(name));
  u32("llama.context_length", config.max_position_embeddings);
  u32("llama.embedding_length", config.hidden_size);
  u32("llama.block_count", config.num_hidden_layers);
  u32("llama.feed_forward_length", config.intermediate_size);
  u32("llama.attention.head_count", config.num_attention_heads);
  u32("llama.attention.head_count_kv", config.num_key_value_heads);
  writer.add_metadata("llama.rope.freq_base", f32_value(float(config.rope_theta)));
  writer.add_metadata("llama.attention.layer_norm_rms_epsilon", f32_value(float(config.rms_norm_eps)));
  if (config.head_dim * config.num_attention_heads != config.hidden_size) {
    u32("llama.attention.key_length", config.head_dim);
    u32("llama.attention.value_length", config.head_dim);
  }
  u32("llama.rope.dimension_count", config.head_dim);
  u32("llama.vocab_size", config.vocab_size);
  writer.add_metadata("general.file_type", u32_value(llama_file_type(type)));
  if (block_elements(type) > 1) writer.add_metadata("general.quantization_version", u32_value(2));

  for (const auto& [hf_name, parameter] : model.named_parameters()) {
    const std::optional<std::string> gguf_name = llama_gguf_tensor_name(hf_name);
    LAMINA_CHECK(gguf_name.has_value(), "gguf writer: parameter '", hf_name, "' has no GGUF name in the Llama layout");
    const bool embedding = *gguf_name == "token_embd.weight" || *gguf_name == "output.weight";
    const TensorType wanted = parameter.dim() == 1 ? TensorType::f32 : embedding ? embedding_type.value_or(type) : type;
    const TensorType stored = type_for_rows(wanted, uint64_t(parameter.shape().back()));
    if (stored != wanted && note)
      note(str_cat(*gguf_name, ": rows of ", parameter.shape().back(), " values are not whole blocks of ",
                   block_elements(wanted), "; stored as ", tensor_type_name(uint32_t(stored)), " instead of ",
                   tensor_type_name(uint32_t(wanted))));
    int64_t heads = 0;
    if (gguf_name->ends_with(".attn_q.weight")) heads = config.num_attention_heads;
    if (gguf_name->ends_with(".attn_k.weight")) heads = config.num_key_value_heads;
    if (heads == 0) {
      writer.add_tensor(*gguf_name, parameter, stored);
      continue;
    }
    std::vector<uint64_t> dims = {uint64_t(parameter.shape()[1]), uint64_t(parameter.shape()[0])};
    const Tensor weight = parameter;
    writer.add_tensor(*gguf_name, std::move(dims), stored, [weight, heads, stored]() {
      const Tensor meta = permute_to_meta_rows(weight, heads);
      return encode(stored, meta.data<float>(), uint64_t(meta.numel()));
    });
  }
  if (config.rope_scaling) {
    const std::vector<float> divisors = llama3_rope_divisors(config);
    writer.add_tensor("rope_freqs.weight", {uint64_t(divisors.size())}, TensorType::f32,
                      [divisors]() { return encode(TensorType::f32, divisors.data(), divisors.size()); });
  }
}

void add_llama_token_ids(Writer& writer, const llama::LlamaConfig& config) {
  writer.add_metadata("tokenizer.ggml.bos_token_id", u32_value(uint32_t(config.bos_token_id)));
  if (!config.eos_token_ids.empty())
    writer.add_metadata("tokenizer.ggml.eos_token_id", u32_value(uint32_t(config.eos_token_ids[0])));
  if (config.eos_token_ids.size() > 1)
    writer.add_metadata("tokenizer.ggml.eot_token_id", u32_value(uint32_t(config.eos_token_ids[1])));
  if (config.pad_token_id)
    writer.add_metadata("tokenizer.ggml.padding_token_id", u32_value(uint32_t(*config.pad_token_id)));
}

}  // namespace lamina::gguf
