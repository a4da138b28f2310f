#include "tensor/dtype.h"

namespace lamina {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    case DType::u8:
    case DType::boolean: return 1;
  }
  throw Error("dtype_size: corrupt dtype value");
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
    case DType::boolean: return "bool";
  }
  return "corrupt-dtype";
}

DType dtype_from_name(const std::string& name) {
  for (DType dtype : kAllDTypes)
    if (name == dtype_name(dtype)) return dtype;
  throw Error(str_cat("unknown dtype '", name, "' (expected f32, f64, bf16, f16, i32, i64, u8 or bool)"));
}

}  // namespace lamina
