// CycleQD's SVD mutation, matrix by matrix and streamed model by model (mutate.h).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized inside Eigen's GEMM and SVD (the
// known false positive that CMakeLists.txt silences for ops/cpu/matmul.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "models/surgery/mutate.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "models/io/safetensors.h"
#include "models/surgery/extract.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"

namespace lamina::surgery {
namespace {

namespace fs = std::filesystem;

void append_u64_le(std::string& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out += char((value >> (8 * i)) & 0xFF);
}

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

  // The output keeps every tensor's dtype, planned into shards in name order.
  const std::vector<std::string> names = input.names();
  std::vector<std::vector<std::string>> shards(1);
  uint64_t in_shard = 0, total_bytes = 0;
  for (const std::string& name : names) {
    const safetensors::TensorInfo& info = input.info(name);
    const uint64_t bytes = uint64_t(shape_numel(info.shape)) * dtype_size(info.dtype);
    if (in_shard > 0 && in_shard + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(name);
    in_shard += bytes;
    total_bytes += bytes;
  }

  MutateSummary summary;
  summary.mutated = chosen;
  json::Value weight_map = json::Object{};
  char name_buffer[64];
  for (size_t shard_index = 0; shard_index < shards.size(); ++shard_index) {
    json::Value header = json::Object{};
    json::Value metadata = json::Object{};
    metadata.set("format", "pt");
    header.set("__metadata__", std::move(metadata));
    uint64_t offset = 0;
    for (const std::string& name : shards[shard_index]) {
      const safetensors::TensorInfo& info = input.info(name);
      const uint64_t bytes = uint64_t(shape_numel(info.shape)) * dtype_size(info.dtype);
      json::Array shape;
      for (int64_t size : info.shape) shape.emplace_back(size);
      json::Value entry = json::Object{};
      entry.set("dtype", safetensors::file_dtype_name(info.dtype));
      entry.set("shape", std::move(shape));
      entry.set("data_offsets", json::Array{json::Value(int64_t(offset)), json::Value(int64_t(offset + bytes))});
      header.set(name, std::move(entry));
      offset += bytes;
    }
    std::string header_text = header.dump();
    header_text.append((8 - header_text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
    std::string prefix;
    append_u64_le(prefix, header_text.size());
    const std::string file_name =
        shards.size() == 1
            ? std::string("model.safetensors")
            : (std::snprintf(name_buffer, sizeof(name_buffer), "model-%05zu-of-%05zu.safetensors", shard_index + 1,
                             shards.size()),
               std::string(name_buffer));
    io::AtomicFile file((fs::path(directory) / file_name).string());
    file.write(prefix);
    file.write(header_text);
    for (const std::string& name : shards[shard_index]) {
      {
        const safetensors::TensorInfo& info = input.info(name);
        const Tensor original = input.read(name);
        const Tensor output =
            std::binary_search(chosen.begin(), chosen.end(), name)
                ? to_tensor(mutate_matrix(to_matrix(original), options.sigma, options.seed, mutation_stream(name),
                                          options.rank, options.svd),
                            info.dtype)
                : original.contiguous();
        LAMINA_ASSERT(output.dtype() == info.dtype && output.shape() == info.shape);
        file.write(output.raw_data(), output.nbytes());
        summary.bytes_written += output.nbytes();
      }
      input.release(name);
      summary.tensors += 1;
      if (shards.size() > 1) weight_map.set(name, file_name);
      if (options.on_tensor) options.on_tensor(summary.tensors, int64_t(names.size()), name);
    }
    file.commit();
    summary.weight_files.push_back(file_name);
  }
  if (shards.size() > 1) {
    json::Value index = json::Object{};
    json::Value index_metadata = json::Object{};
    index_metadata.set("total_size", json::Value(int64_t(total_bytes)));
    index.set("metadata", std::move(index_metadata));
    index.set("weight_map", std::move(weight_map));
    io::write_file_atomically((fs::path(directory) / "model.safetensors.index.json").string(), index.dump(2) + "\n");
  }
  fs::copy_file(fs::path(model_path) / "config.json", fs::path(directory) / "config.json",
                fs::copy_options::overwrite_existing);
  return summary;
}

}  // namespace lamina::surgery
