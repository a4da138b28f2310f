// Reading GGUF files: header, metadata and tensor-info parsing with every field checked against
// the file before use; dequantization is ggml's, from ops/ggml_blocks.cpp. Only the tensor layer
// and ops/ggml_blocks.cpp are needed here, so the fuzz target links these alone.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>

#include "models/io/gguf.h"
#include "ops/ggml_blocks.h"
#include "tensor/io/regular_file.h"

namespace lamina::gguf {

static_assert(std::endian::native == std::endian::little, "the GGUF reader copies little-endian fields as they are");

// A read-only view of a whole file. Tensors are always decoded into fresh memory, so the
// mapping is never written.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = io::open_regular_file(path, "gguf");
    struct stat status {};
    if (::fstat(fd, &status) != 0) {
      const int error = errno;
      ::close(fd);
      throw Error(str_cat("gguf: cannot stat ", path, ": ", std::strerror(error)));
    }
    size_ = uint64_t(status.st_size);
    if (size_ > 0) {
      data_ = ::mmap(nullptr, size_t(size_), PROT_READ, MAP_PRIVATE, fd, 0);
      if (data_ == MAP_FAILED) {
        const int error = errno;
        data_ = nullptr;
        ::close(fd);
        throw Error(str_cat("gguf: cannot map ", path, ": ", std::strerror(error)));
      }
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_t(size_));
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data_); }
  uint64_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  uint64_t size_ = 0;
};

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kMaxTensorNameBytes = 63;  // ggml's GGML_MAX_NAME (64) less the NUL
constexpr int kMaxArrayNesting = 16;          // deeper nesting only serves to exhaust the stack
// Each array element becomes a Value of about 80 bytes, so a file of one-byte elements would
// grow 80-fold in memory; the total is capped instead. Real files hold a few hundred thousand
// (vocabulary, scores, token types, merges): Llama 3 about 540,000.
constexpr uint64_t kMaxArrayElements = uint64_t(1) << 22;

struct TypeTraits {
  uint32_t id;
  const char* name;
  uint64_t block_elements;  // 0: a ggml type lamina does not decode
  uint64_t block_bytes;
};

// Every id ggml defines, for error messages; those with a block size are the ones lamina reads.
constexpr TypeTraits kTensorTypes[] = {
    {0, "F32", 1, 4},        {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},      {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},     {7, "Q5_1", 32, 24},      {8, "Q8_0", 32, 34},      {9, "Q8_1", 0, 0},
    {10, "Q2_K", 0, 0},      {11, "Q3_K", 0, 0},       {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},  {15, "Q8_K", 0, 0},       {16, "IQ2_XXS", 0, 0},    {17, "IQ2_XS", 0, 0},
    {18, "IQ3_XXS", 0, 0},   {19, "IQ1_S", 0, 0},      {20, "IQ4_NL", 0, 0},     {21, "IQ3_S", 0, 0},
    {22, "IQ2_S", 0, 0},     {23, "IQ4_XS", 0, 0},     {24, "I8", 0, 0},         {25, "I16", 0, 0},
    {26, "I32", 0, 0},       {27, "I64", 0, 0},        {28, "F64", 0, 0},        {29, "IQ1_M", 0, 0},
    {30, "BF16", 1, 2},      {34, "TQ1_0", 0, 0},      {35, "TQ2_0", 0, 0},      {39, "MXFP4", 0, 0},
    {40, "NVFP4", 0, 0},     {41, "Q1_0", 0, 0},       {42, "Q2_0", 0, 0},
};

const TypeTraits* lookup_type(uint32_t id) {
  for (const TypeTraits& traits : kTensorTypes)
    if (traits.id == id) return &traits;
  return nullptr;
}

constexpr const char* kSupportedTypes = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";

// Bytes a value of each fixed-size type takes; 0 for string and array.
uint64_t fixed_size(ValueType type) {
  switch (type) {
    case ValueType::u8: case ValueType::i8: case ValueType::boolean: return 1;
    case ValueType::u16: case ValueType::i16: return 2;
    case ValueType::u32: case ValueType::i32: case ValueType::f32: return 4;
    case ValueType::u64: case ValueType::i64: case ValueType::f64: return 8;
    case ValueType::string: case ValueType::array: return 0;
  }
  return 0;
}

// The fewest bytes any value of `type` can take: what bounds a count against the bytes left.
uint64_t minimum_size(ValueType type) {
  if (type == ValueType::string) return 8;   // u64 length
  if (type == ValueType::array) return 12;   // u32 element type + u64 count
  return fixed_size(type);
}

