// Writing safetensors files and checkpoint folders, atomically.
#include <algorithm>
#include <cstdio>
#include <filesystem>

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

void save(const std::string& path, const NamedTensors& tensors, Metadata metadata) {
  if (metadata.find("format") == metadata.end()) metadata["format"] = "pt";
  struct Entry {
    std::string name;
    Tensor data;  // contiguous, on the CPU
    const detail::FileDType* dtype;
  };
  std::vector<Entry> entries;
  for (const auto& [name, tensor] : tensors) {
    LAMINA_CHECK(name != "__metadata__" && !name.empty(), "safetensors: invalid tensor name '", name, "'");
    check_defined(tensor, "safetensors::save", name.c_str());
    for (const Entry& other : entries)
      LAMINA_CHECK(other.name != name, "safetensors: tensor '", name, "' given twice");
    entries.push_back({name, ops::contiguous(ops::to_device(tensor, Device::cpu())), &lookup(tensor.dtype())});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.dtype->write_rank != b.dtype->write_rank ? a.dtype->write_rank < b.dtype->write_rank : a.name < b.name;
  });
  json::Value header = json::Object{};
  json::Value meta = json::Object{};
  for (const auto& [key, value] : metadata) meta.set(key, value);
  header.set("__metadata__", std::move(meta));
  uint64_t offset = 0;
  for (const Entry& entry : entries) {
    json::Array shape;
    for (int64_t size : entry.data.shape()) shape.emplace_back(size);
    const uint64_t bytes = entry.data.nbytes();
    json::Value info = json::Object{};
    info.set("dtype", entry.dtype->name);
    info.set("shape", std::move(shape));
    info.set("data_offsets", json::Array{json::Value(int64_t(offset)), json::Value(int64_t(offset + bytes))});
    header.set(entry.name, std::move(info));
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string prefix;
  append_u64_le(prefix, header_text.size());
  io::AtomicFile file(path);
  file.write(prefix);
  file.write(header_text);
  for (const Entry& entry : entries) file.write(entry.data.raw_data(), entry.data.nbytes());
  file.commit();
}

void save_checkpoint(const std::string& directory, const NamedTensors& tensors, uint64_t max_shard_bytes,
                     const Metadata& metadata) {
  namespace fs = std::filesystem;
  fs::create_directories(directory);
  LAMINA_CHECK(max_shard_bytes > 0, "save_checkpoint: max_shard_bytes must be positive");
  // Fill shards in order, never splitting a tensor.
  std::vector<NamedTensors> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const auto& named : tensors) {
    const uint64_t bytes = named.second.nbytes();
    if (in_shard > 0 && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(named);
    in_shard += bytes;
    total += bytes;
  }
  const fs::path dir(directory);
  if (shards.size() == 1) {
    save((dir / "model.safetensors").string(), shards[0], metadata);
    fs::remove(dir / "model.safetensors.index.json");  // a stale index would shadow the new file
    return;
  }
  json::Value weight_map = json::Object{};
  char name_buffer[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name_buffer, sizeof(name_buffer), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    save((dir / name_buffer).string(), shards[i], metadata);
    for (const auto& [name, tensor] : shards[i]) weight_map.set(name, std::string(name_buffer));
  }
  json::Value index = json::Object{};
  json::Value index_metadata = json::Object{};
  index_metadata.set("total_size", json::Value(int64_t(total)));
  index.set("metadata", std::move(index_metadata));
  index.set("weight_map", std::move(weight_map));
  io::write_file_atomically((dir / "model.safetensors.index.json").string(), index.dump(2) + "\n");
  fs::remove(dir / "model.safetensors");  // an unsharded leftover would be ambiguous
}

}  // namespace lamina::safetensors
