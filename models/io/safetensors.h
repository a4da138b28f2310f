// safetensors files and Hugging Face checkpoint folders.
//
// Layout: u64 little-endian header length N, N bytes of JSON header, then the data buffer;
// each header entry gives a tensor's dtype, shape and [begin, end) byte range in the buffer.
// Reading validates everything the reference reader does (header length against the file,
// dtype/shape/byte-count agreement, entries tiling the buffer exactly with no holes or
// overlaps, unknown dtypes) and maps the file, so tensors whose dtype matches are views of
// the mapping, not copies. Writing is atomic: a temporary file renamed into place.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace lamina::safetensors {

struct TensorInfo {
  std::string name;
  std::string file_dtype;  // as written: "F32", "BF16", ...
  DType dtype;             // what read() returns (I8 widens to i32)
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range within the data buffer
};

using Metadata = std::map<std::string, std::string>;
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class MappedFile;

class File {
 public:
  // Maps and validates `path`; throws lamina::Error naming the file and the problem.
  static File open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data order
  const Metadata& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  // The named tensor: a view of the mapping when the dtype is stored as is and the bytes are
  // aligned for it, otherwise a converted copy. Writes to a view never reach the file.
  Tensor read(const std::string& name) const;
  // Gives the memory pages that lie wholly inside the named tensor's bytes back to the system
  // (they read again from the file if touched): for a tensor consumed once, e.g. quantized as
  // it loads, so that the file's pages do not stay resident. Only for a tensor whose views
  // nobody holds any more: data written to such a view would be lost.
  void release(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  Metadata metadata_;
};

// Writes `tensors` (any device, dtype and layout) to `path` atomically, in the reference
// writer's order (descending dtype alignment, then name), header padded to a multiple of 8.
// `metadata` always gets "format": "pt" unless it sets "format" itself.
void save(const std::string& path, const NamedTensors& tensors, Metadata metadata = {});

// A Hugging Face checkpoint folder: model.safetensors, or shards listed by
// model.safetensors.index.json. Each shard is mapped once.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& directory);
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return location_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  Tensor read(const std::string& name) const;
  void release(const std::string& name) const;  // File::release on the tensor's shard
  const std::string& directory() const { return directory_; }

 private:
  std::string directory_;
  std::vector<File> files_;
  std::map<std::string, size_t> location_;  // tensor name -> index into files_
};

// Writes a checkpoint folder's weights: one model.safetensors when they fit in
// `max_shard_bytes`, otherwise model-0000i-of-0000n.safetensors plus the index file. A tensor is
// never split across shards.
void save_checkpoint(const std::string& directory, const NamedTensors& tensors,
                     uint64_t max_shard_bytes = uint64_t(5) << 30, const Metadata& metadata = {});

// A tensor of a checkpoint written as a stream (save_checkpoint_streamed): what its header needs;
// its bytes are made when the writer reaches it.
struct StreamedTensor {
  std::string name;
  Shape shape;
  DType dtype = DType::f32;
  uint64_t bytes() const { return uint64_t(shape_numel(shape)) * dtype_size(dtype); }
};
// Receives a tensor's bytes, in as many pieces as its maker likes.
using ByteSink = std::function<void(const void* data, size_t bytes)>;

// What save_checkpoint writes (the same shards, file names, header, tensor order and index file),
// for tensors that never exist all at once: each tensor's bytes come from
// write_tensor(tensor, sink) when the writer reaches it, which must give exactly tensor.bytes()
// bytes. Streamed tools (merge, mutate) hold one tensor, or one chunk, at a time. Returns the
// weight files written, in order.
std::vector<std::string> save_checkpoint_streamed(
    const std::string& directory, const std::vector<StreamedTensor>& tensors,
    const std::function<void(const StreamedTensor& tensor, const ByteSink& sink)>& write_tensor,
    uint64_t max_shard_bytes = uint64_t(5) << 30, const Metadata& metadata = {});

// "F32" <-> lamina dtype for the dtypes lamina writes.
const char* file_dtype_name(DType dtype);

}  // namespace lamina::safetensors
