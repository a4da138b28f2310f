// The CUDA device model: which devices exist, one compute stream per device, events.
//
// Every kernel, copy and memset lamina issues on device n goes to stream(n), in program order.
// That single ordering is what lets the caching allocator hand a freed block to the next
// allocation at once: any kernel still reading the old tensor was queued before any kernel
// that can write the new one. Work is asynchronous; reading results on the host (a copy to
// the CPU, Tensor::to_vector) waits for the stream.
//
// Only for code built with the CUDA backend (it includes the CUDA runtime header); the
// device-independent queries are in tensor/cuda_runtime.h. C++17.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "tensor/cuda/check.h"

namespace lamina::cuda {

struct DeviceInfo {
  std::string name;
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
  size_t l2_bytes = 0;
  size_t shared_memory_per_block = 0;  // without opting in to more
};

int device_count();  // 0 when no driver or device is usable (never throws)
// Throws naming `index` unless it is a usable device.
void check_device_index(int index);
const DeviceInfo& device_info(int index);

// Makes device `index` current on this thread and returns its compute stream (created on
// first use, never destroyed).
cudaStream_t use_device(int index);
// Waits until everything queued on the device's stream has finished.
void synchronize_stream(int index);

// A CUDA event on one device, for ordering (staging buffers) and timing (benchmarks).
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(cudaStream_t stream);  // records on `stream` (of this event's device)
  void record() { record(use_device(device_)); }
  void synchronize() const;
  // Makes work queued on `stream` (of any device) from now on wait until this event has completed.
  void make_stream_wait(cudaStream_t stream) const;
  // Milliseconds between `start` and `end`, both recorded and completed.
  static float elapsed_ms(const Event& start, const Event& end);

 private:
  int device_;
  cudaEvent_t event_ = nullptr;
};

}  // namespace lamina::cuda
