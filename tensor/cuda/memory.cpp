// Host <-> device copies, with pinned double-buffered staging for large transfers.
#include "tensor/cuda/memory.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>

#include "tensor/cuda/runtime.h"

namespace lamina::cuda {
namespace {

constexpr size_t kChunkBytes = size_t(8) << 20;
constexpr int kMaxDevices = 64;

// Two pinned chunks and the events that say when the DMA using each has finished.
struct Staging {
  std::mutex mutex;
  std::array<void*, 2> buffers{};
  std::array<std::unique_ptr<Event>, 2> done;
  std::array<bool, 2> pending{};

  void ensure(int device) {
    if (buffers[0] != nullptr) return;
    use_device(device);
    for (int i = 0; i < 2; ++i) {
      LAMINA_CUDA_CHECK(cudaMallocHost(&buffers[size_t(i)], kChunkBytes));
      done[size_t(i)] = std::make_unique<Event>(device);
    }
  }

  // Waits until the previous DMA through buffer i has finished.
  void wait(int i) {
    if (pending[size_t(i)]) done[size_t(i)]->synchronize();
    pending[size_t(i)] = false;
  }
};

// Never destroyed (pinned memory freed at exit would race the runtime's teardown).
Staging& staging_of(int device) {
  static auto* all = new std::array<Staging, kMaxDevices>();
  check_device_index(device);
  return (*all)[size_t(device)];
}

size_t chunk_length(size_t bytes, size_t chunk) { return std::min(kChunkBytes, bytes - chunk * kChunkBytes); }

void staged_to_device(char* dst, const char* src, size_t bytes, int device, cudaStream_t stream) {
  Staging& staging = staging_of(device);
  std::lock_guard<std::mutex> lock(staging.mutex);
  staging.ensure(device);
  const size_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
  for (size_t c = 0; c < chunks; ++c) {
    const int buffer = int(c % 2);
    staging.wait(buffer);
    const size_t length = chunk_length(bytes, c);
    std::memcpy(staging.buffers[size_t(buffer)], src + c * kChunkBytes, length);
    LAMINA_CUDA_CHECK(cudaMemcpyAsync(dst + c * kChunkBytes, staging.buffers[size_t(buffer)], length,
                                      cudaMemcpyHostToDevice, stream));
    staging.done[size_t(buffer)]->record(stream);
    staging.pending[size_t(buffer)] = true;
  }
}

void staged_to_host(char* dst, const char* src, size_t bytes, int device, cudaStream_t stream) {
  Staging& staging = staging_of(device);
  std::lock_guard<std::mutex> lock(staging.mutex);
  staging.ensure(device);
  const size_t chunks = (bytes + kChunkBytes - 1) / kChunkBytes;
  auto issue = [&](size_t c) {
    const int buffer = int(c % 2);
    staging.wait(buffer);  // an earlier upload through this buffer may still be reading it
    LAMINA_CUDA_CHECK(cudaMemcpyAsync(staging.buffers[size_t(buffer)], src + c * kChunkBytes, chunk_length(bytes, c),
                                      cudaMemcpyDeviceToHost, stream));
    staging.done[size_t(buffer)]->record(stream);
    staging.pending[size_t(buffer)] = true;
  };
  issue(0);
  for (size_t c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) issue(c + 1);  // the next chunk's DMA overlaps this chunk's memcpy
    const int buffer = int(c % 2);
    staging.wait(buffer);
    std::memcpy(dst + c * kChunkBytes, staging.buffers[size_t(buffer)], chunk_length(bytes, c));
  }
}

}  // namespace

void copy_to_device(void* device_dst, const void* host_src, size_t bytes, int device) {
  if (bytes == 0) return;
  const cudaStream_t stream = use_device(device);
  if (bytes >= kStagedBytes) {
    staged_to_device(static_cast<char*>(device_dst), static_cast<const char*>(host_src), bytes, device, stream);
  } else {
    // From pageable memory the call returns once the source has been staged by the driver.
    LAMINA_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream));
  }
}

void copy_to_host(void* host_dst, const void* device_src, size_t bytes, int device) {
  if (bytes == 0) return;
  const cudaStream_t stream = use_device(device);
  if (bytes >= kStagedBytes) {
    staged_to_host(static_cast<char*>(host_dst), static_cast<const char*>(device_src), bytes, device, stream);
  } else {
    LAMINA_CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, stream));
    LAMINA_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

void copy_within_device(void* dst, const void* src, size_t bytes, int device) {
  if (bytes == 0) return;
  LAMINA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, use_device(device)));
}

void copy_between_devices(void* dst, int dst_device, const void* src, int src_device, size_t bytes) {
  if (bytes == 0) return;
  synchronize_stream(src_device);  // src is complete
  // On dst's stream, so that the copy follows any earlier reader of dst's (reused) block.
  const cudaStream_t dst_stream = use_device(dst_device);
  LAMINA_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, dst_stream));
  // The caller may free src as soon as this returns (to_device frees its contiguous temporary), and
  // src_device's caching allocator then hands the block to the next work on src_device's stream,
  // which nothing orders after this copy on dst's stream: without this wait that work could
  // overwrite src while the copy still reads it.
  Event copied(dst_device);
  copied.record(dst_stream);
  copied.make_stream_wait(use_device(src_device));
}

void fill_bytes(void* device_dst, int byte, size_t bytes, int device) {
  if (bytes == 0) return;
  LAMINA_CUDA_CHECK(cudaMemsetAsync(device_dst, byte, bytes, use_device(device)));
}

Tensor host_copy_of_span(const Tensor& t) {
  LAMINA_CHECK(t.device().is_cuda(), "host_copy_of_span: tensor is on ", t.device().str());
  if (t.numel() == 0) return Tensor::empty(t.shape(), t.dtype());
  int64_t lowest = t.offset(), highest = t.offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach < 0 ? lowest : highest) += reach;
  }
  const size_t element = t.element_size();
  const size_t bytes = size_t(highest - lowest + 1) * element;
  auto storage = Storage::allocate(bytes, Device::cpu());
  copy_to_host(storage->data(), static_cast<const char*>(t.storage()->data()) + size_t(lowest) * element, bytes,
               t.device().index);
  return Tensor(storage, t.shape(), t.strides(), t.offset() - lowest, t.dtype());
}

}  // namespace lamina::cuda
