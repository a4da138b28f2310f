// C (f32, row-major) = or += A (bf16) x B (bf16) on the CPU, with f32 accumulation.
//
// Three paths, chosen at run time: AMX tiles (tdpbf16ps), AVX-512 BF16 (vdpbf16ps), and a plain
// C++ reference that runs everywhere and defines the result: the exact f32 product of each pair
// of bf16 values, summed in f32 in the order k = 0, 1, ..., K-1 (starting from C when
// accumulating). The fast paths sum the same products in another order, and like the hardware
// they run on they treat subnormal bf16 inputs and results as zero.
#pragma once

#include <string>
#include <vector>

#include "ops/cpu/kernels.h"

namespace lamina::ops::cpu {

enum class GemmBf16Path { automatic, amx, avx512bf16, reference };

// "auto", "amx", "avx512bf16", "reference".
const char* gemm_bf16_path_name(GemmBf16Path path);
// The inverse of gemm_bf16_path_name; throws on an unknown name, naming `what` (e.g. the variable).
GemmBf16Path gemm_bf16_path_from_name(const std::string& name, const std::string& what);
// Whether this CPU can run the path (automatic and reference: always).
bool gemm_bf16_path_available(GemmBf16Path path);
// The path that runs for `requested`: automatic means $LAMINA_CPU_GEMM when set (amx,
// avx512bf16, reference or auto), else the fastest the CPU has. Throws when the path asked for
// (by argument or variable) needs instructions this CPU lacks.
GemmBf16Path gemm_bf16_resolve(GemmBf16Path requested = GemmBf16Path::automatic);

// Whether ops::matmul should send bf16 products here rather than widen them to f32 for Eigen
// (the same exact products, summed in another order): true where the CPU has AMX, or AVX-512
// BF16 issued at the f32 FMA's rate (AMD's cores; Intel's without AMX issue it at half), or
// $LAMINA_CPU_GEMM names a path (the reference included, for tests). The reference alone is
// slower than Eigen's f32 GEMM. Decided from cpuid alone, never by timing, so that a command's
// numerics (and --precision auto) cannot depend on the machine's load.
bool gemm_bf16_has_fast_path();

// Each task's a and b hold bf16 values in any layout (row- or column-major, transposed views,
// strides larger than the other extent); c holds `c_dtype` values (f32, or bf16: the f32 result
// rounded once to nearest even, as bf16(float) rounds) with col_stride 1. Products are spread over
// the threads (blocks of C, or whole tasks when there are many).
void gemm_bf16_batch(const std::vector<GemmTask>& tasks, GemmBf16Path path = GemmBf16Path::automatic,
                     DType c_dtype = DType::f32);

}  // namespace lamina::ops::cpu
