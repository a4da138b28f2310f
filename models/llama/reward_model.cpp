#include "models/llama/reward_model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "autograd/autograd.h"
#include "models/io/safetensors.h"
#include "nn/lora.h"
#include "tensor/host_memory.h"
#include "tensor/io/atomic_file.h"

namespace lamina::llama {
namespace {

namespace fs = std::filesystem;

constexpr const char* kArchitecture = "LlamaForSequenceClassification";

// The trunk's config: as the causal LM's, without an output layer of its own (tied = no lm_head),
// so LlamaForCausalLM::for_each_parameter_shape lists exactly the "model.*" tensors.
LlamaConfig trunk_config(LlamaConfig config) {
  config.tie_word_embeddings = true;
  return config;
}

// config.json's "architectures", empty when absent.
std::vector<std::string> read_architectures(const json::Value& config, const std::string& source) {
  std::vector<std::string> names;
  const json::Value* value = config.find("architectures");
  if (value == nullptr || value->is_null()) return names;
  const std::string where = source + ": architectures";
  for (const json::Value& name : value->as_array(where)) names.push_back(name.as_string(where));
  return names;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : ", ") + name;
  return text;
}

// How many outputs the head has. transformers stores the count as the size of "id2label" (it
// never writes num_labels), accepts "num_labels" from hand-written files, and defaults to 2.
int64_t read_num_labels(const json::Value& config, const std::string& source) {
  std::optional<int64_t> from_map, from_count;
  if (const json::Value* map = config.find("id2label"); map != nullptr && !map->is_null())
    from_map = int64_t(map->as_object(source + ": id2label").size());
  if (const json::Value* count = config.find("num_labels"); count != nullptr && !count->is_null())
    from_count = count->as_int64(source + ": num_labels");
  LAMINA_CHECK(!from_map || !from_count || *from_map == *from_count, source, ": num_labels ", from_count.value_or(0),
               " disagrees with the ", from_map.value_or(0), " entries of id2label");
  const int64_t labels = from_map.value_or(from_count.value_or(2));
  LAMINA_CHECK(labels >= 1 && labels <= kMaxConfigSize, source, ": a sequence classifier needs at least one label, got ",
               labels);
  return labels;
}

// Every tensor of the folder against a LlamaForSequenceClassification of this config, from the
// headers alone. A causal LM's folder is named as such: it is the likely mix-up.
void check_checkpoint(const LlamaConfig& config, int64_t num_labels, const safetensors::Checkpoint& checkpoint,
                      const std::string& directory) {
  const std::string start_hint =
      "; start a reward model from a causal LM with LlamaForSequenceClassification::from_causal_lm";
  LAMINA_CHECK(!checkpoint.contains("lm_head.weight"), "load: ", directory,
               " holds a causal LM's output layer 'lm_head.weight', not a LlamaForSequenceClassification", start_hint);
  LAMINA_CHECK(checkpoint.contains("score.weight"), "load: ", directory,
               " has no tensor 'score.weight' (the LlamaForSequenceClassification head)", start_hint);
  std::set<std::string> expected;
  auto check = [&](const std::string& name, const Shape& shape, const std::string& why) {
    LAMINA_CHECK(checkpoint.contains(name), "load: ", directory, " has no tensor '", name, "'");
    const safetensors::TensorInfo& info = checkpoint.info(name);
    LAMINA_CHECK(info.shape == shape, "load: tensor '", name, "' in ", directory, " has shape ", info.shape,
                 " but the config needs ", shape, why);
    LAMINA_CHECK(is_floating(info.dtype), "load: tensor '", name, "' in ", directory, " has dtype ", info.file_dtype,
                 ", expected a floating dtype");
    expected.insert(name);
  };
  LlamaForCausalLM::for_each_parameter_shape(trunk_config(config), [&](const std::string& name, const Shape& shape) {
    check(name, shape, "");
  });
  check("score.weight", {num_labels, config.hidden_size},
        str_cat(" (", num_labels, " labels from config.json's id2label/num_labels, hidden_size ", config.hidden_size, ")"));
  for (const std::string& name : checkpoint.names()) {
    const bool rotary_buffer = name.find("rotary_emb.inv_freq") != std::string::npos;  // old HF files
    LAMINA_CHECK(expected.count(name) != 0 || rotary_buffer, "load: ", directory, " has a tensor '", name,
                 "' that a LlamaForSequenceClassification of this config has no parameter for",
                 name.rfind("model.layers.", 0) == 0
                     ? str_cat(" (config.json says num_hidden_layers is ", config.num_hidden_layers, ")")
                     : std::string());
  }
}

// normal(0, std) into `parameter`, drawn in f32 on the CPU as LlamaForCausalLM::init_parameters does.
void fill_normal(const Tensor& parameter, double std, Generator& generator) {
  const Tensor values = ops::binary(ops::BinaryOp::mul, randn(parameter.shape(), generator, DType::f32), std);
  ops::copy_(parameter, ops::to_device(values, parameter.device()));
}

// mask values as rows of real tokens: [start, end) of each row, or an error naming the row.
void read_attention_mask(const Tensor& attention_mask, std::vector<int64_t>& starts, std::vector<int64_t>& ends) {
  const int64_t batch = attention_mask.size(0), tokens = attention_mask.size(1);
  const std::vector<double> values = attention_mask.to_vector<double>();
  for (int64_t b = 0; b < batch; ++b) {
    const double* row = values.data() + b * tokens;
    int64_t start = -1, end = -1;
    for (int64_t t = 0; t < tokens; ++t) {
      LAMINA_CHECK(row[t] == 0 || row[t] == 1, "LlamaForSequenceClassification: attention_mask[", b, ", ", t,
                   "] is ", row[t], ", expected 0 or 1");
      if (row[t] == 1) {
        if (start < 0) start = t;
        LAMINA_CHECK(end < 0, "LlamaForSequenceClassification: attention_mask row ", b,
                     " has a gap in its real tokens (at ", t, "): pad on the left or the right only");
      } else if (start >= 0 && end < 0) {
        end = t;
      }
    }
    LAMINA_CHECK(start >= 0, "LlamaForSequenceClassification: attention_mask row ", b, " has no real token");
    starts.push_back(start);
    ends.push_back(end < 0 ? tokens : end);
  }
}

}  // namespace

