// Writing safetensors files and checkpoint folders, atomically.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>

#include "models/io/safetensors.h"
#include "models/io/safetensors_dtypes.h"
#include "ops/ops.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"

namespace lamina::safetensors {
namespace {

const detail::FileDType& lookup(DType dtype) {
  for (const detail::FileDType& entry : detail::kFileDTypes)
    if (entry.dtype == dtype && std::string(entry.name) != "I8") return entry;
  throw Error(str_cat("safetensors: cannot write dtype ", dtype_name(dtype)));
}

void append_u64_le(std::string& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out += char((value >> (8 * i)) & 0xFF);
}

}  // namespace

const char* file_dtype_name(DType dtype) { return lookup(dtype).name; }

namespace {

// One safetensors file of `tensors` (header in write-rank then name order, the order the data
// follows), each tensor's bytes from write_tensor; the file appears whole or not at all.
void write_streamed_file(const std::string& path, std::vector<StreamedTensor> tensors, Metadata metadata,
                         const std::function<void(const StreamedTensor&, const ByteSink&)>& write_tensor) {
  if (metadata.find("format") == metadata.end()) metadata["format"] = "pt";
  for (const StreamedTensor& tensor : tensors) lookup(tensor.dtype);  // refused before anything is written
  std::sort(tensors.begin(), tensors.end(), [](const StreamedTensor& a, const StreamedTensor& b) {
    const int rank_a = lookup(a.dtype).write_rank, rank_b = lookup(b.dtype).write_rank;
    return rank_a != rank_b ? rank_a < rank_b : a.name < b.name;
  });
  json::Value header = json::Object{};
  json::Value meta = json::Object{};
  for (const auto& [key, value] : metadata) meta.set(key, value);
  header.set("__metadata__", std::move(meta));
  uint64_t offset = 0;
  for (const StreamedTensor& tensor : tensors) {
    json::Array shape;
    for (int64_t size : tensor.shape) shape.emplace_back(size);
    json::Value info = json::Object{};
    info.set("dtype", lookup(tensor.dtype).name);
    info.set("shape", std::move(shape));
    info.set("data_offsets", json::Array{json::Value(int64_t(offset)), json::Value(int64_t(offset + tensor.bytes()))});
    header.set(tensor.name, std::move(info));
    offset += tensor.bytes();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string prefix;
  append_u64_le(prefix, header_text.size());
  io::AtomicFile file(path);
  file.write(prefix);
  file.write(header_text);
  for (const StreamedTensor& tensor : tensors) {
    uint64_t written = 0;
    write_tensor(tensor, [&](const void* data, size_t bytes) {
      file.write(data, bytes);
      written += bytes;
    });
    LAMINA_CHECK(written == tensor.bytes(), "safetensors: tensor '", tensor.name, "' gave ", written,
                 " bytes, its header says ", tensor.bytes());
  }
  file.commit();
}

}  // namespace

void save(const std::string& path, const NamedTensors& tensors, Metadata metadata) {
  std::vector<StreamedTensor> entries;
  std::map<std::string, Tensor> data;  // contiguous, on the CPU
  for (const auto& [name, tensor] : tensors) {
    LAMINA_CHECK(name != "__metadata__" && !name.empty(), "safetensors: invalid tensor name '", name, "'");
    check_defined(tensor, "safetensors::save", name.c_str());
    LAMINA_CHECK(data.count(name) == 0, "safetensors: tensor '", name, "' given twice");
    data[name] = ops::contiguous(ops::to_device(tensor, Device::cpu()));
    entries.push_back({name, tensor.shape(), tensor.dtype()});
  }
  write_streamed_file(path, std::move(entries), std::move(metadata), [&](const StreamedTensor& tensor, const ByteSink& sink) {
    const Tensor& values = data.at(tensor.name);
    sink(values.raw_data(), values.nbytes());
  });
}

std::vector<std::string> save_checkpoint_streamed(
    const std::string& directory, const std::vector<StreamedTensor>& tensors,
    const std::function<void(const StreamedTensor& tensor, const ByteSink& sink)>& write_tensor,
    uint64_t max_shard_bytes, const Metadata& metadata) {
  namespace fs = std::filesystem;
  fs::create_directories(directory);
  LAMINA_CHECK(max_shard_bytes > 0, "save_checkpoint: max_shard_bytes must be positive");
  // Fill shards in order, never splitting a tensor.
  std::vector<std::vector<StreamedTensor>> shards(1);
  uint64_t in_shard = 0, total = 0;
  std::map<std::string, int> seen;
  for (const StreamedTensor& tensor : tensors) {
    LAMINA_CHECK(tensor.name != "__metadata__" && !tensor.name.empty(), "safetensors: invalid tensor name '",
                 tensor.name, "'");
    LAMINA_CHECK(seen[tensor.name]++ == 0, "safetensors: tensor '", tensor.name, "' given twice");
    lookup(tensor.dtype);  // a dtype safetensors cannot hold is refused before anything is written
    if (in_shard > 0 && in_shard + tensor.bytes() > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(tensor);
    in_shard += tensor.bytes();
    total += tensor.bytes();
  }
  const fs::path dir(directory);
  std::vector<std::string> files;
  json::Value weight_map = json::Object{};
  char name_buffer[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name_buffer, sizeof(name_buffer), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    const std::string file_name = shards.size() == 1 ? std::string("model.safetensors") : std::string(name_buffer);
    write_streamed_file((dir / file_name).string(), shards[i], metadata, write_tensor);
    for (const StreamedTensor& tensor : shards[i]) weight_map.set(tensor.name, file_name);
    files.push_back(file_name);
  }
  if (shards.size() == 1) {
    fs::remove(dir / "model.safetensors.index.json");  // a stale index would shadow the new file
    return files;
  }
  json::Value index = json::Object{};
  json::Value index_metadata = json::Object{};
  index_metadata.set("total_size", json::Value(int64_t(total)));
  index.set("metadata", std::move(index_metadata));
  index.set("weight_map", std::move(weight_map));
  io::write_file_atomically((dir / "model.safetensors.index.json").string(), index.dump(2) + "\n");
  fs::remove(dir / "model.safetensors");  // an unsharded leftover would be ambiguous
  return files;
}

void save_checkpoint(const std::string& directory, const NamedTensors& tensors, uint64_t max_shard_bytes,
                     const Metadata& metadata) {
  std::vector<StreamedTensor> entries;
  std::map<std::string, const Tensor*> data;
  for (const auto& [name, tensor] : tensors) {
    check_defined(tensor, "safetensors::save_checkpoint", name.c_str());
    LAMINA_CHECK(data.count(name) == 0, "safetensors: tensor '", name, "' given twice");
    entries.push_back({name, tensor.shape(), tensor.dtype()});
    data[name] = &tensor;
  }
  save_checkpoint_streamed(
      directory, entries,
      [&](const StreamedTensor& tensor, const ByteSink& sink) {
        const Tensor values = ops::contiguous(ops::to_device(*data.at(tensor.name), Device::cpu()));
        sink(values.raw_data(), values.nbytes());
      },
      max_shard_bytes, metadata);
}

}  // namespace lamina::safetensors