std::string hex32(uint32_t value) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

bool known_value_type(uint32_t id) { return id <= uint32_t(ValueType::f64); }

// Bounds-checked sequential reads over the mapping; `path` and a field description make the
// errors.
class Reader {
 public:
  Reader(const uint8_t* base, uint64_t size, const std::string& path) : base_(base), size_(size), path_(path) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return size_ - position_; }

  void need(uint64_t bytes, const std::string& what) const {
    LAMINA_CHECK(bytes <= remaining(), "gguf: ", path_, ": ", what, " at byte ", position_, " needs ", bytes,
                 " bytes but only ", remaining(), " remain in the file (size ", size_, "; truncated file?)");
  }
  const uint8_t* take(uint64_t bytes, const std::string& what) {
    need(bytes, what);
    const uint8_t* at = base_ + position_;
    position_ += bytes;
    return at;
  }
  uint64_t integer(uint64_t bytes, const std::string& what) {
    const uint8_t* at = take(bytes, what);
    uint64_t value = 0;
    std::memcpy(&value, at, size_t(bytes));  // little-endian host: the low bytes
    return value;
  }
  uint32_t u32(const std::string& what) { return uint32_t(integer(4, what)); }
  uint64_t u64(const std::string& what) { return integer(8, what); }
  std::string string(const std::string& what) {
    const uint64_t length = u64(what + " length");
    LAMINA_CHECK(length <= remaining(), "gguf: ", path_, ": ", what, " has length ", length, " but only ",
                 remaining(), " bytes remain in the file (size ", size_, ")");
    const uint8_t* at = take(length, what);
    return std::string(reinterpret_cast<const char*>(at), size_t(length));
  }

  // A count of items each at least `item_bytes` long must fit in the bytes left, so that no
  // count read from the file can make a huge allocation.
  void check_count(uint64_t count, uint64_t item_bytes, const std::string& what) const {
    LAMINA_CHECK(item_bytes == 0 || count <= remaining() / item_bytes, "gguf: ", path_, ": ", what, " ", count,
                 " cannot fit in the ", remaining(), " bytes left in the file (each takes at least ", item_bytes,
                 " bytes)");
  }

  Value value(ValueType type, const std::string& what, int depth) {
    Value out;
    out.type = type;
    switch (type) {
      case ValueType::u8: case ValueType::u16: case ValueType::u32: case ValueType::u64: case ValueType::f32:
      case ValueType::f64:
        out.bits = integer(fixed_size(type), what);
        break;
      case ValueType::i8: case ValueType::i16: case ValueType::i32: case ValueType::i64: {
        const uint64_t bytes = fixed_size(type);
        out.bits = integer(bytes, what);
        if (bytes < 8 && (out.bits >> (8 * bytes - 1)) != 0) out.bits |= ~uint64_t(0) << (8 * bytes);  // sign-extend
        break;
      }
      case ValueType::boolean:
        out.bits = integer(1, what);
        LAMINA_CHECK(out.bits <= 1, "gguf: ", path_, ": ", what, " is a bool holding ", out.bits, " (must be 0 or 1)");
        break;
      case ValueType::string:
        out.text = string(what);
        break;
      case ValueType::array: {
        LAMINA_CHECK(depth < kMaxArrayNesting, "gguf: ", path_, ": ", what, " nests arrays deeper than ",
                     kMaxArrayNesting, " levels");
        const uint32_t element_id = u32(what + " element type");
        LAMINA_CHECK(known_value_type(element_id), "gguf: ", path_, ": ", what, " has unknown element type id ",
                     element_id);
        out.element_type = ValueType(element_id);
        const uint64_t count = u64(what + " count");
        check_count(count, minimum_size(out.element_type), what + ": array count");
        LAMINA_CHECK(count <= kMaxArrayElements - array_elements_, "gguf: ", path_, ": ", what, ": array count ", count,
                     " takes the metadata past lamina's limit of ", kMaxArrayElements, " array elements in all");
        array_elements_ += count;
        out.elements.reserve(size_t(count));
        for (uint64_t i = 0; i < count; ++i)
          out.elements.push_back(value(out.element_type, str_cat(what, "[", i, "]"), depth + 1));
        break;
      }
    }
    return out;
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t position_ = 0;
  uint64_t array_elements_ = 0;  // in all arrays so far, against kMaxArrayElements
  const std::string& path_;
};

}  // namespace

