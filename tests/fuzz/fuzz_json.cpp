// libFuzzer target: the JSON reader never crashes, and what it accepts writes back to text
// that reads back to the same value.
#include <cstdint>
#include <string_view>

#include "tensor/error.h"
#include "tensor/io/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  lamina::json::Value value;
  try {
    value = lamina::json::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const lamina::Error&) {
    return 0;  // rejected with an error: fine
  }
  const std::string written = value.dump();
  const std::string rewritten = lamina::json::parse(written, "fuzz (written back)").dump();
  if (rewritten != written) __builtin_trap();
  return 0;
}
