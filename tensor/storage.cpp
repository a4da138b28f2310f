#include "tensor/storage.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#ifndef LAMINA_WITH_CUDA
#define LAMINA_WITH_CUDA 0  // set to 1 by builds with the CUDA backend
#endif
#ifndef LAMINA_SYSTEM_ALLOCATOR
#define LAMINA_SYSTEM_ALLOCATOR 0  // set to 1 by sanitizer builds
#endif
#if !LAMINA_SYSTEM_ALLOCATOR
#include <mimalloc.h>
#endif

#include "tensor/error.h"
#include "tensor/host_memory.h"

#if LAMINA_WITH_CUDA
#include "tensor/cuda/allocator.h"
#endif

namespace lamina {
namespace {

// Counters of host memory handed out through Storage::allocate.
struct HostCounters {
  std::atomic<int64_t> live{0};
  std::atomic<int64_t> peak{0};
  std::atomic<int64_t> allocations{0};
  std::atomic<int64_t> live_capacity{0};  // the live blocks at their allocated size
  std::atomic<int64_t> fresh_blocks{0};

  void on_allocate(int64_t bytes, int64_t capacity) {
    const int64_t now = live.fetch_add(bytes) + bytes;
    live_capacity.fetch_add(capacity);
    allocations.fetch_add(1);
    int64_t seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
  }
  void on_free(int64_t bytes, int64_t capacity) {
    live.fetch_sub(bytes);
    live_capacity.fetch_sub(capacity);
  }
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

// Freed large blocks, kept for the next allocation of their size class.
//
// mimalloc returns huge blocks to the OS on free, so without this every large op output
// would be fresh pages, and the page faults of the first write cost more than the op
// (4K faults per 16 MiB). Training and inference allocate the same few sizes over and over,
// so a small cache of exact size classes removes nearly all of them. Sizes are rounded up
// to 8 classes per power of two (at most 12.5% slack). Sanitizer builds bypass the cache so
// that ASan sees every use after free.
class HostBlockCache {
 public:
  static constexpr size_t kMinCachedBytes = size_t(1) << 20;

  static size_t size_class(size_t bytes) {
    size_t top = kMinCachedBytes;
    while (top < bytes) top <<= 1;
    const size_t step = top / 16;  // classes between top/2 and top, 8 of them
    return (bytes + step - 1) / step * step;
  }

  void* take(size_t class_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = free_blocks_.find(class_bytes);
    if (found == free_blocks_.end() || found->second.empty()) return nullptr;
    void* block = found->second.back();
    found->second.pop_back();
    cached_bytes_ -= class_bytes;
    return block;
  }

  // Keeps the block unless the cache would exceed its limit; false means "free it yourself".
  bool give(void* block, size_t class_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_bytes_ + class_bytes > limit_) return false;
    free_blocks_[class_bytes].push_back(block);
    cached_bytes_ += class_bytes;
    return true;
  }

  int64_t release_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t released = int64_t(cached_bytes_);
    for (auto& [size, blocks] : free_blocks_)
      for (void* block : blocks) host_free(block);
    free_blocks_.clear();
    cached_bytes_ = 0;
    return released;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return int64_t(cached_bytes_);
  }

  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
  }

 private:
  static size_t default_limit() {
    if (const char* env = std::getenv("LAMINA_HOST_CACHE_MB")) return size_t(std::strtoull(env, nullptr, 10)) << 20;
    return size_t(2) << 30;
  }

  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;
  size_t cached_bytes_ = 0;
  size_t limit_ = default_limit();
};

HostBlockCache& host_cache() {
  static HostBlockCache cache;
  return cache;
}

constexpr bool kUseHostCache = !LAMINA_SYSTEM_ALLOCATOR;

constexpr size_t kMaxStorageBytes = size_t(1) << 60;

// A CUDA device is only reachable with the backend built.
void check_backend(Device device, const char* what) {
  LAMINA_CHECK(device.is_cpu() || LAMINA_WITH_CUDA, what, ": device ", device.str(),
               " is not available (this build has no CUDA backend)");
}

}  // namespace

