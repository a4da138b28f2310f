// Which-op arguments of the kernel layer that the public ops (ops/ops.h) do not name, taken
// alike by the CPU kernels (ops/cpu/kernels.h) and the CUDA kernels (ops/cuda/kernels.h).
#pragma once

namespace lamina::ops {

enum class LogicalOp { logical_not, logical_and, logical_or };
enum class ReduceKind { sum, mean, max, min, argmax, logsumexp, var };

}  // namespace lamina::ops
