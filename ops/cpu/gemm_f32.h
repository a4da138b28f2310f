// C (f32, row-major) = or += A (f32) x B (f32) on the CPU with lamina's own packed GEMM.
//
// Two kernel paths, chosen at run time: AVX-512F (12 x 32 micro-kernel) and AVX2+FMA (6 x 16),
// with Eigen (ops/cpu/matmul.cpp) as the fallback on CPUs with neither and for the small shapes
// where Eigen wins. Both kernel paths give the same bits: K is cut into slices of 256 (the last
// shorter), each output sums a slice as one FMA chain in the order k = 0, 1, ... from zero, and
// the slices are added to C in order (the first one stored, or added to C when accumulating).
// Neither the thread count nor the blocking of C changes an output's order, so results do not
// depend on the threads either. The two-level sum keeps the error near (256 + K / 256) units of
// roundoff rather than K, as Eigen's path does by summing K in pieces of 256.
#pragma once

#include <string>
#include <vector>

#include "ops/cpu/kernels.h"

namespace lamina::ops::cpu {

enum class GemmF32Path { automatic, avx512, avx2, eigen };

// "auto", "avx512", "avx2", "eigen".
const char* gemm_f32_path_name(GemmF32Path path);
// The inverse of gemm_f32_path_name; throws on an unknown name, naming `what` (e.g. the variable).
GemmF32Path gemm_f32_path_from_name(const std::string& name, const std::string& what);
// Whether this CPU can run the path (automatic and eigen: always).
bool gemm_f32_path_available(GemmF32Path path);
// The path that runs for `requested`: automatic means $LAMINA_CPU_GEMM_F32 when set (avx512,
// avx2, eigen or auto), else the widest kernel the CPU has (eigen on a CPU without AVX2+FMA).
// Throws when the path asked for (by argument or variable) needs instructions this CPU lacks.
GemmF32Path gemm_f32_resolve(GemmF32Path requested = GemmF32Path::automatic);

// Whether ops::matmul's f32 products of this shape go to the kernels rather than to Eigen:
// always when $LAMINA_CPU_GEMM_F32 names a kernel path (never when it says eigen); otherwise
// when the CPU has a kernel path and the product is large enough for packing to pay (at least
// 128 rows of C, 64 columns and K = 64; thinner and GEMV-like products stay on Eigen).
bool gemm_f32_prefers_kernels(const GemmTask& task);

// Each task's a and b hold f32 values in any layout (row- or column-major, transposed views,
// strides larger than the other extent); c has col_stride 1. Products are spread over the
// threads (blocks of C, or whole tasks when there are at least as many as threads). The eigen
// path runs gemm_batch_eigen.
void gemm_f32_batch(const std::vector<GemmTask>& tasks, GemmF32Path path = GemmF32Path::automatic);

// Eigen's f32/f64 products as gemm_batch ran them before the kernels (ops/cpu/matmul.cpp): the
// fallback, and the baseline the benchmarks compare against.
void gemm_batch_eigen(DType dtype, const std::vector<GemmTask>& tasks);

}  // namespace lamina::ops::cpu
