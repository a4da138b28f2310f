// 4-bit NF4 / FP4 weights in bitsandbytes' layout, and the fused products that use them.
//
// A 4-bit weight is not a dtype: it is a value of its own (Quantized4Bit) holding the packed
// codes, the per-block scales (absmax, optionally double-quantized to 8 bits) and the tables
// that give the codes their values, exactly as bitsandbytes and transformers store them (see
// ../shared/docs/formats-and-quantization.md §4). The products never build the whole
// dequantized matrix: they dequantize a few rows at a time into a small buffer and multiply
// that, which is what makes a frozen 4-bit base (QLoRA) cost 4.1-4.5 bits per parameter.
//
// Element i of the flattened [out, in] weight sits in block i / blocksize and in byte i / 2 of
// the codes, in the high nibble when i is even; blocks run along the flattened rows, so a row
// may start mid-block and mid-byte, and the last block may be partial.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "tensor/tensor.h"

namespace lamina::ops {

enum class Quant4Format { nf4, fp4 };
const char* quant4_format_name(Quant4Format format);  // "nf4", "fp4"
// "nf4" or "fp4"; anything else throws naming `what`.
Quant4Format quant4_format_from_name(const std::string& name, const std::string& what = "quant_type");

// The 16 code values (bitsandbytes' tables, bit for bit): NF4 sorted ascending with code 7 = 0,
// FP4 indexed by bit pattern (sign, 2 exponent bits, 1 mantissa bit).
const std::array<float, 16>& nf4_code_values();
const std::array<float, 16>& fp4_code_values();
const std::array<float, 16>& quant4_code_values(Quant4Format format);
// The signed 8-bit dynamic map that double quantization stores the block scales with: index 127
// is 0, 255 is 1.0, 0..126 the negatives of 128..254.
const std::array<float, 256>& dynamic_map_8bit();

// A [out, in] weight quantized to 4 bits. Every tensor lives on one device; codes and scales are
// contiguous.
struct Quantized4Bit {
  Quant4Format format = Quant4Format::nf4;
  Shape shape;                    // the weight's shape, [out, in]
  DType dtype = DType::f32;       // the weight's dtype before quantization ("dtype" in quant_state)
  int64_t blocksize = 64;         // elements per absmax block: a power of two in [32, 4096]
  Tensor codes;                   // u8 [(n + 1) / 2, 1]: two codes a byte, element 2j high nibble
  Tensor code_values;             // f32 [16]: "quant_map", what each code means
  Tensor absmax;                  // f32 [blocks], or u8 [blocks] (indices into nested_code_values) with double_quant
  bool double_quant = false;
  Tensor nested_absmax;           // f32 [ceil(blocks / nested_blocksize)], double_quant only
  Tensor nested_code_values;      // f32 [256], double_quant only: "nested_quant_map"
  float nested_offset = 0;        // the mean of the fp32 absmax, added back after the 8-bit decode
  int64_t nested_blocksize = 256;

