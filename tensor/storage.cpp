#include "tensor/storage.h"

#include <atomic>
#include <cstdlib>

#if !LAMINA_SYSTEM_ALLOCATOR
#include <mimalloc.h>
#endif

#include "tensor/error.h"

namespace lamina {
namespace {

// Counters of host memory handed out through Storage::allocate.
struct HostCounters {
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> peak{0};
  std::atomic<int64_t> allocations{0};

  void on_allocate(int64_t bytes) {
    const int64_t now = live.fetch_add(bytes) + bytes;
    allocations.fetch_add(1);
    int64_t seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
  }
  void on_free(int64_t bytes) { live.fetch_sub(bytes); }
};

HostCounters& host_counters() {
  static HostCounters counters;
  return counters;
}

// mimalloc normally; the C allocator in sanitizer builds, where ASan must see every buffer.
void* host_allocate(size_t bytes) {
#if LAMINA_SYSTEM_ALLOCATOR
  void* data = nullptr;  // the exact size, so that ASan flags a one-byte overrun
  return posix_memalign(&data, kHostAlignment, bytes == 0 ? 1 : bytes) == 0 ? data : nullptr;
#else
  return mi_malloc_aligned(bytes == 0 ? 1 : bytes, kHostAlignment);
#endif
}

void host_free(void* data) {
#if LAMINA_SYSTEM_ALLOCATOR
  std::free(data);
#else
  mi_free(data);
#endif
}

void check_cpu(Device device, const char* what) {
  LAMINA_CHECK(device.is_cpu(), what, ": device ", device.str(),
               " is not available (this build has no CUDA backend)");
}

}  // namespace

MemoryStats memory_stats(Device device) {
  check_cpu(device, "memory_stats");
  HostCounters& counters = host_counters();
  return {counters.live.load(), counters.peak.load(), counters.allocations.load()};
}

void reset_peak_memory(Device device) {
  check_cpu(device, "reset_peak_memory");
  host_counters().peak.store(host_counters().live.load());
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  check_cpu(device, "Storage::allocate");
  void* data = host_allocate(bytes);
  LAMINA_CHECK(data != nullptr, "out of host memory: could not allocate ", bytes, " bytes (",
               host_counters().live.load(), " bytes live)");
  host_counters().on_allocate(int64_t(bytes));
  return std::shared_ptr<Storage>(new Storage(data, bytes, device, nullptr));
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t bytes, Device device,
                                       std::shared_ptr<void> keep_alive) {
  LAMINA_CHECK(keep_alive != nullptr, "Storage::wrap needs an owner to keep the memory alive");
  return std::shared_ptr<Storage>(new Storage(data, bytes, device, std::move(keep_alive)));
}

Storage::~Storage() {
  if (keep_alive_ != nullptr) return;  // the owner frees it
  host_free(data_);
  host_counters().on_free(int64_t(bytes_));
}

}  // namespace lamina
