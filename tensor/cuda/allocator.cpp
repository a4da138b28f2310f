// Caching device allocator: size classes, per-device free lists, statistics, out-of-memory text.
#include "tensor/cuda/allocator.h"

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <vector>

#include "tensor/cuda/runtime.h"
#include "tensor/error.h"
#include "tensor/host_memory.h"

namespace lamina::cuda {
namespace {

constexpr size_t kSmallStep = 512;  // classes below 1 MiB
constexpr size_t kLargeThreshold = size_t(1) << 20;
constexpr int kMaxDevices = 64;

class DeviceCache {
 public:
  DeviceBlock allocate(size_t bytes, int device) {
    if (bytes == 0) return {};
    const size_t capacity = device_size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    void* data = take(capacity);
    if (data == nullptr) {
      data = fresh_block(bytes, capacity, device);
      ++stats_.fresh_blocks;
      reserved_ += int64_t(capacity);
    }
    stats_.live_bytes += int64_t(bytes);
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.live_bytes);
    ++stats_.allocations;
    ++live_blocks_;
    const int fill = fill_byte_.load();
    if (fill >= 0) LAMINA_CUDA_CHECK(cudaMemsetAsync(data, fill, capacity, use_device(device)));
    return {data, capacity};
  }

  void release(void* data, size_t bytes, size_t capacity) noexcept {
    if (data == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    free_blocks_[capacity].push_back(data);
    stats_.cached_bytes += int64_t(capacity);
    stats_.live_bytes -= int64_t(bytes);
    --live_blocks_;
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    MemoryStats out = stats_;
    out.reserved_bytes = reserved_;
    return out;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_bytes = stats_.live_bytes;
  }

  int64_t release_cache(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    return release_cache_locked(device);
  }

  static void set_fill(int byte) { fill_byte_.store(byte); }

 private:
  void* take(size_t capacity) {
    auto found = free_blocks_.find(capacity);
    if (found == free_blocks_.end() || found->second.empty()) return nullptr;
    void* block = found->second.back();
    found->second.pop_back();
    stats_.cached_bytes -= int64_t(capacity);
    return block;
  }

  int64_t release_cache_locked(int device) {
    const int64_t released = stats_.cached_bytes;
    if (released == 0) return 0;
    use_device(device);
    for (auto& [capacity, blocks] : free_blocks_) {
      for (void* block : blocks) LAMINA_CUDA_CHECK(cudaFree(block));  // waits for the device first
      reserved_ -= int64_t(capacity) * int64_t(blocks.size());
    }
    free_blocks_.clear();
    stats_.cached_bytes = 0;
    return released;
  }

  // cudaMalloc, retried once after giving the cache back; throws with the numbers on failure.
  void* fresh_block(size_t bytes, size_t capacity, int device) {
    use_device(device);
    void* data = nullptr;
    cudaError_t status = cudaMalloc(&data, capacity);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      const int64_t released = release_cache_locked(device);
      status = cudaMalloc(&data, capacity);
      if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_bytes = 0, total_bytes = 0;
        const bool have_info = cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess;
        cudaGetLastError();
        throw Error(str_cat("CUDA out of memory on cuda:", device, ": requested ", format_bytes(uint64_t(bytes)), " (",
                            bytes, " bytes, size class ", capacity, "); lamina holds ", format_bytes(uint64_t(reserved_)),
                            " (", reserved_, " bytes: ", format_bytes(uint64_t(stats_.live_bytes)), " live in ",
                            live_blocks_, " tensors, ", format_bytes(uint64_t(released)),
                            " of cached blocks released before retrying)",
                            have_info ? str_cat("; the device has ", format_bytes(uint64_t(free_bytes)), " free of ",
                                                format_bytes(uint64_t(total_bytes)))
                                      : std::string()));
      }
    }
    if (status != cudaSuccess) {  // not a shortage: a broken device or context, named with the request
      cudaGetLastError();
      throw Error(str_cat("CUDA error on cuda:", device, " while allocating ", format_bytes(bytes), " (", bytes,
                          " bytes): ", cudaGetErrorString(status)));
    }
    return data;
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_blocks_;
  MemoryStats stats_;
  int64_t reserved_ = 0;  // bytes obtained from cudaMalloc and not yet freed
  int64_t live_blocks_ = 0;
  static inline std::atomic<int> fill_byte_{-1};
};

// Never destroyed: Storage destructors of static tensors may run after any static here would be.
std::array<DeviceCache, kMaxDevices>& caches() {
  static auto* all = new std::array<DeviceCache, kMaxDevices>();
  return *all;
}

DeviceCache& cache_of(int device) {
  check_device_index(device);
  return caches()[size_t(device)];
}

}  // namespace

size_t device_size_class(size_t bytes) {
  // Past 2^62 the doubling below would overflow; no device has that much memory anyway.
  LAMINA_CHECK(bytes <= size_t(1) << 62, "CUDA out of memory: ", format_bytes(bytes), " (", bytes,
               " bytes) requested, more than any device has");
  if (bytes < kLargeThreshold) return std::max(kSmallStep, (bytes + kSmallStep - 1) / kSmallStep * kSmallStep);
  size_t top = kLargeThreshold;
  while (top < bytes) top <<= 1;
  const size_t step = top / 16;  // 8 classes between top/2 and top
  return (bytes + step - 1) / step * step;
}

DeviceBlock device_allocate(size_t bytes, int device) { return cache_of(device).allocate(bytes, device); }

// The device index was checked when the block was allocated, so no check (which could throw) here.
void device_release(void* data, size_t bytes, size_t capacity, int device) noexcept {
  if (data == nullptr || device < 0 || device >= kMaxDevices) return;
  caches()[size_t(device)].release(data, bytes, capacity);
}

MemoryStats device_memory_stats(int device) { return cache_of(device).stats(); }

void reset_device_peak_memory(int device) { cache_of(device).reset_peak(); }

int64_t empty_device_cache(int device) { return cache_of(device).release_cache(device); }

void set_allocation_fill(int byte) {
  LAMINA_CHECK(byte >= -1 && byte <= 255, "set_allocation_fill: byte must be -1 (off) or 0..255, got ", byte);
  DeviceCache::set_fill(byte);
}

}  // namespace lamina::cuda
