// Block expansion: the plan of which block goes where and the copy that renumbers the source's
// tensors into it (LLaMA Pro), and the parallel copies of Control LLM (see expand.h).
#include "models/surgery/expand.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "models/io/safetensors.h"
#include "models/llama/config.h"
#include "ops/ops.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"

namespace lamina::surgery {
namespace {

namespace fs = std::filesystem;

const std::string kLayerPrefix = "model.layers.";

// "model.layers.12.mlp.up_proj.weight" -> {12, "mlp.up_proj.weight"}; -1 for a tensor outside the
// blocks (embedding, final norm, head).
std::pair<int64_t, std::string> split_layer_name(const std::string& name) {
  if (name.compare(0, kLayerPrefix.size(), kLayerPrefix) != 0) return {-1, name};
  const size_t dot = name.find('.', kLayerPrefix.size());
  const std::string digits = name.substr(kLayerPrefix.size(), dot == std::string::npos ? std::string::npos : dot - kLayerPrefix.size());
  LAMINA_CHECK(dot != std::string::npos && !digits.empty() &&
                   std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }),
               "expand: tensor '", name, "' is under model.layers but has no layer number");
  return {std::stoll(digits), name.substr(dot + 1)};
}

// The source folder's config.json, as JSON (every field kept) and as a validated Llama config.
json::Value read_config(const std::string& model_directory, llama::LlamaConfig& config) {
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(model_directory, error), "expand: model ", model_directory,
               " is not a folder (expand reads Hugging Face folders; `lamina convert` turns a GGUF file into one)");
  const std::string path = (fs::path(model_directory) / "config.json").string();
  json::Value raw = json::parse_file(path);
  LAMINA_CHECK(raw.find("quantization_config", path) == nullptr, "expand: ", path,
               " describes a quantized checkpoint; expansion needs full-precision weights");
  config = llama::LlamaConfig::from_json(raw, path);
  config.validate();
  return raw;
}

// The names of the .safetensors files in `folder`, sorted.
std::vector<std::string> weight_files_in(const std::string& folder) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const std::string file = entry.path().filename().string();
    if (file.size() > 12 && file.compare(file.size() - 12, 12, ".safetensors") == 0) files.push_back(file);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<int64_t> ExpansionPlan::inserted_layers() const {
  std::vector<int64_t> out;
  for (size_t k = 0; k < inserted.size(); ++k)
    if (inserted[k]) out.push_back(int64_t(k));
  return out;
}

ExpansionPlan plan_insert_after(int64_t num_layers, std::vector<int64_t> insert_after) {
  LAMINA_CHECK(num_layers > 0, "expand: the model has no layers");
  LAMINA_CHECK(!insert_after.empty(), "expand: no block to insert (give the blocks to copy, e.g. --insert-after 3,7)");
  std::set<int64_t> seen;
  for (const int64_t layer : insert_after) {
    LAMINA_CHECK(layer >= 0 && layer < num_layers, "expand: block ", layer, " does not exist (the model has ", num_layers,
                 " blocks, 0 to ", num_layers - 1, ")");
    LAMINA_CHECK(seen.insert(layer).second, "expand: block ", layer, " is given twice");
  }
  ExpansionPlan plan;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    plan.source.push_back(layer);
    plan.inserted.push_back(false);
    if (seen.count(layer)) {
      plan.source.push_back(layer);
      plan.inserted.push_back(true);
    }
  }
  return plan;
}

ExpansionPlan plan_every(int64_t num_layers, int64_t every) {
  LAMINA_CHECK(every >= 1 && every <= num_layers, "expand: --every must lie in [1, ", num_layers,
               "] (the model's blocks), got ", every);
  std::vector<int64_t> after;
  for (int64_t layer = every - 1; layer < num_layers; layer += every) after.push_back(layer);
  return plan_insert_after(num_layers, after);
}

bool is_output_projection(const std::string& name_within_block) {
  for (const char* prefix : {"self_attn.o_proj.", "mlp.down_proj."})
    if (name_within_block.rfind(prefix, 0) == 0) return true;
  return false;
}

int64_t count_layers(const std::string& model_directory) {
  llama::LlamaConfig config;
  read_config(model_directory, config);
  return config.num_hidden_layers;
}