// ---- pooling

std::vector<int64_t> reward_positions(const Tensor& ids, const std::vector<int64_t>& starts,
                                      const std::vector<int64_t>& ends, std::optional<int64_t> pad_token_id) {
  LAMINA_CHECK(ids.dim() == 2, "reward_positions: ids must be [batch, tokens], got shape ", ids.shape());
  const int64_t batch = ids.size(0), tokens = ids.size(1);
  LAMINA_CHECK(int64_t(starts.size()) == batch && int64_t(ends.size()) == batch, "reward_positions: ", starts.size(),
               " starts and ", ends.size(), " ends for a batch of ", batch);
  const std::vector<int64_t> values = pad_token_id ? ids.to_vector<int64_t>() : std::vector<int64_t>();
  std::vector<int64_t> positions(size_t(batch), 0);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t start = starts[size_t(b)], end = ends[size_t(b)];
    LAMINA_CHECK(start >= 0 && start < end && end <= tokens, "reward_positions: row ", b, "'s real tokens [", start,
                 ", ", end, ") are empty or outside its ", tokens, " tokens");
    int64_t position = end - 1;
    if (pad_token_id) {
      const int64_t* row = values.data() + b * tokens;
      while (position > start && row[position] == *pad_token_id) --position;
    }
    positions[size_t(b)] = position;
  }
  return positions;
}

// ---- the model

