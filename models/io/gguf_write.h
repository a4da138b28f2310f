// Writing GGUF files, version 3 (formats-and-quantization.md §5): metadata of every value type,
// tensor infos, the data section at general.alignment (32), each tensor padded to it, and
// the quantizers that turn f32 values into the stored types F32, F16, BF16, Q8_0 and Q4_0 with
// ggml's reference formulas, bit for bit.
//
// A file is written to "<path>.partial-<pid>", synced and renamed over `path` only when
// complete, so an error (or a crash) never leaves a half-written file under the name asked for.
// Tensor bytes are made one tensor at a time while writing (TensorSource), so a model never
// has to be held in memory twice.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "models/io/gguf.h"
#include "tensor/tensor.h"

namespace lamina::gguf {

// Metadata values, made with the exact bits the reader's Value holds.
Value u8_value(uint8_t value);
Value i8_value(int8_t value);
Value u16_value(uint16_t value);
Value i16_value(int16_t value);
Value u32_value(uint32_t value);
Value i32_value(int32_t value);
Value u64_value(uint64_t value);
Value i64_value(int64_t value);
Value f32_value(float value);
Value f64_value(double value);
Value bool_value(bool value);
Value string_value(std::string value);
// An array of `element_type`; every element must be of that type (nested arrays allowed).
Value array_value(ValueType element_type, std::vector<Value> elements);
Value string_array(const std::vector<std::string>& values);
Value i32_array(const std::vector<int32_t>& values);
Value f32_array(const std::vector<float>& values);

// Bytes of `count` f32 values stored as `type` (F32, F16, BF16, Q8_0 or Q4_0; count a multiple
// of the block size for the block types). F16 and BF16 round to nearest even, as ggml does.
// Q8_0: d = amax / 127, q = round(x / d) (half away from zero). Q4_0: d = (the value of largest
// magnitude) / -8, q = min(15, trunc(x / d + 8.5)). Both store d as f16 and quantize with the
// f32 d, in ggml's float operation order.
std::vector<uint8_t> encode(TensorType type, const float* values, uint64_t count);
// The same for one block each (32 values): `out` receives 34 (Q8_0) or 18 (Q4_0) bytes.
void quantize_block_q8_0(const float* values, uint8_t* out);
void quantize_block_q4_0(const float* values, uint8_t* out);
// Whether `type` is one the writer can produce.
bool writable_type(TensorType type);

// Makes a tensor's bytes when the writer reaches it; must return exactly the size its dims and
// type give.
using TensorSource = std::function<std::vector<uint8_t>()>;

class Writer {
 public:
  Writer();  // starts with general.alignment = 32
  // Adds a metadata pair in file order; a key given twice, or empty, is an error.
  void add_metadata(const std::string& key, Value value);
  // Adds a tensor with dims in ggml order (dims[0] fastest; at most 4): the bytes come from
  // `source` during write(). Names must be unique and shorter than 64 bytes; dims[0] must be a
  // multiple of the type's block size.
  void add_tensor(const std::string& name, std::vector<uint64_t> dims, TensorType type, TensorSource source);
  // A lamina tensor (any float dtype; row-major shape [.., rows, columns]) stored as `type`:
  // the dims are its shape reversed.
  void add_tensor(const std::string& name, const Tensor& tensor, TensorType type);

  // Writes the file (see the top of this file); `progress`, when given, hears each tensor's
  // name before its bytes are made.
  void write(const std::string& path, const std::function<void(const std::string&)>& progress = {}) const;

  size_t tensor_count() const { return tensors_.size(); }

 private:
  struct PendingTensor {
    std::string name;
    std::vector<uint64_t> dims;
    TensorType type;
    uint64_t bytes;
    TensorSource source;
  };
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<PendingTensor> tensors_;
  uint64_t alignment_ = 32;
};

}  // namespace lamina::gguf
