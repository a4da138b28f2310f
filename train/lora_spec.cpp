#include "train/lora_spec.h"

#include <charconv>
#include <cmath>
#include <set>
#include <string_view>
#include <vector>

#include "tensor/error.h"

namespace lamina::train {
namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

double number_of(const std::string& key, const std::string& text) {
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  LAMINA_CHECK(!text.empty() && error == std::errc() && end == text.data() + text.size() && std::isfinite(value),
               "--lora: ", key, " must be a number, got '", text, "'");
  return value;
}

}  // namespace

nn::LoraConfig parse_lora_spec(const std::string& spec) {
  LAMINA_CHECK(!spec.empty(), "--lora: empty (write e.g. r=16,alpha=32,dropout=0.05,targets=all-linear)");
  nn::LoraConfig config;
  config.target_modules = {"q_proj", "v_proj"};
  bool alpha_given = false;
  std::set<std::string> seen;
  for (const std::string& item : split(spec, ',')) {
    const size_t equals = item.find('=');
    const std::string key = item.substr(0, equals);
    const std::string value = equals == std::string::npos ? "" : item.substr(equals + 1);
    LAMINA_CHECK(!key.empty(), "--lora: an empty setting in '", spec, "'");
    LAMINA_CHECK(seen.insert(key).second, "--lora: ", key, " is given twice");
    const bool is_switch = key == "rslora" || key == "dora";
    LAMINA_CHECK(is_switch ? equals == std::string::npos : equals != std::string::npos, "--lora: ",
                 is_switch ? key + " is a switch and takes no value" : key + " needs a value (" + key + "=...)");
    if (key == "r" || key == "rank") {
      const double rank = number_of(key, value);
      LAMINA_CHECK(rank >= 1 && rank <= 65536 && rank == std::floor(rank), "--lora: r must be an integer in [1, 65536], got ", value);
      config.options.rank = int64_t(rank);
    } else if (key == "alpha") {
      config.options.alpha = number_of(key, value);
      LAMINA_CHECK(config.options.alpha > 0, "--lora: alpha must be positive, got ", value);
      alpha_given = true;
    } else if (key == "dropout") {
      config.options.dropout = number_of(key, value);
      LAMINA_CHECK(config.options.dropout >= 0 && config.options.dropout < 1, "--lora: dropout must be in [0, 1), got ", value);
    } else if (key == "targets") {
      config.target_modules = split(value, '+');
      for (const std::string& target : config.target_modules)
        LAMINA_CHECK(!target.empty(), "--lora: targets has an empty name in '", value, "' (join names with '+')");
    } else if (key == "init") {
      if (value == "true" || value == "kaiming") config.options.init = nn::LoraInit::kaiming;
      else if (value == "gaussian") config.options.init = nn::LoraInit::gaussian;
      else throw Error(str_cat("--lora: init must be true (Kaiming-uniform A, zero B) or gaussian, got '", value, "'"));
    } else if (key == "rslora") {
      config.options.use_rslora = true;
    } else if (key == "dora") {
      config.options.use_dora = true;
    } else {
      throw Error(str_cat("--lora: unknown setting '", key, "' (the settings: r, alpha, dropout, targets, init, rslora, dora)"));
    }
  }
  if (!alpha_given) config.options.alpha = double(config.options.rank);
  return config;
}

int64_t lora_parameter_count(const llama::LlamaConfig& model, const nn::LoraConfig& config) {
  const int64_t d = model.hidden_size, q = model.num_attention_heads * model.head_dim,
                kv = model.num_key_value_heads * model.head_dim, ffn = model.intermediate_size;
  struct Projection {
    const char* path;
    int64_t in, out;
  };
  const Projection projections[] = {{"self_attn.q_proj", d, q},      {"self_attn.k_proj", d, kv},
                                    {"self_attn.v_proj", d, kv},     {"self_attn.o_proj", q, d},
                                    {"mlp.gate_proj", d, ffn},       {"mlp.up_proj", d, ffn},
                                    {"mlp.down_proj", ffn, d}};
  int64_t count = 0;
  for (int64_t layer = 0; layer < model.num_hidden_layers; ++layer)
    for (const Projection& projection : projections) {
      const std::string path = str_cat("model.layers.", layer, ".", projection.path);
      if (!nn::lora_targets(config, path)) continue;
      const nn::LoraOptions options = nn::lora_options_for(config, path);
      count += options.rank * (projection.in + projection.out) + (options.use_dora ? projection.out : 0);
    }
  if (nn::lora_targets(config, "lm_head")) {
    const nn::LoraOptions options = nn::lora_options_for(config, "lm_head");
    count += options.rank * (d + model.vocab_size) + (options.use_dora ? model.vocab_size : 0);
  }
  return count;
}

}  // namespace lamina::train
