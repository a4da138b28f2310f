// Storage: one block of bytes on one device, shared by every tensor that views it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "tensor/device.h"

namespace lamina {

struct MemoryStats {
  int64_t live_bytes = 0;      // bytes currently allocated
  int64_t peak_bytes = 0;      // high-water mark of live_bytes since the last reset
  int64_t allocations = 0;     // number of allocations since start
  int64_t cached_bytes = 0;    // freed blocks kept for reuse (not counted in live_bytes)
  int64_t reserved_bytes = 0;  // held from the system: live blocks at their size class plus the cache
  int64_t fresh_blocks = 0;    // allocations the cache could not serve (mimalloc / cudaMalloc calls)
};

// Host memory comes from mimalloc, 64-byte aligned (one cache line, one AVX-512 register).
// CUDA memory comes from the caching allocator of tensor/cuda/allocator.h (256-byte aligned).
inline constexpr size_t kHostAlignment = 64;

MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);
// Returns the cached free blocks to the system; returns how many bytes that released.
int64_t empty_cache(Device device);
// Caps the host block cache (default 2 GiB, or $LAMINA_HOST_CACHE_MB); 0 disables it.
void set_host_cache_limit(size_t bytes);

class Storage {
 public:
  // Fresh, uninitialised memory from the device's allocator.
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);
  // Memory owned elsewhere (an mmap'd file, a caller's buffer); `keep_alive` holds the owner.
  static std::shared_ptr<Storage> wrap(void* data, size_t bytes, Device device,
                                       std::shared_ptr<void> keep_alive);

  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  bool owns_memory() const { return keep_alive_ == nullptr; }

 private:
  Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keep_alive)
      : data_(data), bytes_(bytes), device_(device), keep_alive_(std::move(keep_alive)) {}

  void* data_;
  size_t bytes_;
  size_t capacity_ = 0;  // bytes actually allocated (a size class >= bytes_)
  Device device_;
  std::shared_ptr<void> keep_alive_;
};

}  // namespace lamina
