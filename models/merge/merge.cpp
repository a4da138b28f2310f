// The streaming merge driver (see merge.h).
#include "models/merge/merge.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "models/io/safetensors.h"
#include "models/merge/methods.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"

namespace lamina::merge {
namespace {

namespace fs = std::filesystem;

std::vector<double> model_weights(const Recipe& recipe, const std::string& name, int64_t num_layers) {
  std::vector<double> weights;
  for (size_t i = 0; i < recipe.models.size(); ++i) weights.push_back(recipe.model_parameter(i, "weight", name, num_layers));
  return weights;
}

// One input folder: its config and its mapped weights.
struct Input {
  std::string path;
  llama::LlamaConfig config;
  safetensors::Checkpoint checkpoint;
};

Input open_input(const std::string& path) {
  std::error_code error;
  LAMINA_CHECK(fs::exists(path, error), "merge: model ", path, " not found");
  LAMINA_CHECK(fs::is_directory(path, error), "merge: model ", path,
               " is not a folder (merge reads Hugging Face folders; `lamina convert` turns a GGUF file into one)");
  const std::string config_path = (fs::path(path) / "config.json").string();
  const json::Value config_json = json::parse_file(config_path);
  LAMINA_CHECK(config_json.find("quantization_config", config_path) == nullptr, "merge: ", config_path,
               " describes a quantized checkpoint; merging needs full-precision weights");
  Input input{path, llama::LlamaConfig::from_json(config_json, config_path), safetensors::Checkpoint::open(path)};
  input.config.validate();
  return input;
}

// The architecture fields two merged models must share, the first that differs named.
void check_same_architecture(const Input& first, const Input& other) {
  const llama::LlamaConfig& a = first.config;
  const llama::LlamaConfig& b = other.config;
  const std::pair<const char*, std::pair<int64_t, int64_t>> fields[] = {
      {"vocab_size", {a.vocab_size, b.vocab_size}},
      {"hidden_size", {a.hidden_size, b.hidden_size}},
      {"intermediate_size", {a.intermediate_size, b.intermediate_size}},
      {"num_hidden_layers", {a.num_hidden_layers, b.num_hidden_layers}},
      {"num_attention_heads", {a.num_attention_heads, b.num_attention_heads}},
      {"num_key_value_heads", {a.num_key_value_heads, b.num_key_value_heads}},
      {"head_dim", {a.head_dim, b.head_dim}},
      {"tie_word_embeddings", {a.tie_word_embeddings, b.tie_word_embeddings}},
  };
  for (const auto& [field, values] : fields)
    LAMINA_CHECK(values.first == values.second, "merge: ", other.path, "/config.json: ", field, " is ", values.second,
                 " but ", first.path, " has ", values.first, " (merged models must share one architecture)");
}

void check_same_tensors(const Input& first, const Input& other) {
  for (const std::string& name : first.checkpoint.names()) {
    LAMINA_CHECK(other.checkpoint.contains(name), "merge: ", other.path, " has no tensor '", name, "' (", first.path,
                 " has)");
    const safetensors::TensorInfo& expected = first.checkpoint.info(name);
    const safetensors::TensorInfo& got = other.checkpoint.info(name);
    LAMINA_CHECK(got.shape == expected.shape, "merge: tensor '", name, "' has shape ", shape_str(got.shape), " in ",
                 other.path, " but ", shape_str(expected.shape), " in ", first.path);
    LAMINA_CHECK(is_floating(got.dtype), "merge: tensor '", name, "' of ", other.path, " is ", got.file_dtype,
                 ", not a floating-point dtype");
  }
  for (const std::string& name : other.checkpoint.names())
    LAMINA_CHECK(first.checkpoint.contains(name), "merge: ", other.path, " has a tensor '", name, "' that ", first.path,
                 " lacks");
}

}  // namespace

uint64_t tensor_stream(const std::string& name) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

void merge_tensor_chunks(const Recipe& recipe, const std::string& name, const std::vector<Tensor>& inputs,
                         int64_t num_layers, uint64_t stream, int64_t chunk_elements,
                         const std::function<void(const Tensor& chunk)>& write) {
  const size_t expected = recipe.input_paths().size();
  LAMINA_CHECK(inputs.size() == expected, "merge_tensor: ", inputs.size(), " inputs, the recipe has ", expected);
  for (const Tensor& input : inputs) {
    LAMINA_CHECK(input.defined() && input.shape() == inputs[0].shape(), "merge_tensor: the inputs of '", name,
                 "' differ in shape");
    LAMINA_CHECK(is_floating(input.dtype()), "merge_tensor: '", name, "' is ", dtype_name(input.dtype()),
                 ", not a floating-point dtype");
  }
  LAMINA_CHECK(chunk_elements > 0, "merge_tensor: chunk_elements must be positive");
  const int64_t chunk = (chunk_elements + 3) / 4 * 4;  // DARE's random blocks cover 4 entries
  const int64_t count = inputs[0].numel();
  std::vector<Tensor> flat;
  for (const Tensor& input : inputs) flat.push_back(input.reshape({count}));
  const auto chunk_of = [&](size_t input, int64_t start, int64_t length) {
    return flat[input].narrow(0, start, length).to(DType::f32).contiguous();
  };
  const auto for_each_chunk = [&](const std::function<void(int64_t start, int64_t length)>& body) {
    for (int64_t start = 0; start < count; start += chunk) body(start, std::min(chunk, count - start));
  };
  const auto chunks_of_models = [&](int64_t start, int64_t length, size_t first) {
    std::vector<Tensor> chunks;
    for (size_t i = first; i < inputs.size(); ++i) chunks.push_back(chunk_of(i, start, length));
    return chunks;
  };

  switch (recipe.method) {
    case Method::linear: {
      const std::vector<double> weights = model_weights(recipe, name, num_layers);
      for_each_chunk([&](int64_t start, int64_t length) {
        write(linear(chunks_of_models(start, length, 0), weights, recipe.normalize));
      });
      return;
    }
    case Method::task_arithmetic: {
      const std::vector<double> weights = model_weights(recipe, name, num_layers);
      const double lambda = recipe.recipe_parameter("lambda", name, num_layers);
      for_each_chunk([&](int64_t start, int64_t length) {
        write(task_arithmetic(chunk_of(0, start, length), chunks_of_models(start, length, 1), weights, recipe.normalize,
                              lambda));
      });
      return;
    }
    case Method::slerp: {
      // The angle needs the whole tensors: one pass for the dot product and norms, one to write.
      double dot = 0, from_norm = 0, to_norm = 0;
      for_each_chunk([&](int64_t start, int64_t length) {
        const Tensor from = chunk_of(0, start, length), to = chunk_of(1, start, length);
        const float* a = from.data<float>();
        const float* b = to.data<float>();
        for (int64_t j = 0; j < length; ++j) {
          dot += double(a[j]) * double(b[j]);
          from_norm += double(a[j]) * double(a[j]);
          to_norm += double(b[j]) * double(b[j]);
        }
      });
      const SlerpWeights weights =
          slerp_weights(dot, from_norm, to_norm, recipe.recipe_parameter("t", name, num_layers));
      for_each_chunk([&](int64_t start, int64_t length) {
        write(linear({chunk_of(0, start, length), chunk_of(1, start, length)}, {weights.from, weights.to}, false));
      });
      return;
    }
    case Method::ties:
    case Method::dare_linear:
    case Method::dare_ties: {
      const std::vector<double> weights = model_weights(recipe, name, num_layers);
      const double lambda = recipe.recipe_parameter("lambda", name, num_layers);
      std::vector<double> densities;
      for (size_t i = 0; i + 1 < inputs.size(); ++i) densities.push_back(recipe.model_parameter(i, "density", name, num_layers));
      // TIES' cut is a property of each whole task vector: found from its magnitudes, one model at a time.
      std::vector<MagnitudeCut> cuts;
      if (recipe.method == Method::ties) {
        for (size_t i = 0; i + 1 < inputs.size(); ++i) {
          std::vector<float> magnitudes(static_cast<size_t>(count));
          for_each_chunk([&](int64_t start, int64_t length) {
            const Tensor delta = subtract(chunk_of(i + 1, start, length), chunk_of(0, start, length));
            const float* values = delta.data<float>();
            for (int64_t j = 0; j < length; ++j) magnitudes[size_t(start + j)] = std::abs(values[j]);
          });
          cuts.push_back(magnitude_cut(magnitudes, densities[i]));
        }
      }
      for_each_chunk([&](int64_t start, int64_t length) {
        const Tensor base = chunk_of(0, start, length);
        std::vector<Tensor> deltas;
        for (size_t i = 0; i + 1 < inputs.size(); ++i) {
          const Tensor delta = subtract(chunk_of(i + 1, start, length), base);
          // Model i's drops get their own stream: a golden-ratio step keeps them apart for every i.
          deltas.push_back(recipe.method == Method::ties
                               ? apply_magnitude_cut(delta, cuts[i])
                               : drop_and_rescale(delta, densities[i], recipe.seed,
                                                  stream + (i + 1) * 0x9E3779B97F4A7C15ull, start));
        }
        const Tensor combined = recipe.method == Method::dare_linear
                                    ? weighted_delta_sum(deltas, weights, recipe.normalize)
                                    : sign_consensus_sum(deltas, weights, recipe.normalize);
        write(add_scaled(base, combined, lambda));
      });
      return;
    }
  }
  throw Error("merge_tensor: unknown method");
}

Tensor merge_tensor(const Recipe& recipe, const std::string& name, const std::vector<Tensor>& inputs,
                    int64_t num_layers, uint64_t stream, int64_t chunk_elements) {
  LAMINA_CHECK(!inputs.empty(), "merge_tensor: no inputs");
  Tensor out = Tensor::empty(inputs[0].shape());
  float* destination = out.data<float>();
  merge_tensor_chunks(recipe, name, inputs, num_layers, stream, chunk_elements, [&](const Tensor& chunk) {
    std::copy(chunk.data<float>(), chunk.data<float>() + chunk.numel(), destination);
    destination += chunk.numel();
  });
  return out;
}

MergeSummary merge_models(const Recipe& recipe, const std::string& directory, const MergeOptions& options) {
  LAMINA_CHECK(options.max_shard_bytes > 0, "merge: max_shard_bytes must be positive");
  std::vector<Input> inputs;
  for (const std::string& path : recipe.input_paths()) inputs.push_back(open_input(path));
  const Input& first = inputs[0];
  for (size_t i = 1; i < inputs.size(); ++i) {
    check_same_architecture(first, inputs[i]);
    check_same_tensors(first, inputs[i]);
  }
  const int64_t num_layers = first.config.num_hidden_layers;

  // Every output tensor, its dtype the recipe's or the first input's.
  std::vector<safetensors::StreamedTensor> outputs;
  for (const std::string& name : first.checkpoint.names()) {
    const safetensors::TensorInfo& info = first.checkpoint.info(name);
    LAMINA_CHECK(is_floating(info.dtype), "merge: tensor '", name, "' of ", first.path, " is ", info.file_dtype,
                 ", not a floating-point dtype");
    outputs.push_back({name, info.shape, recipe.dtype.value_or(info.dtype)});
  }
  // Every parameter is resolved once before anything is written, so that a rule that matches no
  // tensor fails here rather than after half the output.
  for (const safetensors::StreamedTensor& tensor : outputs) {
    if (recipe.method != Method::slerp) model_weights(recipe, tensor.name, num_layers);
    for (const char* key : {"t", "lambda"})
      if (recipe.parameters.count(key)) recipe.recipe_parameter(key, tensor.name, num_layers);
    if (recipe.method == Method::ties || recipe.method == Method::dare_linear || recipe.method == Method::dare_ties)
      for (size_t i = 0; i < recipe.models.size(); ++i) recipe.model_parameter(i, "density", tensor.name, num_layers);
  }

  MergeSummary summary;
  summary.config = first.config;
  if (recipe.dtype) summary.config.dtype = *recipe.dtype;
  const int64_t tensor_count = int64_t(outputs.size());
  summary.weight_files = safetensors::save_checkpoint_streamed(
      directory, outputs,
      [&](const safetensors::StreamedTensor& tensor, const safetensors::ByteSink& sink) {
        {
          std::vector<Tensor> values;
          for (const Input& input : inputs) values.push_back(input.checkpoint.read(tensor.name));
          merge_tensor_chunks(recipe, tensor.name, values, num_layers, tensor_stream(tensor.name), options.chunk_elements,
                              [&](const Tensor& chunk) {
                                const Tensor output = chunk.to(tensor.dtype).contiguous();
                                sink(output.raw_data(), output.nbytes());
                              });
        }
        // The views of the mappings are gone: their pages can go back to the system.
        for (const Input& input : inputs) input.checkpoint.release(tensor.name);
        summary.tensors += 1;
        summary.bytes_written += tensor.bytes();
        if (options.on_tensor) options.on_tensor(summary.tensors, tensor_count, tensor.name);
      },
      options.max_shard_bytes);
  io::write_file_atomically((fs::path(directory) / "config.json").string(), summary.config.to_json().dump(2) + "\n");
  return summary;
}

}  // namespace lamina::merge