LlamaForSequenceClassification::LlamaForSequenceClassification(LlamaConfig config, int64_t num_labels, DType dtype,
                                                               nn::ParameterInit init)
    : config_(std::move(config)), num_labels_(num_labels), dtype_(dtype) {
  config_.validate();
  LAMINA_CHECK(is_floating(dtype), "LlamaForSequenceClassification: parameters must be floating, got ",
               dtype_name(dtype));
  LAMINA_CHECK(num_labels >= 1 && num_labels <= kMaxConfigSize,
               "LlamaForSequenceClassification: num_labels must be at least 1, got ", num_labels);
  // As LlamaForCausalLM: refuse before allocating what cannot fit (512 B of bookkeeping a tensor).
  const int64_t parameters = trunk_config(config_).parameter_count() + num_labels * config_.hidden_size;
  const uint64_t tensors = uint64_t(config_.num_hidden_layers) * 9 + 3;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(uint64_t(parameters), uint64_t(dtype_size(dtype)), &bytes) ||
      __builtin_add_overflow(bytes, tensors * 512, &bytes))
    bytes = UINT64_MAX;
  check_host_memory(bytes, str_cat("a Llama reward model of ", parameters, " parameters in ", dtype_name(dtype)));
  model = register_module("model", std::make_shared<LlamaModel>(config_, dtype, init));
  score = register_module("score", std::make_shared<nn::Linear>(config_.hidden_size, num_labels,
                                                                nn::LinearOptions{false, dtype, init}));
}

LlamaForSequenceClassification::LlamaForSequenceClassification(LlamaConfig config, std::shared_ptr<LlamaModel> trunk,
                                                               int64_t num_labels, DType dtype)
    : config_(std::move(config)), num_labels_(num_labels), dtype_(dtype) {
  config_.validate();
  LAMINA_CHECK(trunk != nullptr, "LlamaForSequenceClassification: no trunk given");
  LAMINA_CHECK(num_labels >= 1 && num_labels <= kMaxConfigSize,
               "LlamaForSequenceClassification: num_labels must be at least 1, got ", num_labels);
  const Tensor& embedding = trunk->embed_tokens->weight();
  LAMINA_CHECK(embedding.shape() == Shape({config_.vocab_size, config_.hidden_size}) &&
                   int64_t(trunk->layers->size()) == config_.num_hidden_layers,
               "LlamaForSequenceClassification: the trunk (embedding ", embedding.shape(), ", ", trunk->layers->size(),
               " layers) does not match the config");
  model = register_module("model", std::move(trunk));
  score = register_module("score", std::make_shared<nn::Linear>(config_.hidden_size, num_labels,
                                                                nn::LinearOptions{false, dtype, nn::ParameterInit::zeros}));
  // The head lives where the trunk does (a causal LM already moved to a GPU).
  if (embedding.device() != Device::cpu()) {
    autograd::NoGradGuard no_grad;
    score->weight().set_data(ops::to_device(score->weight(), embedding.device()));
  }
}

Tensor LlamaForSequenceClassification::pooled_scores(const Tensor& ids, const Tensor& positions, const Tensor& mask,
                                                     const std::vector<int64_t>& pooled) const {
  AttentionContext context;
  context.mask = mask;
  const Tensor hidden = model->forward(ids.contiguous(), positions, context);  // [B, T, d]
  const int64_t batch = hidden.size(0), tokens = hidden.size(1), width = hidden.size(2);
  std::vector<int64_t> rows(pooled.size());
  for (size_t b = 0; b < pooled.size(); ++b) rows[b] = int64_t(b) * tokens + pooled[b];
  const Tensor index = ops::to_device(Tensor::from_vector(rows, {batch}), hidden.device());
  // The head on the pooled rows only: transformers scores every token and then picks, the same
  // values per row for B instead of B x T products.
  const Tensor scores = score->forward(index_select(hidden.reshape({batch * tokens, width}), 0, index));
  const bool low_precision = scores.dtype() == DType::bf16 || scores.dtype() == DType::f16;
  return low_precision ? scores.to(DType::f32) : scores;
}

