// GGUF files (ggml / llama.cpp checkpoints), version 3 (and 2, which has the same layout).
//
// Layout (../shared/docs/formats-and-quantization.md §5): magic "GGUF", u32 version, u64 tensor
// count, u64 metadata count, the metadata key/value pairs, the tensor infos (name, dims in ggml
// order with dims[0] fastest, type id, offset), zero padding to the alignment, then the data
// section. Opening maps the file read-only and validates every count, length, type id, offset
// and extent against the file before anything is allocated or read, so a damaged or hostile
// file is a lamina::Error naming the file and the field, never a crash or a huge allocation.
// Reading a tensor dequantizes it to f32 exactly as ggml does.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace lamina::gguf {

// Metadata value type ids, as stored in the file.
enum class ValueType : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};
const char* value_type_name(ValueType type);  // "u32", "string", ...

// One metadata value. Numbers keep their exact bits; the accessors convert with range checks.
struct Value {
  ValueType type = ValueType::u8;
  uint64_t bits = 0;            // integers (sign-extended for signed types), bool, f32/f64 bit patterns
  std::string text;             // string
  ValueType element_type = ValueType::u8;  // array
  std::vector<Value> elements;  // array

  bool is_integer() const;
  bool is_float() const { return type == ValueType::f32 || type == ValueType::f64; }
  // Any integer type whose value fits; `where` names the key in errors.
  uint64_t as_u64(const std::string& where) const;
  int64_t as_i64(const std::string& where) const;
  double as_f64(const std::string& where) const;  // f32, f64 or an integer
  bool as_bool(const std::string& where) const;
  const std::string& as_string(const std::string& where) const;
  const std::vector<Value>& as_array(const std::string& where) const;
};

// ggml tensor type ids that lamina decodes. Other ids (valid ggml types lamina does not read,
// or unknown ones) are refused when the file is opened.
enum class TensorType : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8,
  q4_k = 12, q5_k = 13, q6_k = 14, bf16 = 30,
};
const char* tensor_type_name(uint32_t id);  // "Q4_K", ..., or "unknown" for ids ggml does not define
bool tensor_type_supported(uint32_t id);
uint64_t block_elements(TensorType type);  // 1, 32 or 256
uint64_t block_bytes(TensorType type);

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the fastest-varying axis
  TensorType type = TensorType::f32;
  uint64_t offset = 0;    // from the start of the data section
  uint64_t elements = 0;  // product of dims
  uint64_t bytes = 0;     // size of the data
  // lamina's row-major shape: dims reversed, [dims[n-1], ..., dims[0]].
  Shape shape() const;
};

class MappedFile;

class File {
 public:
  // Maps and validates `path`; throws lamina::Error naming the file and the problem.
  static File open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_start() const { return data_start_; }  // file offset of the data section

  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }  // file order
  const Value* find_metadata(const std::string& key) const;
  const Value& metadata(const std::string& key) const;  // throws naming the key when absent

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // file order
  const TensorInfo* find(const std::string& name) const;
  // The tensor's bytes as stored (valid while this File or a copy of it lives).
  const uint8_t* data(const TensorInfo& info) const;
  // What keeps data() valid: the mapping (held by computations that borrow a tensor's bytes).
  std::shared_ptr<const void> bytes_owner() const;
  // Tells the kernel the tensor's bytes will not be read again through this mapping (they were
  // copied, e.g. rows reordered): its whole pages leave the process's resident memory. Reading
  // them later is still valid (they are read back from the file).
  void release(const TensorInfo& info) const;
  // Asks the kernel to read the whole file ahead (before a model computes with it in place).
  void prefetch() const;
  // The named tensor with lamina's shape (see TensorInfo::shape): f32, dequantized from any
  // supported type; with keep_16_bit, F16 and BF16 tensors come back as lamina f16 / bf16.
  Tensor read(const std::string& name, bool keep_16_bit = false) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::map<std::string, size_t> metadata_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Decodes `count` elements (a multiple of the type's block size) of `type` stored at `bytes`
// into `out`, with ggml's formulas and float operation order.
void dequantize(TensorType type, const uint8_t* bytes, uint64_t count, float* out);

}  // namespace lamina::gguf
