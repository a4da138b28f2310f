// CycleQD's SVD mutation, matrix by matrix and streamed model by model (mutate.h).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized inside Eigen's GEMM and SVD (the
// known false positive that CMakeLists.txt silences for ops/cpu/matmul.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "models/surgery/mutate.h"

#include <algorithm>
#include <filesystem>

#include "models/io/safetensors.h"
#include "models/surgery/extract.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"

namespace lamina::surgery {
namespace {

namespace fs = std::filesystem;

safetensors::Checkpoint open_model(const std::string& path) {
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(path, error), "mutate: model ", path,
               " is not a folder (mutate reads Hugging Face folders; `lamina convert` turns a GGUF file into one)");
  const fs::path config_path = fs::path(path) / "config.json";
  LAMINA_CHECK(fs::is_regular_file(config_path, error), "mutate: ", config_path.string(), " not found");
  const json::Value config = json::parse_file(config_path.string());
  LAMINA_CHECK(config.find("quantization_config", config_path.string()) == nullptr, "mutate: ", config_path.string(),
               " describes a quantized checkpoint; mutation needs full-precision weights");
  return safetensors::Checkpoint::open(path);
}

std::vector<std::string> chosen_weights(const safetensors::Checkpoint& checkpoint, const std::string& model_path,
                                        const MutateOptions& options) {
  std::vector<std::string> chosen;
  for (const std::string& path : linear_module_paths(checkpoint)) {
    const std::string name = path + ".weight";
    const bool wanted = options.filters.empty()
                            ? path.find("layers.") != std::string::npos
                            : std::any_of(options.filters.begin(), options.filters.end(),
                                          [&](const std::string& filter) { return name.find(filter) != std::string::npos; });
    if (wanted) chosen.push_back(name);
  }
  for (const std::string& filter : options.filters) {
    const bool used = std::any_of(chosen.begin(), chosen.end(),
                                  [&](const std::string& name) { return name.find(filter) != std::string::npos; });
    LAMINA_CHECK(used, "mutate: the filter '", filter, "' matches no Linear weight of ", model_path);
  }
  LAMINA_CHECK(!chosen.empty(), "mutate: ", model_path, " has no Linear weights to mutate");
  return chosen;
}

}  // namespace

uint64_t mutation_stream(const std::string& name) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 0x100000001b3ull;
  return hash;
}

Matrix mutate_matrix(const Matrix& weight, double sigma, uint64_t seed, uint64_t stream, int64_t rank,
                     const SvdOptions& options) {
  LAMINA_CHECK(sigma >= 0, "mutate: sigma must not be negative, got ", sigma);
  LAMINA_CHECK(rank >= 0, "mutate: rank must not be negative, got ", rank);
  if (sigma == 0) return weight;
  const int64_t full = std::min<int64_t>(weight.rows(), weight.cols());
  const Svd svd = rank == 0 || rank >= full ? exact_svd(weight) : truncated_svd(weight, rank, options);
  Vector change(svd.S.size());
  for (int64_t i = 0; i < change.size(); ++i) change[i] = sigma * standard_normal(seed, stream, uint64_t(i)) * svd.S[i];
  return weight + svd.U * change.asDiagonal() * svd.V.transpose();
}

std::vector<std::string> mutation_targets(const std::string& model_path, const MutateOptions& options) {
  return chosen_weights(open_model(model_path), model_path, options);
}

MutateSummary mutate_model(const std::string& model_path, const std::string& directory, const MutateOptions& options) {
  LAMINA_CHECK(options.max_shard_bytes > 0, "mutate: max_shard_bytes must be positive");
  const safetensors::Checkpoint input = open_model(model_path);
  const std::vector<std::string> chosen = chosen_weights(input, model_path, options);
  for (const std::string& name : chosen)
    LAMINA_CHECK(is_floating(input.info(name).dtype), "mutate: tensor '", name, "' of ", model_path, " is ",
                 input.info(name).file_dtype, ", not a floating-point dtype");

  // The output keeps every tensor's dtype.
  const std::vector<std::string> names = input.names();
  std::vector<safetensors::StreamedTensor> outputs;
  for (const std::string& name : names) outputs.push_back({name, input.info(name).shape, input.info(name).dtype});

  MutateSummary summary;
  summary.mutated = chosen;
  summary.weight_files = safetensors::save_checkpoint_streamed(
      directory, outputs,
      [&](const safetensors::StreamedTensor& tensor, const safetensors::ByteSink& sink) {
        {
          const Tensor original = input.read(tensor.name);
          const Tensor output =
              std::binary_search(chosen.begin(), chosen.end(), tensor.name)
                  ? to_tensor(mutate_matrix(to_matrix(original), options.sigma, options.seed,
                                            mutation_stream(tensor.name), options.rank, options.svd),
                              tensor.dtype)
                  : original.contiguous();
          LAMINA_ASSERT(output.dtype() == tensor.dtype && output.shape() == tensor.shape);
          sink(output.raw_data(), output.nbytes());
          summary.bytes_written += output.nbytes();
        }
        input.release(tensor.name);
        summary.tensors += 1;
        if (options.on_tensor) options.on_tensor(summary.tensors, int64_t(names.size()), tensor.name);
      },
      options.max_shard_bytes);
  fs::copy_file(fs::path(model_path) / "config.json", fs::path(directory) / "config.json",
                fs::copy_options::overwrite_existing);
  return summary;
}

}  // namespace lamina::surgery