Tensor LlamaForSequenceClassification::forward(const Tensor& ids, const Tensor& lengths) const {
  LAMINA_CHECK(ids.dim() == 2 && ids.size(1) > 0, "LlamaForSequenceClassification: ids must be [batch, tokens], got shape ",
               ids.shape());
  const int64_t batch = ids.size(0), tokens = ids.size(1);
  LAMINA_CHECK(lengths.dim() == 1 && lengths.size(0) == batch && !is_floating(lengths.dtype()),
               "LlamaForSequenceClassification: lengths must be [", batch, "] integers, got shape ", lengths.shape(),
               " of ", dtype_name(lengths.dtype()));
  const std::vector<int64_t> ends = lengths.to_vector<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    LAMINA_CHECK(ends[size_t(b)] >= 1 && ends[size_t(b)] <= tokens, "LlamaForSequenceClassification: lengths[", b,
                 "] is ", ends[size_t(b)], ", outside [1, ", tokens, "]");
  const std::vector<int64_t> pooled =
      reward_positions(ids, std::vector<int64_t>(size_t(batch), 0), ends, config_.pad_token_id);
  const int64_t needed = *std::max_element(ends.begin(), ends.end());
  const Tensor trimmed = needed < tokens ? ids.slice(1, 0, needed) : ids;
  return pooled_scores(trimmed, arange(0, needed, 1, DType::i64, ids.device()), Tensor(), pooled);
}

Tensor LlamaForSequenceClassification::forward(const Tensor& ids) const {
  LAMINA_CHECK(ids.dim() == 2 && ids.size(1) > 0, "LlamaForSequenceClassification: ids must be [batch, tokens], got shape ",
               ids.shape());
  LAMINA_CHECK(config_.pad_token_id.has_value() || ids.size(0) == 1, "LlamaForSequenceClassification: a batch of ",
               ids.size(0), " rows without lengths needs config.pad_token_id to find where each row ends (as in "
               "transformers); give lengths or an attention mask");
  const Tensor lengths = Tensor::from_vector(std::vector<int64_t>(size_t(ids.size(0)), ids.size(1)), {ids.size(0)});
  return forward(ids, lengths);
}

Tensor LlamaForSequenceClassification::forward_with_attention_mask(const Tensor& ids, const Tensor& attention_mask) const {
  LAMINA_CHECK(ids.dim() == 2 && ids.size(1) > 0, "LlamaForSequenceClassification: ids must be [batch, tokens], got shape ",
               ids.shape());
  LAMINA_CHECK(attention_mask.shape() == ids.shape(), "LlamaForSequenceClassification: attention_mask has shape ",
               attention_mask.shape(), ", ids ", ids.shape());
  std::vector<int64_t> starts, ends;
  read_attention_mask(attention_mask, starts, ends);
  const int64_t batch = ids.size(0);
  const bool left_padded = std::any_of(starts.begin(), starts.end(), [](int64_t start) { return start > 0; });
  if (!left_padded) return forward(ids, Tensor::from_vector(ends, {batch}));
  const std::vector<int64_t> pooled = reward_positions(ids, starts, ends, config_.pad_token_id);
  const int64_t needed = *std::max_element(ends.begin(), ends.end());
  // Positions count from each row's first real token; its pads are hidden as keys (a pad's own
  // query then sees no key and attention gives it 0, never NaN). Keys past a row's end need no
  // mask: causal attention already hides them from every real token.
  std::vector<int64_t> positions(size_t(batch * needed));
  std::vector<double> hidden(size_t(batch * needed), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < needed; ++t) {
      positions[size_t(b * needed + t)] = std::max<int64_t>(t - starts[size_t(b)], 0);
      if (t < starts[size_t(b)]) hidden[size_t(b * needed + t)] = -std::numeric_limits<double>::infinity();
    }
  const DType mask_dtype = dtype_ == DType::f64 ? DType::f64 : DType::f32;
  const Tensor mask = ops::to_device(Tensor::from_vector(hidden, {batch, 1, 1, needed}, mask_dtype), ids.device());
  const Tensor trimmed = needed < ids.size(1) ? ids.slice(1, 0, needed) : ids;
  return pooled_scores(trimmed, ops::to_device(Tensor::from_vector(positions, {batch, needed}), ids.device()), mask,
                       pooled);
}

