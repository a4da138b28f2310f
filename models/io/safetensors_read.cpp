// Reading safetensors files and checkpoint folders (writing: safetensors_write.cpp). Only
// the tensor layer is needed here, so the fuzz target links this file alone.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "models/io/safetensors.h"
#include "models/io/safetensors_dtypes.h"
#include "tensor/io/json.h"
#include "tensor/io/regular_file.h"

namespace lamina::safetensors {

// A read-only view of a whole file, private copy-on-write so that tensors backed by it can be
// written to without touching the file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = io::open_regular_file(path, "safetensors");
    struct stat status {};
    if (::fstat(fd, &status) != 0) {
      ::close(fd);
      throw Error(str_cat("safetensors: cannot stat ", path, ": ", std::strerror(errno)));
    }
    size_ = size_t(status.st_size);
    if (size_ > 0) {
      data_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (data_ == MAP_FAILED) {
        ::close(fd);
        throw Error(str_cat("safetensors: cannot map ", path, ": ", std::strerror(errno)));
      }
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data_); }
  uint8_t* mutable_bytes() const { return static_cast<uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit

using detail::FileDType;
using detail::kFileDTypes;

const FileDType* lookup(const std::string& name) {
  for (const FileDType& entry : kFileDTypes)
    if (name == entry.name) return &entry;
  return nullptr;
}

// a * b, or an error when it would overflow 64 bits.
uint64_t checked_product(uint64_t a, uint64_t b, const std::string& what) {
  LAMINA_CHECK(b == 0 || a <= UINT64_MAX / b, what, ": size overflows 64 bits");
  return a * b;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

}  // namespace


File File::open(const std::string& path) {
  File file;
  file.path_ = path;
  file.mapping_ = std::make_shared<MappedFile>(path);
  const MappedFile& map = *file.mapping_;
  LAMINA_CHECK(map.size() >= 8, "safetensors: ", path, " is truncated: ", map.size(),
               " bytes, shorter than the 8-byte header length");
  const uint64_t header_bytes = read_u64_le(map.bytes());
  LAMINA_CHECK(header_bytes <= kMaxHeaderBytes, "safetensors: ", path, ": header length ", header_bytes,
               " exceeds the limit of ", kMaxHeaderBytes, " bytes (not a safetensors file?)");
  LAMINA_CHECK(8 + header_bytes <= map.size(), "safetensors: ", path, ": header length ", header_bytes,
               " runs past the end of the file (", map.size(), " bytes)");
  file.data_start_ = 8 + header_bytes;
  const std::string_view header_text(reinterpret_cast<const char*>(map.bytes() + 8), size_t(header_bytes));
  const json::Value header = json::parse(header_text, path + " (header)");
  LAMINA_CHECK(header.is_object(), "safetensors: ", path, ": the header is not a JSON object");

  for (const auto& [name, entry] : header.as_object()) {
    const std::string where = str_cat("safetensors: ", path, ": tensor '", name, "'");
    if (name == "__metadata__") {
      for (const auto& [key, value] : entry.as_object(path + ": __metadata__"))
        file.metadata_[key] = value.as_string(str_cat(path, ": __metadata__.", key));
      continue;
    }
    TensorInfo info;
    info.name = name;
    info.file_dtype = entry.at("dtype", where).as_string(where + " dtype");
    const FileDType* dtype = lookup(info.file_dtype);
    LAMINA_CHECK(dtype != nullptr, where, " has dtype ", info.file_dtype,
                 ", which lamina does not read (F32, F64, BF16, F16, I64, I32, I8, U8, BOOL)");
    info.dtype = dtype->dtype;
    uint64_t count = 1;
    for (const json::Value& size : entry.at("shape", where).as_array(where + " shape")) {
      const int64_t dim = size.as_int64(where + " shape");
      LAMINA_CHECK(dim >= 0, where, " has a negative size in its shape");
      info.shape.push_back(dim);
      count = checked_product(count, uint64_t(dim), where);
    }
    const json::Array& offsets = entry.at("data_offsets", where).as_array(where + " data_offsets");
    LAMINA_CHECK(offsets.size() == 2, where, ": data_offsets must be [begin, end]");
    const int64_t begin = offsets[0].as_int64(where + " data_offsets"), end = offsets[1].as_int64(where + " data_offsets");
    LAMINA_CHECK(begin >= 0 && end >= begin, where, ": invalid data_offsets [", begin, ", ", end, "]");
    info.begin = uint64_t(begin);
    info.end = uint64_t(end);
    const uint64_t bytes = checked_product(count, dtype->bits, where) / 8;
    LAMINA_CHECK(info.end - info.begin == bytes, where, ": ", info.file_dtype, " ", info.shape, " needs ", bytes,
                 " bytes but data_offsets [", begin, ", ", end, "] hold ", info.end - info.begin);
    file.tensors_.push_back(std::move(info));
  }

  // The entries must tile the data buffer exactly.
  std::sort(file.tensors_.begin(), file.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  uint64_t expected = 0;
  for (const TensorInfo& info : file.tensors_) {
    LAMINA_CHECK(info.begin == expected, "safetensors: ", path, ": tensor '", info.name, "' starts at byte ",
                 info.begin, " of the data but the previous tensor ends at ", expected,
                 info.begin < expected ? " (overlapping data)" : " (a hole in the data)");
    expected = info.end;
  }
  const uint64_t data_bytes = map.size() - file.data_start_;
  LAMINA_CHECK(expected == data_bytes, "safetensors: ", path, ": the tensors cover ", expected,
               " bytes of data but the file holds ", data_bytes, expected > data_bytes ? " (truncated file?)" : "");
  return file;
}

const TensorInfo* File::find(const std::string& name) const {
  for (const TensorInfo& info : tensors_)
    if (info.name == name) return &info;
  return nullptr;
}

void File::release(const std::string& name) const {
  const TensorInfo* info = find(name);
  LAMINA_CHECK(info != nullptr, "safetensors: ", path_, " has no tensor '", name, "'");
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(mapping_->bytes() + data_start_ + info->begin);
  const uintptr_t end = reinterpret_cast<uintptr_t>(mapping_->bytes() + data_start_ + info->end);
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;  // whole pages only
  // Advice: a failure leaves the pages resident, which costs memory, not correctness.
  if (first < last) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

Tensor File::read(const std::string& name) const {
  const TensorInfo* info = find(name);
  LAMINA_CHECK(info != nullptr, "safetensors: ", path_, " has no tensor '", name, "'");
  uint8_t* bytes = mapping_->mutable_bytes() + data_start_ + info->begin;
  const size_t size = size_t(info->end - info->begin);
  if (info->file_dtype == "BOOL") {  // loading a bool that holds anything but 0 or 1 is undefined behaviour
    const uint8_t* invalid = std::find_if(bytes, bytes + size, [](uint8_t byte) { return byte > 1; });
    const int64_t element = invalid - bytes;
    LAMINA_CHECK(invalid == bytes + size, "safetensors: ", path_, ": tensor '", name, "' (BOOL) holds the byte ",
                 int(*invalid), " at element ", element, " (file offset ", data_start_ + info->begin + uint64_t(element),
                 "); a BOOL must be 0 or 1");
  }
  if (info->file_dtype == "I8") {  // widened to i32
    std::vector<int64_t> values(size);
    for (size_t i = 0; i < size; ++i) values[i] = int8_t(bytes[i]);
    return Tensor::from_vector(values, info->shape, DType::i32);
  }
  const size_t element = dtype_size(info->dtype);
  const bool aligned = reinterpret_cast<uintptr_t>(bytes) % element == 0;
  const Tensor view(Storage::wrap(bytes, size, Device::cpu(), mapping_), info->shape, contiguous_strides(info->shape), 0,
                    info->dtype);
  if (aligned) return view;
  // Unaligned data (another writer's layout): copy byte-wise into fresh, aligned memory.
  Tensor copy = Tensor::empty(info->shape, info->dtype);
  std::memcpy(copy.raw_data(), bytes, size);
  return copy;
}

Checkpoint Checkpoint::open(const std::string& directory) {
  namespace fs = std::filesystem;
  Checkpoint checkpoint;
  checkpoint.directory_ = directory;
  const fs::path dir(directory);
  const fs::path index_path = dir / "model.safetensors.index.json";
  const fs::path single_path = dir / "model.safetensors";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> expected_shard;  // tensor -> shard per the index
  if (fs::exists(index_path)) {
    const json::Value index = json::parse_file(index_path.string());
    const std::string weight_map = index_path.string() + ": weight_map";
    for (const auto& [name, shard] : index.at("weight_map", index_path.string()).as_object(weight_map)) {
      const std::string& file = shard.as_string(str_cat(index_path.string(), ": weight_map.", name));
      LAMINA_CHECK(file.find('/') == std::string::npos, index_path.string(), ": shard '", file,
                   "' is not a file name in the checkpoint folder");
      expected_shard[name] = file;
      if (std::find(shard_names.begin(), shard_names.end(), file) == shard_names.end()) shard_names.push_back(file);
    }
  } else if (fs::exists(single_path)) {
    shard_names.push_back("model.safetensors");
  } else {
    throw Error(str_cat("checkpoint: ", directory, " has neither model.safetensors nor model.safetensors.index.json"));
  }
  for (const std::string& shard : shard_names) {
    LAMINA_CHECK(expected_shard.empty() || fs::exists(dir / shard), "checkpoint: ", index_path.string(),
                 " lists the shard ", shard, ", which is not in the folder");
    checkpoint.files_.push_back(File::open((dir / shard).string()));
    const File& file = checkpoint.files_.back();
    for (const TensorInfo& info : file.tensors()) {
      LAMINA_CHECK(checkpoint.location_.count(info.name) == 0, "checkpoint: tensor '", info.name,
                   "' appears in more than one shard of ", directory);
      if (!expected_shard.empty()) {
        const auto listed = expected_shard.find(info.name);
        LAMINA_CHECK(listed != expected_shard.end() && listed->second == shard, "checkpoint: tensor '", info.name,
                     "' is in ", shard, " but the index ",
                     listed == expected_shard.end() ? std::string("does not list it") : "places it in " + listed->second);
      }
      checkpoint.location_[info.name] = checkpoint.files_.size() - 1;
    }
  }
  for (const auto& [name, shard] : expected_shard)
    LAMINA_CHECK(checkpoint.location_.count(name) != 0, "checkpoint: the index lists tensor '", name, "' in ", shard,
                 " but that file does not contain it");
  return checkpoint;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  for (const auto& [name, file] : location_) names.push_back(name);
  return names;
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  const auto found = location_.find(name);
  LAMINA_CHECK(found != location_.end(), "checkpoint: ", directory_, " has no tensor '", name, "'");
  return *files_[found->second].find(name);
}

void Checkpoint::release(const std::string& name) const {
  const auto found = location_.find(name);
  LAMINA_CHECK(found != location_.end(), "checkpoint: ", directory_, " has no tensor '", name, "'");
  files_[found->second].release(name);
}

Tensor Checkpoint::read(const std::string& name) const {
  const auto found = location_.find(name);
  LAMINA_CHECK(found != location_.end(), "checkpoint: ", directory_, " has no tensor '", name, "'");
  return files_[found->second].read(name);
}

}  // namespace lamina::safetensors
