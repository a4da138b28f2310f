// ggml's block formats (the tensor types of GGUF files): their sizes and their exact
// dequantization. These sit in ops/ so that the quantized kernels (ops/cpu/gguf_dot*,
// ops/cpu/gguf_kquant*) and the GGUF reader (models/io/gguf_read.cpp, which sits above ops/)
// share one definition of what each block means.
//
// A tensor of a block type is a sequence of blocks, each holding block_elements(type) values in
// block_bytes(type) bytes; rows of a matrix are whole blocks stored one after another.
#pragma once

#include <cstdint>

namespace lamina::ops::ggml {

// The block types lamina decodes; each value equals ggml's type id, so a GGUF type id converts
// by value.
enum class BlockType : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8,
  q4_k = 12, q5_k = 13, q6_k = 14, bf16 = 30,
};

// "Q4_K", ... for the types above; "unknown" for any other value.
const char* block_type_name(BlockType type);
// Whether `id` is one of the BlockType values above.
bool block_type_known(uint32_t id);
// 1 (f32, f16, bf16), 32 or 256; throws for a value that is not a BlockType above.
uint64_t block_elements(BlockType type);
uint64_t block_bytes(BlockType type);

// Decodes `count` elements (a multiple of the type's block size) of `type` stored at `bytes`
// into `out`, with ggml's formulas and float operation order. Throws lamina::Error for an
// unknown type or a count that is not whole blocks.
void dequantize(BlockType type, const uint8_t* bytes, uint64_t count, float* out);

// One block's decoders, for kernels that decode a block at a time (out receives 32 or 256).
void dequantize_block_q4_0(const uint8_t* block, float* out);
void dequantize_block_q4_1(const uint8_t* block, float* out);
void dequantize_block_q8_0(const uint8_t* block, float* out);
void dequantize_block_q4_k(const uint8_t* block, float* out);
void dequantize_block_q6_k(const uint8_t* block, float* out);

// The f16 scale at `p` (little-endian IEEE half), as ggml reads block scales.
float half_to_float(const uint8_t* p);

}  // namespace lamina::ops::ggml
