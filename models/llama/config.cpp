#include "models/llama/config.h"

#include <cmath>

#include "tensor/io/atomic_file.h"

namespace lamina::llama {
namespace {

DType dtype_from_torch_name(const std::string& name, const std::string& where) {
  if (name == "float32") return DType::f32;
  if (name == "bfloat16") return DType::bf16;
  if (name == "float16") return DType::f16;
  if (name == "float64") return DType::f64;
  throw Error(str_cat(where, ": unsupported dtype \"", name, "\" (expected float32, bfloat16, float16 or float64)"));
}

const char* torch_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    case DType::f64: return "float64";
    default: throw Error(str_cat("config: no torch dtype name for ", dtype_name(dtype)));
  }
}

// The RoPE block: "rope_scaling" (older) or "rope_parameters" (newer transformers), whose
// type key is "rope_type" or (oldest) "type". A rope_scaling block without a type (`{}`, or
// a factor alone) is an error, as in transformers (its rotary embedding has no init function
// for a missing type): scaling that was meant but cannot be told is not silently dropped.
// No scaling is `null` or no block at all. rope_parameters is the newer form that always
// describes RoPE, so there a missing type is the default.
void read_rope(const json::Value& config, const std::string& source, LlamaConfig& out) {
  const json::Value* block = config.find("rope_parameters");
  std::string block_name = "rope_parameters";
  if (block == nullptr || block->is_null()) {
    block = config.find("rope_scaling");
    block_name = "rope_scaling";
  }
  if (const json::Value* theta = config.find("rope_theta")) out.rope_theta = theta->as_double(source + ": rope_theta");
  if (block == nullptr || block->is_null()) return;
  const std::string where = source + ": " + block_name;
  block->as_object(where);  // a string or number here is the user's mistake, named as such
  if (const json::Value* theta = block->find("rope_theta")) out.rope_theta = theta->as_double(where + ".rope_theta");
  std::string type_key = "rope_type";
  const json::Value* type = block->find(type_key);
  if (type == nullptr) type = block->find(type_key = "type");
  LAMINA_CHECK(type != nullptr || block_name == "rope_parameters", where,
               ": no \"rope_type\" (or \"type\") in the block: give \"rope_type\": \"llama3\" with its factors, or "
               "null for no scaling");
  const std::string kind = type == nullptr ? "default" : type->as_string(where + "." + type_key);
  if (kind == "default") return;
  LAMINA_CHECK(kind == "llama3", where, ": RoPE type \"", kind,
               "\" is not supported (lamina implements the default and \"llama3\" scalings)");
  Llama3RopeScaling scaling;
  scaling.factor = block->at("factor", where).as_double(where + ".factor");
  if (const json::Value* v = block->find("low_freq_factor")) scaling.low_freq_factor = v->as_double(where + ".low_freq_factor");
  if (const json::Value* v = block->find("high_freq_factor")) scaling.high_freq_factor = v->as_double(where + ".high_freq_factor");
  if (const json::Value* v = block->find("original_max_position_embeddings"))
    scaling.original_max_position = v->as_int64(where + ".original_max_position_embeddings");
  const bool valid = std::isfinite(scaling.factor) && scaling.factor > 0 && scaling.low_freq_factor > 0 &&
                     std::isfinite(scaling.high_freq_factor) && scaling.high_freq_factor > scaling.low_freq_factor &&
                     scaling.original_max_position > 0;
  LAMINA_CHECK(valid, where, ": invalid llama3 scaling (factor ", scaling.factor, ", low_freq_factor ",
               scaling.low_freq_factor, ", high_freq_factor ", scaling.high_freq_factor,
               ", original_max_position_embeddings ", scaling.original_max_position,
               "): the factors must be positive with high_freq_factor > low_freq_factor");
  out.rope_scaling = scaling;
}

// "lamina_parallel_blocks" (config.h's ParallelBlocks); its ranges are validate()'s to check.
ParallelBlocks read_parallel_blocks(const json::Value& block, const std::string& where) {
  block.as_object(where);
  ParallelBlocks out;
  const json::Value& layers = block.at("layers", where);
  for (const json::Value& layer : layers.as_array(where + ".layers"))
    out.layers.push_back(layer.as_int64(str_cat(where, ".layers[", out.layers.size(), "]")));
  if (const json::Value* alpha = block.find("alpha")) out.alpha = alpha->as_double(where + ".alpha");
  if (const json::Value* kind = block.find("interpolation")) out.interpolation = kind->as_string(where + ".interpolation");
  return out;
}