void LlamaForSequenceClassification::init_parameters(Generator& generator) {
  autograd::NoGradGuard no_grad;
  for (const auto& [name, parameter] : named_parameters()) {
    const bool is_norm = name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
    if (is_norm) {
      ops::fill_(parameter, 1.0);
    } else {
      fill_normal(parameter, config_.initializer_range, generator);
    }
  }
}

void LlamaForSequenceClassification::init_score(Generator& generator) {
  autograd::NoGradGuard no_grad;
  fill_normal(score->weight(), config_.initializer_range, generator);
}

void LlamaForSequenceClassification::to(Device device, DType dtype) {
  move_weights(device, dtype, "LlamaForSequenceClassification");
  dtype_ = dtype;
}

// ---- folders

std::shared_ptr<LlamaForSequenceClassification> LlamaForSequenceClassification::load(const std::string& directory,
                                                                                     DType dtype) {
  const std::string config_path = (fs::path(directory) / "config.json").string();
  const json::Value config_json = json::parse_file(config_path);
  const std::vector<std::string> architectures = read_architectures(config_json, config_path);
  if (!architectures.empty() && !contains(architectures, kArchitecture)) {
    const bool causal = contains(architectures, "LlamaForCausalLM");
    throw Error(str_cat("load: ", config_path, " describes ", causal ? "a causal LM" : "a model", " (architectures: ",
                        joined(architectures), "), not a ", kArchitecture,
                        causal ? "; start a reward model from it with LlamaForSequenceClassification::from_causal_lm" : ""));
  }
  const LlamaConfig config = LlamaConfig::from_json(config_json, config_path);
  const int64_t num_labels = read_num_labels(config_json, config_path);
  const json::Value* quantization = config_json.find("quantization_config");
  LAMINA_CHECK(quantization == nullptr || quantization->is_null(), "load: ", config_path,
               " has a quantization_config: 4-bit reward model folders are not supported (load a full-precision one)");
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(directory);
  check_checkpoint(config, num_labels, checkpoint, directory);
  auto reward_model =
      std::make_shared<LlamaForSequenceClassification>(config, num_labels, dtype, nn::ParameterInit::uninitialized);
  for (const auto& [name, parameter] : reward_model->named_parameters()) {
    const Tensor stored = checkpoint.read(name);
    parameter.set_data(stored.dtype() == dtype ? stored : ops::cast(stored, dtype));
  }
  return reward_model;
}

std::shared_ptr<LlamaForSequenceClassification> LlamaForSequenceClassification::from_causal_lm(
    const std::string& directory, const ScoreHeadOptions& options, Generator& generator, DType dtype) {
  const std::string config_path = (fs::path(directory) / "config.json").string();
  const std::vector<std::string> architectures = read_architectures(json::parse_file(config_path), config_path);
  const bool has_head = safetensors::Checkpoint::open(directory).contains("score.weight");
  LAMINA_CHECK(!contains(architectures, kArchitecture) && !has_head, "from_causal_lm: ", directory, " is already a ",
               kArchitecture, " (", has_head ? "it has a 'score.weight'" : "config.json's architectures say so",
               "): load it with LlamaForSequenceClassification::load");
  const std::shared_ptr<LlamaForCausalLM> causal_lm = LlamaForCausalLM::load(directory, dtype);
  return from_causal_lm(*causal_lm, options, generator);
}

std::shared_ptr<LlamaForSequenceClassification> LlamaForSequenceClassification::from_causal_lm(
    const LlamaForCausalLM& causal_lm, const ScoreHeadOptions& options, Generator& generator) {
  LlamaConfig config = causal_lm.config();
  if (options.pad_token_id) config.pad_token_id = options.pad_token_id;
  auto reward_model =
      std::make_shared<LlamaForSequenceClassification>(config, causal_lm.model, options.num_labels, causal_lm.dtype());
  reward_model->init_score(generator);
  return reward_model;
}

