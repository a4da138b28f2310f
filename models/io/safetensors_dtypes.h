// The safetensors dtype table shared by the reader and the writer.
#pragma once

#include <cstdint>
#include <string>

#include "tensor/dtype.h"

namespace lamina::safetensors::detail {

struct FileDType {
  const char* name;
  DType dtype;        // lamina dtype read() returns
  uint64_t bits;      // element size in the file
  int write_rank;     // the reference writer's order: lower first (larger alignment first)
};

// The dtypes lamina reads. Others (F8, C64, U16, ...) are rejected with a clear error.
inline constexpr FileDType kFileDTypes[] = {
    {"I64", DType::i64, 64, 1}, {"F64", DType::f64, 64, 2}, {"F32", DType::f32, 32, 4},
    {"I32", DType::i32, 32, 6}, {"BF16", DType::bf16, 16, 7}, {"F16", DType::f16, 16, 8},
    {"I8", DType::i32, 8, 16},  {"U8", DType::u8, 8, 17},   {"BOOL", DType::boolean, 8, 21},
};

}  // namespace lamina::safetensors::detail