// a * b, or an error naming `what` when the product leaves int64.
int64_t checked_multiply(int64_t a, int64_t b, const char* what) {
  int64_t product = 0;
  LAMINA_CHECK(!__builtin_mul_overflow(a, b, &product), what, " overflows 64 bits (", a, " x ", b, ")");
  return product;
}

int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t sum = 0;
  LAMINA_CHECK(!__builtin_add_overflow(a, b, &sum), what, " overflows 64 bits");
  return sum;
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json::Value& config, const std::string& source) {
  LAMINA_CHECK(config.is_object(), source, ": expected a JSON object");
  auto field = [&](const char* key) -> const json::Value& {
    const json::Value* value = config.find(key);
    LAMINA_CHECK(value != nullptr, source, ": missing required field \"", key, "\"");
    return *value;
  };
  auto optional_field = [&](const char* key) -> const json::Value* {
    const json::Value* value = config.find(key);
    return value == nullptr || value->is_null() ? nullptr : value;
  };
  auto where = [&](const char* key) { return source + ": " + key; };

  if (const json::Value* type = optional_field("model_type")) {
    const std::string& name = type->as_string(where("model_type"));
    LAMINA_CHECK(name == "llama", source, ": model_type \"", name, "\" is not the Llama architecture");
  }
  if (const json::Value* act = optional_field("hidden_act")) {
    const std::string& name = act->as_string(where("hidden_act"));
    LAMINA_CHECK(name == "silu", source, ": hidden_act \"", name, "\" is not supported (Llama uses silu)");
  }
  for (const char* bias : {"attention_bias", "mlp_bias"})
    if (const json::Value* value = optional_field(bias))
      LAMINA_CHECK(!value->as_bool(where(bias)), source, ": ", bias, " = true is not supported (Llama has no biases)");

  LlamaConfig out;
  out.vocab_size = field("vocab_size").as_int64(where("vocab_size"));
  out.hidden_size = field("hidden_size").as_int64(where("hidden_size"));
  out.intermediate_size = field("intermediate_size").as_int64(where("intermediate_size"));
  out.num_hidden_layers = field("num_hidden_layers").as_int64(where("num_hidden_layers"));
  out.num_attention_heads = field("num_attention_heads").as_int64(where("num_attention_heads"));
  out.num_key_value_heads = out.num_attention_heads;
  if (const json::Value* v = optional_field("num_key_value_heads")) out.num_key_value_heads = v->as_int64(where("num_key_value_heads"));
  LAMINA_CHECK(out.num_attention_heads > 0, source, ": num_attention_heads must be positive");
  out.head_dim = out.hidden_size / out.num_attention_heads;
  if (const json::Value* v = optional_field("head_dim")) {
    out.head_dim = v->as_int64(where("head_dim"));
  } else {
    LAMINA_CHECK(out.hidden_size % out.num_attention_heads == 0, source, ": hidden_size ", out.hidden_size,
                 " is not a multiple of num_attention_heads ", out.num_attention_heads, " (and no head_dim is given)");
  }
  if (const json::Value* v = optional_field("max_position_embeddings"))
    out.max_position_embeddings = v->as_int64(where("max_position_embeddings"));
  if (const json::Value* v = optional_field("rms_norm_eps")) out.rms_norm_eps = v->as_double(where("rms_norm_eps"));
  read_rope(config, source, out);
  if (const json::Value* v = optional_field("tie_word_embeddings")) out.tie_word_embeddings = v->as_bool(where("tie_word_embeddings"));
  if (const json::Value* v = optional_field("bos_token_id")) out.bos_token_id = v->as_int64(where("bos_token_id"));
  if (const json::Value* v = optional_field("eos_token_id")) {
    out.eos_token_ids.clear();
    if (v->is_array()) {
      for (const json::Value& id : v->as_array())
        out.eos_token_ids.push_back(id.as_int64(str_cat(where("eos_token_id"), "[", out.eos_token_ids.size(), "]")));
    } else {
      out.eos_token_ids.push_back(v->as_int64(where("eos_token_id")));
    }
  }
  if (const json::Value* v = optional_field("pad_token_id")) out.pad_token_id = v->as_int64(where("pad_token_id"));
  // "dtype" (newer transformers) or "torch_dtype" (older); a file with both must not disagree.
  const json::Value* dtype = optional_field("dtype");
  const json::Value* torch_dtype = optional_field("torch_dtype");
  if (dtype != nullptr) out.dtype = dtype_from_torch_name(dtype->as_string(where("dtype")), where("dtype"));
  if (torch_dtype != nullptr) {
    const DType older = dtype_from_torch_name(torch_dtype->as_string(where("torch_dtype")), where("torch_dtype"));
    LAMINA_CHECK(dtype == nullptr || older == out.dtype, source, ": dtype \"", dtype ? dtype->as_string() : "",
                 "\" and torch_dtype \"", torch_dtype->as_string(), "\" disagree (give one, or the same in both)");
    out.dtype = older;
  }
  if (const json::Value* v = optional_field("initializer_range")) out.initializer_range = v->as_double(where("initializer_range"));
  if (const json::Value* v = optional_field("lamina_parallel_blocks"))
    out.parallel_blocks = read_parallel_blocks(*v, where("lamina_parallel_blocks"));
  try {
    out.validate();
  } catch (const Error& error) {
    throw Error(str_cat(source, ": ", error.what()));
  }
  return out;
}

