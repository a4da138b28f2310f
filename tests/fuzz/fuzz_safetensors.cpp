// libFuzzer target: opening arbitrary bytes as a safetensors file either fails with a
// lamina::Error or yields tensors that can all be read.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "models/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/lamina-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return 0;
  std::fwrite(data, 1, size, file);
  std::fclose(file);
  try {
    const lamina::safetensors::File opened = lamina::safetensors::File::open(path);
    for (const lamina::safetensors::TensorInfo& info : opened.tensors()) {
      const lamina::Tensor tensor = opened.read(info.name);
      if (tensor.shape() != info.shape) __builtin_trap();
      (void)tensor.to_vector<double>();  // touch every element
    }
  } catch (const lamina::Error&) {
  }
  return 0;
}
