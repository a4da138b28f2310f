// Allocation failures are reported errors: tensors and operator new refuse what the machine
// cannot hold before asking for it (overcommit would grant it and the OOM killer would end the
// process later), and absurd sizes never overflow into a small allocation.
#include <new>

#include "helpers.h"
#include "tensor/host_memory.h"

using namespace lamina;

namespace {

// A size more than the machine could ever provide (RAM and swap plus 1 GiB), or 0 when the
// system does not say how much memory it has.
uint64_t more_than_the_machine_has() {
  const HostMemory memory = host_memory();
  if (memory.total_bytes == UINT64_MAX) {
    MESSAGE("SKIPPED: the system reports no memory size (no /proc/meminfo)");
    return 0;
  }
  return memory.total_bytes + (uint64_t(1) << 30);
}

}  // namespace

TEST_CASE("host memory: what the system reports is plausible") {
  const HostMemory memory = host_memory();
  CHECK(memory.total_bytes > (uint64_t(64) << 20));
  CHECK(memory.available_bytes <= memory.total_bytes);
  CHECK(format_bytes(512) == "512 B");
  CHECK(format_bytes(uint64_t(3) << 19) == "1.50 MiB");
  CHECK(format_bytes(uint64_t(40) << 30) == "40.00 GiB");
  CHECK(host_memory_fits(1024));
}

TEST_CASE("a tensor larger than the machine is refused up front, naming its size and shape") {
  const uint64_t too_many_bytes = more_than_the_machine_has();
  if (too_many_bytes == 0) return;
  const int64_t elements = int64_t(too_many_bytes / 4);
  const int64_t live_before = memory_stats(Device::cpu()).live_bytes;
  const std::string size = "out of host memory: a tensor needs " + format_bytes(uint64_t(elements) * 4);
  const std::string shape = "(for a tensor of shape [" + std::to_string(elements) + "], f32)";
  CHECK_THROWS_WITH_AS(Tensor::empty({elements}, DType::f32), doctest::Contains(size.c_str()), Error);
  CHECK_THROWS_WITH_AS(Tensor::empty({elements}, DType::f32), doctest::Contains(shape.c_str()), Error);
  CHECK(memory_stats(Device::cpu()).live_bytes == live_before);
}

TEST_CASE("absurd sizes are errors, never an overflow into a small allocation") {
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t(1) << 40, int64_t(1) << 40}, DType::f32),
                       doctest::Contains("empty: shape [1099511627776, 1099511627776] of f32 needs more than 2^63 bytes"),
                       Error);
  CHECK_THROWS_WITH_AS(Tensor::empty({int64_t(1) << 31, int64_t(1) << 31, 4}, DType::bf16),
                       doctest::Contains("needs more than 2^63 bytes"), Error);
  CHECK_THROWS_WITH_AS(Storage::allocate(size_t(1) << 61, Device::cpu()),
                       doctest::Contains("out of host memory: 2.00 EiB (2305843009213693952 bytes) requested"), Error);
  CHECK_THROWS_WITH_AS(Storage::allocate(SIZE_MAX, Device::cpu()), doctest::Contains("more than any machine has"), Error);
}

TEST_CASE("operator new throws std::bad_alloc naming the size instead of aborting") {
  if (system_allocator_build()) {
    MESSAGE("SKIPPED: sanitizer builds keep the runtime's operator new");
    return;
  }
  const uint64_t too_many_bytes = more_than_the_machine_has();
  if (too_many_bytes == 0) return;
  // Never std::vector here: with the old behaviour the request would succeed and filling it
  // would meet the OOM killer. The bare operator new touches nothing.
  for (const uint64_t bytes : {too_many_bytes, uint64_t(1) << 50}) {
    CAPTURE(bytes);
    void* granted = nullptr;
    std::string message;
    try {
      granted = ::operator new(size_t(bytes));
    } catch (const std::bad_alloc& error) {
      message = error.what();
    }
    ::operator delete(granted);
    CHECK(granted == nullptr);
    CHECK(message.find("out of host memory: an allocation (operator new) needs " + format_bytes(bytes)) == 0);
  }
  void* aligned = nullptr;
  CHECK_THROWS_AS(aligned = ::operator new[](size_t(1) << 50, std::align_val_t(256)), std::bad_alloc);
  ::operator delete[](aligned, std::align_val_t(256));
  // Ordinary requests still work, aligned ones included.
  void* small = ::operator new(100, std::align_val_t(256));
  CHECK(reinterpret_cast<uintptr_t>(small) % 256 == 0);
  ::operator delete(small, std::align_val_t(256));
}
