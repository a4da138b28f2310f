// libFuzzer target: opening arbitrary bytes as a GGUF file either fails with a lamina::Error
// or yields metadata and tensors that can all be read (every tensor dequantized, and F16/BF16
// ones read at 16 bits as well).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "models/io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/lamina-fuzz-" + std::to_string(::getpid()) + ".gguf";
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return 0;
  std::fwrite(data, 1, size, file);
  std::fclose(file);
  try {
    const lamina::gguf::File opened = lamina::gguf::File::open(path);
    for (const auto& [key, value] : opened.metadata())
      if (opened.find_metadata(key) != &value) __builtin_trap();
    for (const lamina::gguf::TensorInfo& info : opened.tensors()) {
      const lamina::Tensor tensor = opened.read(info.name);
      if (tensor.shape() != info.shape() || uint64_t(tensor.numel()) != info.elements) __builtin_trap();
      (void)tensor.to_vector<double>();  // touch every element
      (void)opened.read(info.name, true);
    }
  } catch (const lamina::Error&) {
  }
  return 0;
}