ExpandSummary expand_blocks(const std::string& model_directory, const std::string& out_directory,
                            const ExpansionPlan& plan, uint64_t max_shard_bytes) {
  llama::LlamaConfig config;
  json::Value raw_config = read_config(model_directory, config);
  const int64_t old_layers = config.num_hidden_layers;
  LAMINA_CHECK(!config.parallel_blocks, "expand: ", model_directory, " has parallel blocks (lamina_parallel_blocks in "
               "config.json), whose layer indices inserting blocks would break; insert blocks before adding them");
  LAMINA_CHECK(plan.source.size() == plan.inserted.size() && plan.layers() >= old_layers,
               "expand: the plan does not fit the model");
  for (const int64_t source : plan.source)
    LAMINA_CHECK(source >= 0 && source < old_layers, "expand: the plan copies block ", source, " but ", model_directory,
                 " has ", old_layers, " blocks");
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(model_directory);

  // Each source block's tensors, by their name within the block; the rest as they are.
  std::map<int64_t, std::vector<std::string>> block_tensors;
  safetensors::NamedTensors tensors;
  for (const std::string& name : checkpoint.names()) {
    const auto [layer, within] = split_layer_name(name);
    if (layer < 0) {
      tensors.emplace_back(name, checkpoint.read(name));
      continue;
    }
    LAMINA_CHECK(layer < old_layers, "expand: ", model_directory, " has tensor '", name, "' but config.json says ",
                 old_layers, " layers");
    block_tensors[layer].push_back(within);
  }
  for (int64_t layer = 0; layer < old_layers; ++layer)
    LAMINA_CHECK(block_tensors.count(layer), "expand: ", model_directory, " has no tensors of block ", layer);

  ExpandSummary summary;
  summary.old_layers = old_layers;
  summary.new_layers = plan.layers();
  summary.inserted_layers = plan.inserted_layers();
  for (int64_t k = 0; k < plan.layers(); ++k) {
    const int64_t source = plan.source[size_t(k)];
    bool zeroed_any = false;
    for (const std::string& within : block_tensors[source]) {
      const Tensor value = checkpoint.read(kLayerPrefix + std::to_string(source) + "." + within);
      const bool zero = plan.inserted[size_t(k)] && is_output_projection(within);
      zeroed_any |= zero;
      tensors.emplace_back(kLayerPrefix + std::to_string(k) + "." + within,
                           zero ? zeros(value.shape(), value.dtype()) : value);
    }
    // Without both output projections a copied block would change the function.
    LAMINA_CHECK(!plan.inserted[size_t(k)] || zeroed_any, "expand: block ", source, " of ", model_directory,
                 " has no self_attn.o_proj or mlp.down_proj weight to zero");
  }
  for (const auto& [name, value] : tensors) {
    LAMINA_CHECK(is_floating(value.dtype()), "expand: tensor '", name, "' is ", dtype_name(value.dtype()),
                 ", not a floating-point dtype (a quantized checkpoint?)");
    summary.bytes_written += value.nbytes();
  }
  summary.tensors = int64_t(tensors.size());
  safetensors::save_checkpoint(out_directory, tensors, max_shard_bytes);
  summary.weight_files = weight_files_in(out_directory);

  raw_config.set("num_hidden_layers", json::Value(plan.layers()));
  io::write_file_atomically((fs::path(out_directory) / "config.json").string(), raw_config.dump(2) + "\n");
  return summary;
}