LlamaConfig LlamaConfig::load(const std::string& config_path) {
  return from_json(json::parse_file(config_path), config_path);
}

void LlamaConfig::validate() const {
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings}};
  for (const auto& [name, size] : sizes) {
    LAMINA_CHECK(size > 0, name, " must be positive, got ", size);
    // Far beyond any real model (Llama 3.1 405B: hidden 16384, 126 layers, vocabulary 128256);
    // their products are checked by parameter_count below.
    LAMINA_CHECK(size <= kMaxConfigSize, name, " ", size, " is beyond any model lamina can hold (at most ",
                 kMaxConfigSize, ")");
  }
  LAMINA_CHECK(num_attention_heads % num_key_value_heads == 0, "num_attention_heads ", num_attention_heads,
               " is not a multiple of num_key_value_heads ", num_key_value_heads);
  LAMINA_CHECK(head_dim % 2 == 0, "head_dim ", head_dim, " must be even for RoPE");
  LAMINA_CHECK(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, "rms_norm_eps must be positive and finite, got ",
               rms_norm_eps);
  LAMINA_CHECK(std::isfinite(rope_theta) && rope_theta > 0, "rope_theta must be positive and finite, got ", rope_theta);
  LAMINA_CHECK(std::isfinite(initializer_range) && initializer_range >= 0,
               "initializer_range must be finite and not negative, got ", initializer_range);
  if (parallel_blocks) {
    const std::vector<int64_t>& layers = parallel_blocks->layers;
    LAMINA_CHECK(!layers.empty(), "lamina_parallel_blocks.layers is empty (drop the block for a plain model)");
    for (size_t i = 0; i < layers.size(); ++i)
      LAMINA_CHECK(layers[i] >= 0 && layers[i] < num_hidden_layers, "lamina_parallel_blocks.layers[", i, "] = ",
                   layers[i], " is not a layer of this model (0 to ", num_hidden_layers - 1, ")");
    for (size_t i = 1; i < layers.size(); ++i)
      LAMINA_CHECK(layers[i] > layers[i - 1], "lamina_parallel_blocks.layers must be ascending without repeats, got ",
                   layers[i - 1], " then ", layers[i]);
    LAMINA_CHECK(parallel_blocks->interpolation == "linear" || parallel_blocks->dynamic(),
                 "lamina_parallel_blocks.interpolation \"", parallel_blocks->interpolation,
                 "\" is not supported (\"linear\": Control LLM's Lerp; \"dynamic\": its Dlerp)");
    const double alpha = parallel_blocks->alpha;
    LAMINA_CHECK(std::isfinite(alpha) && alpha >= 0 && alpha <= 1, "lamina_parallel_blocks.alpha must lie in [0, 1], got ",
                 alpha);
    LAMINA_CHECK(!parallel_blocks->dynamic() || (alpha > 0 && alpha < 1), "lamina_parallel_blocks.alpha must lie in "
                 "(0, 1) with dynamic interpolation (the gate starts at sigmoid(logit(alpha))), got ", alpha);
  }
  parameter_count();  // throws when the sizes multiply past 64 bits
  for (int64_t id : eos_token_ids)
    LAMINA_CHECK(id >= 0 && id < vocab_size, "eos_token_id ", id, " is outside the vocabulary of ", vocab_size);
  LAMINA_CHECK(bos_token_id >= 0 && bos_token_id < vocab_size, "bos_token_id ", bos_token_id,
               " is outside the vocabulary of ", vocab_size);
  if (pad_token_id)
    LAMINA_CHECK(*pad_token_id >= 0 && *pad_token_id < vocab_size, "pad_token_id ", *pad_token_id,
                 " is outside the vocabulary of ", vocab_size);
}

