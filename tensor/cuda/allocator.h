// The caching device allocator behind Storage::allocate for CUDA devices.
//
// Requests are rounded up to a size class (512-byte steps below 1 MiB, then 8 classes per
// power of two, so at most 12.5% slack) and a freed block goes to a per-device free list of
// its class. The next request of that class takes it back without cudaMalloc or cudaFree,
// which would synchronise the device. Reuse is safe at once because all device work runs on
// the device's one stream (tensor/cuda/runtime.h). When cudaMalloc fails the cache is released
// and the allocation retried once; if it still fails, the error says how much was requested and
// how much lamina holds.
//
// No CUDA types here: tensor/storage.cpp includes this in every CUDA build.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tensor/storage.h"

namespace lamina::cuda {

struct DeviceBlock {
  void* data = nullptr;
  size_t capacity = 0;  // the size class actually reserved (>= the bytes asked for)
};

size_t device_size_class(size_t bytes);

DeviceBlock device_allocate(size_t bytes, int device);
// Returns a block to its device's cache (never calls CUDA, never throws).
void device_release(void* data, size_t bytes, size_t capacity, int device) noexcept;

MemoryStats device_memory_stats(int device);
void reset_device_peak_memory(int device);
// cudaFree of every cached block on the device; returns the bytes released.
int64_t empty_device_cache(int device);

// For tests: fill every block handed out from now on with `byte` (0xFF makes floats NaN), so
// that elements a kernel fails to write stand out; -1 turns it off. The fill is queued on the
// device's stream before anything can use the block.
void set_allocation_fill(int byte);

}  // namespace lamina::cuda