  int64_t numel() const { return shape_numel(shape); }
  int64_t block_count() const { return (numel() + blocksize - 1) / blocksize; }
  int64_t out_features() const { return shape.at(0); }
  int64_t in_features() const { return shape.at(1); }
  Device device() const { return codes.device(); }
  // Bytes of every tensor above (codes, scales and tables): the storage the weight costs.
  int64_t storage_bytes() const;
  // The same weight with every tensor moved to `device`.
  Quantized4Bit to(Device device) const;
  // Throws naming `what` unless the fields agree with one another (shapes, dtypes, devices, sizes).
  void validate(const std::string& what = "Quantized4Bit") const;
};

// Blockwise quantization of a 2-D f32/bf16/f16 weight (computed on the host in f32, the result
// moved back to the weight's device). Each block's scale is its largest magnitude; each element
// goes to the nearest code, exact midpoints to the lower one; an all-zero block gets scale 0.
Quantized4Bit quantize_4bit(const Tensor& weight, Quant4Format format = Quant4Format::nf4, int64_t blocksize = 64,
                            bool double_quant = false);
// The fp32 block scales: absmax itself, or decoded from the 8-bit codes (DYN[c] * nested + offset).
Tensor dequantize_4bit_absmax(const Quantized4Bit& q);
// The whole weight, f32 [out, in]: code_values[code] * absmax[block], as bitsandbytes computes it.
Tensor dequantize_4bit(const Quantized4Bit& q);
// x [..., in] -> x @ W^T [..., out] in x's dtype (f32/bf16/f16/f64; accumulated in f32, f64 for
// f64), fused: the dequantized W exists only a tile of rows at a time.
Tensor matmul_4bit(const Tensor& x, const Quantized4Bit& q);
// grad_out [..., out] -> grad_out @ W [..., in], fused likewise: the input gradient of matmul_4bit.
Tensor matmul_4bit_input_grad(const Tensor& grad_out, const Quantized4Bit& q);

// ---- matmul_4bit's decode product (CPU)
//
// Which product matmul_4bit runs on the CPU, by the rows of x (its leading dims flattened):
//   - 1..15 rows of f32 x (bf16/f16 x is cast to f32 first), in_features a multiple of 32, code
//     values within [-1, 1] (NF4 and FP4 always): the integer product of ops/cpu/quant4_int8.h.
//     The activations are quantized per 32 values to int8 with an f32 scale (ggml's Q8_0 of them,
//     as gguf_matmul does), the 16 code values are taken as the integers round(127 * value)
//     (quant4_int8_code_table), each 32-value group is an exact integer dot product, and
//     absmax x (activation scale / 127) is applied in f32. It is not the f32 product: against
//     matmul(x, dequantize_4bit(q)^T) each output differs by at most
//         sum_e absmax_e * (table_error * (|x_e| + d_e / 2) + |code_value_e| * d_e / 2)
//     plus f32 summation rounding, with d_e = max |x| / 127 over x_e's group of 32 and
//     table_error = max_c |round(127 v_c) / 127 - v_c|: 0.00367 for NF4 (code 5, -0.1847734 ->
//     -23), 0.00394 for FP4 (codes 5 and 13, +-0.5 -> +-64). The f32 path decodes every code to
//     f32 and multiplies it there; the integer one does 64 multiply-adds per instruction.
//   - 16 rows or more, f64 x, other shapes, or the f32 product chosen below: the f32 products
//     (ops/cpu/quant4.cpp), equal to matmul(x, dequantize_4bit(q)^T) up to f32 summation order.
// The rule depends on the rows only, never on autograd state: a forward and its recomputation
// under activation checkpointing (no-grad first, grad mode second) take the same path, and
// matmul_4bit_input_grad is always the exact f32 product. Training keeps its f32 forward because
// its batches are padded to batch-size x seq-len rows (train/data.h), 16 or more unless both are
// tiny (--batch-size 1 --seq-len 15 would take the integer forward). A caller that needs the f32
// result for fewer rows (a bit-exact comparison with bitsandbytes, say) sets the f32 product.
// CUDA runs its f32 kernels for every row count.
//
// The integer kernels are gguf_matmul's paths (ops/gguf_matmul.h): $LAMINA_CPU_QDOT or
// set_gguf_dot_path forces vnni, avx2 or reference (forcing one this CPU lacks is an error), and
// all three give the same bits. $LAMINA_CPU_4BIT_DECODE (int8 | f32 | auto) or
// set_quant4_decode_product chooses the product itself.
enum class Quant4DecodeProduct { automatic, int8, f32 };
const char* quant4_decode_product_name(Quant4DecodeProduct product);  // "auto", "int8", "f32"
// For this process; `automatic` goes back to $LAMINA_CPU_4BIT_DECODE, or int8 when it is unset.
void set_quant4_decode_product(Quant4DecodeProduct product);
// The product 1..15 rows take now: never `automatic`.
Quant4DecodeProduct quant4_decode_product();
// round(127 * v) of each code value (halves away from zero); throws for a value outside [-1, 1].
std::array<int8_t, 16> quant4_int8_code_table(const std::array<float, 16>& code_values);

}  // namespace lamina::ops

// The kernels behind the ops above (ops/cpu/quant4.cpp, ops/cuda/quant4.cu). Arguments arrive
// checked: q validated and on the kernel's device, x and out contiguous 2-D of one floating dtype
// (f32, or f64 on the CPU), out allocated. Double-quantized scales are decoded by the kernels
// themselves (the CPU on the fly, one scale per 32 elements; CUDA into a small buffer first).
namespace lamina::ops::cpu {
void quant4_decode_absmax(const Tensor& out, const Quantized4Bit& q);  // out f32 [blocks]
void quant4_dequantize(const Tensor& out, const Quantized4Bit& q);     // out f32 [out, in]
// out [rows, out_features] = x [rows, in_features] @ W^T
void quant4_matmul(const Tensor& out, const Tensor& x, const Quantized4Bit& q);
// out [rows, in_features] = grad [rows, out_features] @ W
void quant4_matmul_input_grad(const Tensor& out, const Tensor& grad, const Quantized4Bit& q);
}  // namespace lamina::ops::cpu

namespace lamina::ops::cuda {
void quant4_decode_absmax(const Tensor& out, const Quantized4Bit& q);
void quant4_dequantize(const Tensor& out, const Quantized4Bit& q);
void quant4_matmul(const Tensor& out, const Tensor& x, const Quantized4Bit& q);
void quant4_matmul_input_grad(const Tensor& out, const Tensor& grad, const Quantized4Bit& q);
}  // namespace lamina::ops::cuda