const char* value_type_name(ValueType type) {
  switch (type) {
    case ValueType::u8: return "u8";
    case ValueType::i8: return "i8";
    case ValueType::u16: return "u16";
    case ValueType::i16: return "i16";
    case ValueType::u32: return "u32";
    case ValueType::i32: return "i32";
    case ValueType::f32: return "f32";
    case ValueType::boolean: return "bool";
    case ValueType::string: return "string";
    case ValueType::array: return "array";
    case ValueType::u64: return "u64";
    case ValueType::i64: return "i64";
    case ValueType::f64: return "f64";
  }
  return "unknown";
}

bool Value::is_integer() const {
  return fixed_size(type) != 0 && type != ValueType::f32 && type != ValueType::f64 && type != ValueType::boolean;
}

static bool is_signed(ValueType type) {
  return type == ValueType::i8 || type == ValueType::i16 || type == ValueType::i32 || type == ValueType::i64;
}

uint64_t Value::as_u64(const std::string& where) const {
  LAMINA_CHECK(is_integer(), where, ": expected an integer, got ", value_type_name(type));
  LAMINA_CHECK(!is_signed(type) || int64_t(bits) >= 0, where, ": expected a non-negative integer, got ", int64_t(bits));
  return bits;
}

int64_t Value::as_i64(const std::string& where) const {
  LAMINA_CHECK(is_integer(), where, ": expected an integer, got ", value_type_name(type));
  LAMINA_CHECK(is_signed(type) || bits <= uint64_t(std::numeric_limits<int64_t>::max()), where, ": ", bits,
               " does not fit in a signed 64-bit integer");
  return int64_t(bits);
}

double Value::as_f64(const std::string& where) const {
  if (type == ValueType::f32) return double(detail::bits_float(uint32_t(bits)));
  if (type == ValueType::f64) return std::bit_cast<double>(bits);
  LAMINA_CHECK(is_integer(), where, ": expected a number, got ", value_type_name(type));
  return is_signed(type) ? double(int64_t(bits)) : double(bits);
}

bool Value::as_bool(const std::string& where) const {
  LAMINA_CHECK(type == ValueType::boolean, where, ": expected a bool, got ", value_type_name(type));
  return bits != 0;
}

const std::string& Value::as_string(const std::string& where) const {
  LAMINA_CHECK(type == ValueType::string, where, ": expected a string, got ", value_type_name(type));
  return text;
}

const std::vector<Value>& Value::as_array(const std::string& where) const {
  LAMINA_CHECK(type == ValueType::array, where, ": expected an array, got ", value_type_name(type));
  return elements;
}

const char* tensor_type_name(uint32_t id) {
  const TypeTraits* traits = lookup_type(id);
  return traits == nullptr ? "unknown" : traits->name;
}

bool tensor_type_supported(uint32_t id) {
  const TypeTraits* traits = lookup_type(id);
  return traits != nullptr && traits->block_elements != 0;
}

uint64_t block_elements(TensorType type) { return lookup_type(uint32_t(type))->block_elements; }
uint64_t block_bytes(TensorType type) { return lookup_type(uint32_t(type))->block_bytes; }

Shape TensorInfo::shape() const {
  Shape shape;
  for (auto dim = dims.rbegin(); dim != dims.rend(); ++dim) shape.push_back(int64_t(*dim));
  return shape;
}