json::Value LlamaConfig::to_json() const {
  json::Value config = json::Object{};
  config.set("architectures", json::Array{"LlamaForCausalLM"});
  config.set("model_type", "llama");
  config.set("vocab_size", vocab_size);
  config.set("hidden_size", hidden_size);
  config.set("intermediate_size", intermediate_size);
  config.set("num_hidden_layers", num_hidden_layers);
  config.set("num_attention_heads", num_attention_heads);
  config.set("num_key_value_heads", num_key_value_heads);
  config.set("head_dim", head_dim);
  config.set("max_position_embeddings", max_position_embeddings);
  config.set("rms_norm_eps", rms_norm_eps);
  config.set("rope_theta", rope_theta);
  if (rope_scaling) {
    json::Value scaling = json::Object{};
    scaling.set("rope_type", "llama3");
    scaling.set("factor", rope_scaling->factor);
    scaling.set("low_freq_factor", rope_scaling->low_freq_factor);
    scaling.set("high_freq_factor", rope_scaling->high_freq_factor);
    scaling.set("original_max_position_embeddings", rope_scaling->original_max_position);
    config.set("rope_scaling", std::move(scaling));
  } else {
    config.set("rope_scaling", json::Value());
  }
  config.set("hidden_act", "silu");
  config.set("attention_bias", false);
  config.set("mlp_bias", false);
  config.set("tie_word_embeddings", tie_word_embeddings);
  config.set("bos_token_id", bos_token_id);
  if (eos_token_ids.size() == 1) {
    config.set("eos_token_id", eos_token_ids[0]);
  } else {
    json::Array ids;
    for (int64_t id : eos_token_ids) ids.emplace_back(id);
    config.set("eos_token_id", std::move(ids));
  }
  if (pad_token_id) config.set("pad_token_id", *pad_token_id);
  config.set("torch_dtype", torch_name(dtype));
  config.set("initializer_range", initializer_range);
  if (parallel_blocks) {
    json::Array layers;
    for (const int64_t layer : parallel_blocks->layers) layers.emplace_back(layer);
    json::Value block = json::Object{};
    block.set("layers", std::move(layers));
    block.set("alpha", parallel_blocks->alpha);
    block.set("interpolation", parallel_blocks->interpolation);
    config.set("lamina_parallel_blocks", std::move(block));
  }
  return config;
}

int64_t LlamaConfig::linear_parameter_count() const {
  const int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  return decoder_blocks() * (hidden_size * (2 * q + 2 * kv) + 3 * hidden_size * intermediate_size);
}

int64_t LlamaConfig::parameter_count() const {
  // Every product and sum is checked: validate() calls this before trusting any size.
  const char* what = "the parameter count of this config";
  const int64_t d = hidden_size, f = intermediate_size;
  const int64_t q = checked_multiply(num_attention_heads, head_dim, what);
  const int64_t kv = checked_multiply(num_key_value_heads, head_dim, what);
  int64_t per_layer = checked_multiply(2, d, what);  // the two norms
  for (const int64_t matrix : {checked_multiply(d, q, what), checked_multiply(d, kv, what), checked_multiply(d, kv, what),
                               checked_multiply(q, d, what), checked_multiply(checked_multiply(3, d, what), f, what)})
    per_layer = checked_add(per_layer, matrix, what);
  const int64_t embedding = checked_multiply(vocab_size, d, what);
  int64_t total = checked_add(checked_multiply(decoder_blocks(), per_layer, what), d, what);
  total = checked_add(total, embedding, what);
  if (parallel_blocks && parallel_blocks->dynamic())  // each copy's gate: w [1, 2d] and c [1]
    total = checked_add(total, checked_multiply(int64_t(parallel_blocks->layers.size()), 2 * d + 1, what), what);
  return tie_word_embeddings ? total : checked_add(total, embedding, what);
}

}  // namespace lamina::llama