ParallelSummary add_parallel_blocks(const std::string& model_directory, const std::string& out_directory,
                                    std::vector<int64_t> layers, double alpha, const std::string& interpolation,
                                    uint64_t max_shard_bytes) {
  llama::LlamaConfig config;
  json::Value raw_config = read_config(model_directory, config);
  LAMINA_CHECK(!config.parallel_blocks, "expand: ", model_directory, " has parallel blocks already (layers ",
               json::Value(raw_config.at("lamina_parallel_blocks").at("layers")).dump(),
               " in config.json's lamina_parallel_blocks); expand the folder they were added to instead");
  LAMINA_CHECK(!layers.empty(), "expand: no layer to give a parallel copy (e.g. --layers 3,7)");
  std::sort(layers.begin(), layers.end());
  for (size_t i = 0; i < layers.size(); ++i) {
    LAMINA_CHECK(layers[i] >= 0 && layers[i] < config.num_hidden_layers, "expand: layer ", layers[i],
                 " does not exist (the model has ", config.num_hidden_layers, " layers, 0 to ",
                 config.num_hidden_layers - 1, ")");
    LAMINA_CHECK(i == 0 || layers[i] != layers[i - 1], "expand: layer ", layers[i], " is given twice");
  }
  const bool dynamic = interpolation == "dynamic";
  LAMINA_CHECK(interpolation == "linear" || dynamic, "expand: interpolation '", interpolation,
               "' is not supported (linear: Control LLM's Lerp; dynamic: its Dlerp)");
  LAMINA_CHECK(std::isfinite(alpha) && alpha >= 0 && alpha <= 1, "expand: alpha must lie in [0, 1], got ", alpha);
  LAMINA_CHECK(!dynamic || (alpha > 0 && alpha < 1), "expand: alpha must lie in (0, 1) with dynamic interpolation "
               "(the gate starts at alpha = sigmoid(logit(alpha))), got ", alpha);
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(model_directory);

  safetensors::NamedTensors tensors;
  std::map<int64_t, int64_t> copied;  // layer -> its tensors copied
  for (const std::string& name : checkpoint.names()) {
    const Tensor value = checkpoint.read(name);
    LAMINA_CHECK(is_floating(value.dtype()), "expand: tensor '", name, "' is ", dtype_name(value.dtype()),
                 ", not a floating-point dtype (a quantized checkpoint?)");
    tensors.emplace_back(name, value);
    const auto [layer, within] = split_layer_name(name);
    LAMINA_CHECK(within.rfind("expanded.", 0) != 0, "expand: ", model_directory, " has tensor '", name,
                 "', a parallel copy, but config.json has no lamina_parallel_blocks");
    if (layer >= 0 && std::binary_search(layers.begin(), layers.end(), layer)) {
      tensors.emplace_back(kLayerPrefix + std::to_string(layer) + ".expanded." + within, value);
      ++copied[layer];
    }
  }
  for (const int64_t layer : layers)
    LAMINA_CHECK(copied[layer] > 0, "expand: ", model_directory, " has no tensors of layer ", layer);
  // Dlerp's gate, in the layer's dtype: w = 0 and c = logit(alpha), so every token starts at
  // alpha. (The paper's code draws w at random; the output is the original's either way while the
  // copy equals it, but a zero w makes the start independent of a seed.)
  if (dynamic) {
    const DType dtype = checkpoint.read(kLayerPrefix + std::to_string(layers[0]) + ".input_layernorm.weight").dtype();
    const Tensor bias = Tensor::from_vector<double>({std::log(alpha / (1 - alpha))}, {1});
    for (const int64_t layer : layers) {
      const std::string gate = kLayerPrefix + std::to_string(layer) + ".expanded_gate.";
      tensors.emplace_back(gate + "weight", zeros({1, 2 * config.hidden_size}, dtype));
      tensors.emplace_back(gate + "bias", ops::cast(bias, dtype));
    }
  }

  // The config the folder will be read with, checked before anything is written.
  json::Array layer_list;
  for (const int64_t layer : layers) layer_list.emplace_back(layer);
  json::Value block = json::Object{};
  block.set("layers", std::move(layer_list));
  block.set("alpha", alpha);
  block.set("interpolation", interpolation);
  raw_config.set("lamina_parallel_blocks", std::move(block));
  llama::LlamaConfig::from_json(raw_config, "the expanded config.json");

  ParallelSummary summary;
  summary.layers = layers;
  summary.tensors = int64_t(tensors.size());
  for (const auto& named : tensors) summary.bytes_written += named.second.nbytes();
  safetensors::save_checkpoint(out_directory, tensors, max_shard_bytes);
  summary.weight_files = weight_files_in(out_directory);
  io::write_file_atomically((fs::path(out_directory) / "config.json").string(), raw_config.dump(2) + "\n");
  return summary;
}

}  // namespace lamina::surgery