MemoryStats memory_stats(Device device) {
  check_backend(device, "memory_stats");
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) return cuda::device_memory_stats(device.index);
#endif
  HostCounters& counters = host_counters();
  MemoryStats stats;
  stats.live_bytes = counters.live.load();
  stats.peak_bytes = counters.peak.load();
  stats.allocations = counters.allocations.load();
  stats.cached_bytes = host_cache().cached_bytes();
  stats.reserved_bytes = counters.live_capacity.load() + stats.cached_bytes;
  stats.fresh_blocks = counters.fresh_blocks.load();
  return stats;
}

void reset_peak_memory(Device device) {
  check_backend(device, "reset_peak_memory");
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) return cuda::reset_device_peak_memory(device.index);
#endif
  host_counters().peak.store(host_counters().live.load());
}

int64_t empty_cache(Device device) {
  check_backend(device, "empty_cache");
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) return cuda::empty_device_cache(device.index);
#endif
  return host_cache().release_all();
}

void set_host_cache_limit(size_t bytes) {
  host_cache().set_limit(bytes);
  if (host_cache().cached_bytes() > int64_t(bytes)) host_cache().release_all();
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  check_backend(device, "Storage::allocate");
  // Beyond any machine's memory, and past it the size-class arithmetic would overflow.
  LAMINA_CHECK(bytes <= kMaxStorageBytes, "out of ", device.is_cpu() ? "host" : device.str(), " memory: ",
               format_bytes(bytes), " (", bytes, " bytes) requested, more than any machine has");
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) {
    const cuda::DeviceBlock block = cuda::device_allocate(bytes, device.index);
    auto storage = std::shared_ptr<Storage>(new Storage(block.data, bytes, device, nullptr));
    storage->capacity_ = block.capacity;
    return storage;
  }
#endif
  bool cached = kUseHostCache && bytes >= HostBlockCache::kMinCachedBytes;
  size_t capacity = cached ? HostBlockCache::size_class(bytes) : bytes;
  void* data = cached ? host_cache().take(capacity) : nullptr;
  if (data == nullptr) {
    // The system grants a block larger than its free memory (overcommit) and the OOM killer
    // ends the process when the pages are touched, so a large block is checked first. The
    // cache's blocks count as used there: give them back before concluding memory is short,
    // and drop the size class's slack if that is what does not fit.
    if (!host_memory_fits(capacity)) {
      host_cache().release_all();
      if (!host_memory_fits(capacity)) {
        cached = false;
        capacity = bytes;
      }
      LAMINA_CHECK(host_memory_fits(capacity), host_memory_shortage(capacity, "a tensor"), "; lamina holds ",
                   format_bytes(uint64_t(host_counters().live.load())), " in tensors");
    }
    host_counters().fresh_blocks.fetch_add(1);
    data = host_allocate(capacity);
  }
  if (data == nullptr && cached) {  // memory is short: give the cache back and retry once
    host_cache().release_all();
    data = host_allocate(capacity);
  }
  LAMINA_CHECK(data != nullptr, "out of host memory: could not allocate ", format_bytes(bytes), " (", bytes,
               " bytes; lamina holds ", format_bytes(uint64_t(host_counters().live.load())), " in tensors)");
  host_counters().on_allocate(int64_t(bytes), int64_t(capacity));
  auto storage = std::shared_ptr<Storage>(new Storage(data, bytes, device, nullptr));
  storage->capacity_ = capacity;
  return storage;
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t bytes, Device device,
                                       std::shared_ptr<void> keep_alive) {
  LAMINA_CHECK(keep_alive != nullptr, "Storage::wrap needs an owner to keep the memory alive");
  return std::shared_ptr<Storage>(new Storage(data, bytes, device, std::move(keep_alive)));
}

Storage::~Storage() {
  if (keep_alive_ != nullptr) return;  // the owner frees it
#if LAMINA_WITH_CUDA
  if (device_.is_cuda()) {
    cuda::device_release(data_, bytes_, capacity_, device_.index);
    return;
  }
#endif
  host_counters().on_free(int64_t(bytes_), int64_t(capacity_));
  // An exact-size block (allocated when memory was short) is no size class: it is not kept.
  const bool cacheable = kUseHostCache && capacity_ >= HostBlockCache::kMinCachedBytes &&
                         HostBlockCache::size_class(capacity_) == capacity_;
  if (!cacheable || !host_cache().give(data_, capacity_)) host_free(data_);
}

}  // namespace lamina