File File::open(const std::string& path) {
  File file;
  file.path_ = path;
  file.mapping_ = std::make_shared<MappedFile>(path);
  const MappedFile& map = *file.mapping_;
  Reader reader(map.bytes(), map.size(), path);

  const uint32_t magic = reader.u32("magic");
  LAMINA_CHECK(magic == kMagic, "gguf: ", path, ": bad magic ", hex32(magic),
               " (expected the bytes \"GGUF\"; not a GGUF file)");
  file.version_ = reader.u32("version");
  LAMINA_CHECK(file.version_ != 0x03000000 && file.version_ != 0x02000000, "gguf: ", path, ": version ",
               file.version_, " is a byte-swapped version (a big-endian GGUF file), which lamina does not read");
  LAMINA_CHECK(file.version_ == 2 || file.version_ == 3, "gguf: ", path, ": unsupported version ", file.version_,
               " (lamina reads GGUF version 3, and 2 which has the same layout)");
  const uint64_t tensor_count = reader.u64("tensor count");
  const uint64_t metadata_count = reader.u64("metadata count");
  // Each key/value takes a key length, a type and at least one byte of value; each tensor
  // info a name length, n_dims, a type and an offset.
  reader.check_count(metadata_count, 8 + 4 + 1, "metadata count");
  reader.check_count(tensor_count, 8 + 4 + 4 + 8, "tensor count");

  file.metadata_.reserve(size_t(metadata_count));
  for (uint64_t i = 0; i < metadata_count; ++i) {
    std::string key = reader.string(str_cat("metadata key ", i));
    const std::string where = str_cat("metadata '", key, "'");
    LAMINA_CHECK(file.metadata_index_.count(key) == 0, "gguf: ", path, ": ", where, " appears more than once");
    const uint32_t type = reader.u32(where + " value type");
    LAMINA_CHECK(known_value_type(type), "gguf: ", path, ": ", where, " has unknown value type id ", type);
    Value value = reader.value(ValueType(type), where, 0);
    file.metadata_index_[key] = file.metadata_.size();
    file.metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const Value* alignment = file.find_metadata("general.alignment")) {
    LAMINA_CHECK(alignment->type == ValueType::u32, "gguf: ", path,
                 ": metadata 'general.alignment' must be a u32, not ", value_type_name(alignment->type));
    LAMINA_CHECK(alignment->bits != 0 && std::has_single_bit(alignment->bits), "gguf: ", path,
                 ": metadata 'general.alignment' is ", alignment->bits, ", not a power of two");
    file.alignment_ = alignment->bits;
  } else {
    file.alignment_ = kDefaultAlignment;
  }

  file.tensors_.reserve(size_t(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfo info;
    info.name = reader.string(str_cat("tensor ", i, " name"));
    const std::string where = str_cat("gguf: ", path, ": tensor '", info.name, "'");
    LAMINA_CHECK(info.name.size() <= kMaxTensorNameBytes, where, ": name is ", info.name.size(),
                 " bytes long, longer than ggml's limit of ", kMaxTensorNameBytes);
    LAMINA_CHECK(file.tensor_index_.count(info.name) == 0, where, ": duplicate tensor name");
    const uint32_t n_dims = reader.u32(str_cat("tensor '", info.name, "' n_dims"));
    LAMINA_CHECK(n_dims <= kMaxDims, where, ": n_dims ", n_dims, " exceeds the maximum of ", kMaxDims);
    // The element count, and the product with every zero taken as one, must fit in int64 so
    // that lamina's shape and strides cannot overflow either.
    uint64_t elements = 1, nonzero_product = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = reader.u64(str_cat("tensor '", info.name, "' dims[", d, "]"));
      const uint64_t factor = std::max<uint64_t>(dim, 1);
      LAMINA_CHECK(nonzero_product <= uint64_t(std::numeric_limits<int64_t>::max()) / factor, where, ": dims[", d,
                   "] = ", dim, " makes the element count overflow");
      nonzero_product *= factor;
      elements *= dim;
      info.dims.push_back(dim);
    }
    info.elements = elements;
    const uint32_t type = reader.u32(str_cat("tensor '", info.name, "' type"));
    const TypeTraits* traits = lookup_type(type);
    LAMINA_CHECK(traits != nullptr, where, ": unknown type id ", type);
    LAMINA_CHECK(traits->block_elements != 0, where, ": type ", traits->name, " (id ", type,
                 ") is not one lamina reads (", kSupportedTypes, ")");
    info.type = TensorType(type);
    const uint64_t ne0 = n_dims == 0 ? 1 : info.dims[0];
    LAMINA_CHECK(ne0 % traits->block_elements == 0, where, ": dims[0] = ", ne0, " is not a multiple of the ",
                 traits->name, " block size ", traits->block_elements);
    // elements / block_elements * block_bytes <= elements * 4 < 2^65 at most; check it anyway.
    const uint64_t blocks = elements / traits->block_elements;
    LAMINA_CHECK(blocks <= std::numeric_limits<uint64_t>::max() / traits->block_bytes, where,
                 ": data size overflows 64 bits");
    info.bytes = blocks * traits->block_bytes;
    info.offset = reader.u64(str_cat("tensor '", info.name, "' offset"));
    LAMINA_CHECK(info.offset % file.alignment_ == 0, where, ": offset ", info.offset,
                 " is not a multiple of the alignment ", file.alignment_);
    file.tensor_index_[info.name] = file.tensors_.size();
    file.tensors_.push_back(std::move(info));
  }

  const uint64_t header_end = reader.position();
  file.data_start_ = header_end + (file.alignment_ - header_end % file.alignment_) % file.alignment_;
  if (!file.tensors_.empty())
    LAMINA_CHECK(file.data_start_ <= map.size(), "gguf: ", path, ": the data section would start at byte ",
                 file.data_start_, " (the header padded to the alignment ", file.alignment_,
                 "), past the end of the file (size ", map.size(), ")");
  const uint64_t data_bytes = file.data_start_ <= map.size() ? map.size() - file.data_start_ : 0;
  for (const TensorInfo& info : file.tensors_) {
    LAMINA_CHECK(info.offset <= data_bytes && info.bytes <= data_bytes - info.offset, "gguf: ", path, ": tensor '",
                 info.name, "': data [", info.offset, ", ", info.offset, "+", info.bytes,
                 ") of the data section runs past the end of the file (size ", map.size(), ", data section at ",
                 file.data_start_, ")");
  }
  // No two tensors may share bytes.
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& info : file.tensors_)
    if (info.bytes != 0) by_offset.push_back(&info);
  std::stable_sort(by_offset.begin(), by_offset.end(),  // stable: ties name the later tensor
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& before = *by_offset[i - 1];
    const TensorInfo& after = *by_offset[i];
    LAMINA_CHECK(after.offset >= before.offset + before.bytes, "gguf: ", path, ": tensor '", after.name,
                 "' (data at ", after.offset, ") overlaps tensor '", before.name, "' (data [", before.offset, ", ",
                 before.offset + before.bytes, "))");
  }
  // Everything the header says is parsed into copies (metadata values, tensor infos): its pages
  // (megabytes for a tokenizer's vocabulary) leave resident memory now; a later read of them
  // would simply fault them back from the file.
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const uint64_t header_pages = std::min<uint64_t>(header_end, map.size()) / page * page;
  if (header_pages > 0) ::madvise(const_cast<uint8_t*>(map.bytes()), size_t(header_pages), MADV_DONTNEED);
  return file;
}

