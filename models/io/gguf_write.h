// Writing GGUF files, version 3 (formats-and-quantization.md §5): metadata of every value type,
// tensor infos, the data section at general.alignment (32), each tensor padded to it, and
// the quantizers that turn f32 values into the stored types F32, F16, BF16, Q8_0, Q4_0 and Q4_1
// (ggml's reference formulas, bit for bit) and Q4_K and Q6_K (ggml's layouts, rounded to nearest
// per block without ggml's iterative search for better scales).
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

// Bytes of `count` f32 values stored as `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K;
// count a multiple of the block size for the block types: 32, or 256 for the K-quants). F16 and
// BF16 round to nearest even, as ggml does. Per block (x the block's values):
//   Q8_0: d = amax / 127, q = round(x / d) (half away from zero); x ~ q * d.
//   Q4_0: d = (the value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5)); x ~ (q - 8) * d.
//   Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - m) / d + 0.5)); x ~ q * d + m.
// These three store d (and m) as f16 and quantize with the f32 d (and m), in ggml's float
// operation order, so they give ggml's bytes. Their error: |x - x~| <= d / 2 (Q4_0: d, its far
// end clamps) plus what the f16 rounding of d (and m) moves: 2^-11 of the largest code's value.
//   Q4_K: 8 sub-blocks of 32. Sub-block j: lo_j = min(0, min x), scale_j = (max x - lo_j) / 15,
//     min_j = -lo_j (>= 0). d = max_j scale_j / 63 and dmin = max_j min_j / 63, both f16; the
//     6-bit sc_j = round(scale_j * 63 / max scale) and mn_j = round(min_j * 63 / max min) (half
//     to even). Values are quantized against what the decoder will use, D_j = f16(d) * sc_j and
//     M_j = f16(dmin) * mn_j: q = clamp(round((x + M_j) / D_j), 0, 15) (q = 0 when D_j = 0);
//     x ~ D_j * q - M_j. Error: |x - x~| <= D_j / 2 where x lies in [-M_j, 15 D_j - M_j], and
//     that range misses the sub-block's by at most 15 |D_j - scale_j| + |M_j - min_j|, each at
//     most (1/126 + 2^-11) of max scale (resp. max min).
//   Q6_K: 16 sub-blocks of 16. Sub-block j: scale_j = (its value of largest magnitude) / -32, so
//     that value maps to q = -32; S = the scale of largest magnitude; d = f16(S / -128) and the
//     int8 sc_j = min(127, round(scale_j * -128 / S)); q = clamp(round(x / D_j), -32, 31) against
//     D_j = f16(d) * sc_j (q = 0 when D_j = 0); x ~ D_j * q. Error: |x - x~| <= |D_j| / 2 where
//     x / D_j lies in [-32.5, 31.5]; the clamps cost at most |scale_j| + 32 |D_j - scale_j|, and
//     |D_j - scale_j| <= (1/128 + 2^-11) |S|.
// (The f16 terms assume d in f16's normal range, >= 2^-14; below it f16 keeps fewer bits.)
// A block of zeros gives zero bytes in Q8_0, Q4_1, Q4_K and Q6_K (Q6_K then stores q = -32
// against d = 0), not in Q4_0 (d = -0, q = 0 stored as nibble 8).
std::vector<uint8_t> encode(TensorType type, const float* values, uint64_t count);
// The same for one block each: `out` receives block_bytes(type) bytes from 32 values (Q8_0 34,
// Q4_0 18, Q4_1 20) or 256 values (Q4_K 144, Q6_K 210).
void quantize_block_q8_0(const float* values, uint8_t* out);
void quantize_block_q4_0(const float* values, uint8_t* out);
void quantize_block_q4_1(const float* values, uint8_t* out);
void quantize_block_q4_k(const float* values, uint8_t* out);
void quantize_block_q6_k(const float* values, uint8_t* out);
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
  // multiple of the type's block size (32, or 256 for Q4_K and Q6_K).
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
