// ggml's block formats: sizes, names and dequantization with ggml's reference formulas in its float
// operation order (moved here from models/io/gguf_read.cpp so that ops/ kernels can use them).
#include "ops/ggml_blocks.h"

#include <cstring>

#include "tensor/tensor.h"

namespace lamina::ops::ggml {

namespace {

struct BlockTraits {
  BlockType type;
  const char* name;
  uint64_t elements;
  uint64_t bytes;
};

constexpr BlockTraits kBlockTypes[] = {
    {BlockType::f32, "F32", 1, 4},         {BlockType::f16, "F16", 1, 2},       {BlockType::bf16, "BF16", 1, 2},
    {BlockType::q4_0, "Q4_0", 32, 18},     {BlockType::q4_1, "Q4_1", 32, 20},   {BlockType::q5_0, "Q5_0", 32, 22},
    {BlockType::q5_1, "Q5_1", 32, 24},     {BlockType::q8_0, "Q8_0", 32, 34},   {BlockType::q4_k, "Q4_K", 256, 144},
    {BlockType::q5_k, "Q5_K", 256, 176},   {BlockType::q6_k, "Q6_K", 256, 210},
};

const BlockTraits* lookup(BlockType type) {
  for (const BlockTraits& traits : kBlockTypes)
    if (traits.type == type) return &traits;
  return nullptr;
}

const BlockTraits& checked(BlockType type) {
  const BlockTraits* traits = lookup(type);
  LAMINA_CHECK(traits != nullptr, "ggml blocks: unknown block type id ", uint32_t(type));
  return *traits;
}

}  // namespace

const char* block_type_name(BlockType type) {
  const BlockTraits* traits = lookup(type);
  return traits != nullptr ? traits->name : "unknown";
}

bool block_type_known(uint32_t id) { return lookup(BlockType(id)) != nullptr; }
uint64_t block_elements(BlockType type) { return checked(type).elements; }
uint64_t block_bytes(BlockType type) { return checked(type).bytes; }

float half_to_float(const uint8_t* p) { return float(f16::from_bits(uint16_t(p[0] | (p[1] << 8)))); }

// ---- one block at a time ----

namespace {

// Q4_K / Q5_K: the j-th (0..7) 6-bit scale and min packed into 12 bytes.
void scale_and_min(int j, const uint8_t* scales, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = scales[j] & 63;
    min = scales[j + 4] & 63;
  } else {
    scale = uint8_t((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    min = uint8_t((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Q5_0 / Q5_1: the fifth bit of element j is bit j of the little-endian u32 qh.
void dequantize_q5(const uint8_t* block, float* out, bool with_min) {
  const float d = half_to_float(block), m = with_min ? half_to_float(block + 2) : 0.0f;
  const uint8_t* qh_bytes = block + (with_min ? 4 : 2);
  const uint8_t* qs = qh_bytes + 4;
  uint32_t qh;
  std::memcpy(&qh, qh_bytes, 4);
  const int offset = with_min ? 0 : 16;
  for (int j = 0; j < 16; ++j) {
    const int low = int((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - offset;
    const int high = int((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - offset;
    out[j] = with_min ? float(low) * d + m : float(low) * d;
    out[j + 16] = with_min ? float(high) * d + m : float(high) * d;
  }
}

// Q4_K and Q5_K share the layout apart from Q5_K's qh[32] of fifth bits before the nibbles.
void dequantize_k4_or_k5(const uint8_t* block, float* out, bool five_bit) {
  const float d = half_to_float(block), dmin = half_to_float(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qh = block + 16;
  const uint8_t* qs = block + (five_bit ? 48 : 16);
  for (int chunk = 0; chunk < 4; ++chunk) {  // 64 elements: two sub-blocks sharing 32 bytes
    uint8_t scale, min;
    scale_and_min(2 * chunk, scales, scale, min);
    const float d1 = d * float(scale), m1 = dmin * float(min);
    scale_and_min(2 * chunk + 1, scales, scale, min);
    const float d2 = d * float(scale), m2 = dmin * float(min);
    const uint8_t* q = qs + 32 * chunk;
    for (int l = 0; l < 32; ++l) {
      const int high = five_bit ? ((qh[l] >> (2 * chunk)) & 1) << 4 : 0;
      *out++ = d1 * float((q[l] & 0xF) + high) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int high = five_bit ? ((qh[l] >> (2 * chunk + 1)) & 1) << 4 : 0;
      *out++ = d2 * float((q[l] >> 4) + high) - m2;
    }
  }
}

}  // namespace

void dequantize_block_q4_0(const uint8_t* block, float* out) {
  const float d = half_to_float(block);
  const uint8_t* qs = block + 2;
  for (int j = 0; j < 16; ++j) {
    out[j] = float((qs[j] & 0xF) - 8) * d;
    out[j + 16] = float((qs[j] >> 4) - 8) * d;
  }
}

void dequantize_block_q4_1(const uint8_t* block, float* out) {
  const float d = half_to_float(block), m = half_to_float(block + 2);
  const uint8_t* qs = block + 4;
  for (int j = 0; j < 16; ++j) {
    out[j] = float(qs[j] & 0xF) * d + m;
    out[j + 16] = float(qs[j] >> 4) * d + m;
  }
}

void dequantize_block_q8_0(const uint8_t* block, float* out) {
  const float d = half_to_float(block);
  for (int j = 0; j < 32; ++j) out[j] = float(int8_t(block[2 + j])) * d;
}

void dequantize_block_q6_k(const uint8_t* block, float* out) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192);
  const float d = half_to_float(block + 208);
  for (int half = 0; half < 2; ++half) {  // 128 elements each
    for (int l = 0; l < 32; ++l) {
      const int group = l / 16;
      const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      out[l] = d * float(scales[group]) * float(q1);
      out[l + 32] = d * float(scales[group + 2]) * float(q2);
      out[l + 64] = d * float(scales[group + 4]) * float(q3);
      out[l + 96] = d * float(scales[group + 6]) * float(q4);
    }
    out += 128;
    ql += 64;
    qh += 32;
    scales += 8;
  }
}

void dequantize_block_q4_k(const uint8_t* block, float* out) { dequantize_k4_or_k5(block, out, false); }

void dequantize(BlockType type, const uint8_t* bytes, uint64_t count, float* out) {
  const BlockTraits* traits = lookup(type);
  LAMINA_CHECK(traits != nullptr, "ggml blocks: cannot dequantize type id ", uint32_t(type));
  LAMINA_CHECK(count % traits->elements == 0, "ggml blocks: ", count, " elements of ", traits->name,
               " are not whole blocks of ", traits->elements);
  switch (type) {
    case BlockType::f32:
      if (count != 0) std::memcpy(out, bytes, size_t(count) * 4);
      return;
    case BlockType::f16:
      for (uint64_t i = 0; i < count; ++i) out[i] = half_to_float(bytes + 2 * i);
      return;
    case BlockType::bf16:
      for (uint64_t i = 0; i < count; ++i)
        out[i] = detail::bits_float(uint32_t(bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16);
      return;
    default:
      break;
  }
  const uint64_t blocks = count / traits->elements;
  for (uint64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = bytes + b * traits->bytes;
    float* values = out + b * traits->elements;
    switch (type) {
      case BlockType::q4_0: dequantize_block_q4_0(block, values); break;
      case BlockType::q4_1: dequantize_block_q4_1(block, values); break;
      case BlockType::q5_0: dequantize_q5(block, values, false); break;
      case BlockType::q5_1: dequantize_q5(block, values, true); break;
      case BlockType::q8_0: dequantize_block_q8_0(block, values); break;
      case BlockType::q4_k: dequantize_k4_or_k5(block, values, false); break;
      case BlockType::q5_k: dequantize_k4_or_k5(block, values, true); break;
      case BlockType::q6_k: dequantize_block_q6_k(block, values); break;
      default: break;
    }
  }
}

}  // namespace lamina::ops::ggml