const Value* File::find_metadata(const std::string& key) const {
  const auto found = metadata_index_.find(key);
  return found == metadata_index_.end() ? nullptr : &metadata_[found->second].second;
}

const Value& File::metadata(const std::string& key) const {
  const Value* value = find_metadata(key);
  LAMINA_CHECK(value != nullptr, "gguf: ", path_, " has no metadata '", key, "'");
  return *value;
}

const TensorInfo* File::find(const std::string& name) const {
  const auto found = tensor_index_.find(name);
  return found == tensor_index_.end() ? nullptr : &tensors_[found->second];
}

const uint8_t* File::data(const TensorInfo& info) const { return mapping_->bytes() + data_start_ + info.offset; }

std::shared_ptr<const void> File::bytes_owner() const { return mapping_; }

void File::release(const TensorInfo& info) const {
  // Only whole pages inside the tensor: its first and last pages may hold a neighbour's bytes.
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = data_start_ + info.offset, end = begin + info.bytes;
  const uint64_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first)
    ::madvise(const_cast<uint8_t*>(mapping_->bytes()) + first, size_t(last - first), MADV_DONTNEED);
}

void File::prefetch() const {
  if (mapping_->size() > 0) ::madvise(const_cast<uint8_t*>(mapping_->bytes()), size_t(mapping_->size()), MADV_WILLNEED);
}

Tensor File::read(const std::string& name, bool keep_16_bit) const {
  const TensorInfo* info = find(name);
  LAMINA_CHECK(info != nullptr, "gguf: ", path_, " has no tensor '", name, "'");
  const uint8_t* bytes = info->bytes == 0 ? nullptr : data(*info);
  if (keep_16_bit && (info->type == TensorType::f16 || info->type == TensorType::bf16)) {
    Tensor out = Tensor::empty(info->shape(), info->type == TensorType::f16 ? DType::f16 : DType::bf16);
    if (info->bytes != 0) std::memcpy(out.raw_data(), bytes, size_t(info->bytes));
    return out;
  }
  Tensor out = Tensor::empty(info->shape(), DType::f32);
  if (info->elements != 0) dequantize(info->type, bytes, info->elements, out.data<float>());
  return out;
}

// ---- dequantization: ggml's formulas live in ops/ggml_blocks (shared with the quantized kernels) ----

void dequantize(TensorType type, const uint8_t* bytes, uint64_t count, float* out) {
  // TensorType's values are ggml's type ids, as are BlockType's: the conversion is by value.
  ops::ggml::dequantize(ops::ggml::BlockType(uint32_t(type)), bytes, count, out);
}

}  // namespace lamina::gguf