void LlamaForSequenceClassification::save(const std::string& directory, std::optional<DType> dtype,
                                          uint64_t max_shard_bytes) const {
  const LlamaConfig config = save_weights(directory, dtype, max_shard_bytes, "LlamaForSequenceClassification");
  json::Value config_json = config.to_json();
  config_json.set("architectures", json::Array{kArchitecture});
  // transformers keeps the label count as the size of these maps (LABEL_i is its default name).
  json::Value id2label = json::Object{}, label2id = json::Object{};
  for (int64_t label = 0; label < num_labels_; ++label) {
    id2label.set(std::to_string(label), "LABEL_" + std::to_string(label));
    label2id.set("LABEL_" + std::to_string(label), label);
  }
  config_json.set("id2label", std::move(id2label));
  config_json.set("label2id", std::move(label2id));
  io::write_file_atomically((fs::path(directory) / "config.json").string(), config_json.dump(2) + "\n");
}

// ---- the Bradley–Terry loss

namespace {

// [N] or [N, 1] (a one-label reward model's output) as [N].
Tensor as_pair_rewards(const Tensor& rewards, const char* name) {
  const bool column = rewards.dim() == 2 && rewards.size(1) == 1;
  LAMINA_CHECK(rewards.dim() == 1 || column, "bradley_terry_loss: ", name, " must be [pairs] or [pairs, 1], got shape ",
               rewards.shape());
  LAMINA_CHECK(is_floating(rewards.dtype()), "bradley_terry_loss: ", name, " must be floating, got ",
               dtype_name(rewards.dtype()));
  return column ? rewards.reshape({rewards.size(0)}) : rewards;
}

}  // namespace

BradleyTerryLoss bradley_terry_loss(const Tensor& chosen, const Tensor& rejected, const Tensor& margin,
                                    double center_coefficient) {
  const Tensor c = as_pair_rewards(chosen, "chosen"), r = as_pair_rewards(rejected, "rejected");
  const int64_t pairs = c.size(0);
  LAMINA_CHECK(pairs > 0 && r.shape() == c.shape() && r.dtype() == c.dtype(), "bradley_terry_loss: chosen ",
               chosen.shape(), " ", dtype_name(chosen.dtype()), " and rejected ", rejected.shape(), " ",
               dtype_name(rejected.dtype()), " must be the same non-empty shape and dtype");
  LAMINA_CHECK(std::isfinite(center_coefficient), "bradley_terry_loss: center_coefficient must be finite, got ",
               center_coefficient);
  Tensor difference = c - r;
  if (margin.defined()) {
    LAMINA_CHECK(margin.numel() == pairs && margin.dim() <= 2, "bradley_terry_loss: margin must be [", pairs,
                 "], got shape ", margin.shape());
    const Tensor per_pair = ops::to_device(margin.reshape({pairs}).to(c.dtype()), c.device());
    difference = difference - per_pair;
  }
  BradleyTerryLoss out;
  out.loss = -mean(log_sigmoid(difference));
  // Skipped at 0 rather than multiplied by it: the term would still cost a backward pass.
  if (center_coefficient != 0) out.loss = out.loss + mean(square(c + r)) * center_coefficient;

  const std::vector<double> chosen_values = c.detach().to_vector<double>(), rejected_values = r.detach().to_vector<double>();
  double wins = 0, margin_sum = 0, reward_sum = 0;
  out.min_reward = std::numeric_limits<double>::infinity();
  out.max_reward = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < pairs; ++i) {
    const double a = chosen_values[size_t(i)], b = rejected_values[size_t(i)];
    wins += a > b ? 1 : 0;
    margin_sum += a - b;
    reward_sum += a + b;
    out.min_reward = std::min({out.min_reward, a, b});
    out.max_reward = std::max({out.max_reward, a, b});
  }
  out.accuracy = wins / double(pairs);
  out.margin = margin_sum / double(pairs);
  out.mean_reward = reward_sum / double(2 * pairs);
  return out;
}

}  // namespace lamina::llama
