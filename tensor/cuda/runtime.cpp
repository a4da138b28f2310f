// CUDA runtime: availability, device properties, one stream per device, events, error text.
#include "tensor/cuda/runtime.h"

#include <cublasLt.h>

#include <array>
#include <memory>
#include <mutex>

#include "tensor/cuda_runtime.h"
#include "tensor/error.h"

namespace lamina {

bool cuda_backend_built() { return true; }

CudaAvailability cuda_availability() {
  CudaAvailability availability;
  const cudaError_t status = cudaGetDeviceCount(&availability.device_count);
  if (status != cudaSuccess) {
    // Any failure here (no driver, driver too old, no device) means "no GPU".
    availability.device_count = 0;
    availability.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error
  } else if (availability.device_count == 0) {
    availability.reason = "no CUDA device found";
  }
  return availability;
}

void synchronize(Device device) {
  if (device.is_cuda()) cuda::synchronize_stream(device.index);
}

std::string device_name(Device device) { return device.is_cuda() ? cuda::device_info(device.index).name : "cpu"; }

namespace cuda {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so that later calls do not report it again
  throw Error(str_cat("CUDA error ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ") in ", call, " at ",
                      file, ":", line));
}

void throw_cublas_error(int status, const char* call, const char* file, int line) {
  const auto code = static_cast<cublasStatus_t>(status);
  throw Error(str_cat("cuBLAS error ", cublasLtGetStatusName(code), " (", cublasLtGetStatusString(code), ") in ", call,
                      " at ", file, ":", line));
}

namespace {

constexpr int kMaxDevices = 64;

// Per-device state, created on first use and kept for the life of the process: destroying
// streams during static destruction can race the CUDA runtime's own teardown.
struct DeviceState {
  std::once_flag once;
  DeviceInfo info;
  cudaStream_t stream = nullptr;
};

std::array<DeviceState, kMaxDevices>& device_states() {
  static auto* states = new std::array<DeviceState, kMaxDevices>();
  return *states;
}

DeviceState& state_of(int index) {
  check_device_index(index);
  DeviceState& state = device_states()[size_t(index)];
  std::call_once(state.once, [&] {
    LAMINA_CUDA_CHECK(cudaSetDevice(index));
    cudaDeviceProp props{};
    LAMINA_CUDA_CHECK(cudaGetDeviceProperties(&props, index));
    state.info.name = props.name;
    state.info.compute_major = props.major;
    state.info.compute_minor = props.minor;
    state.info.multiprocessors = props.multiProcessorCount;
    state.info.total_memory = props.totalGlobalMem;
    state.info.l2_bytes = size_t(props.l2CacheSize);
    state.info.shared_memory_per_block = props.sharedMemPerBlock;
    LAMINA_CUDA_CHECK(cudaStreamCreate(&state.stream));
  });
  return state;
}

}  // namespace

int device_count() {
  static const int count = [] {
    const CudaAvailability availability = cuda_availability();
    return availability.device_count;
  }();
  return count;
}

void check_device_index(int index) {
  if (index >= 0 && index < device_count() && index < kMaxDevices) return;
  const CudaAvailability availability = cuda_availability();
  LAMINA_CHECK(availability.device_count > 0, "device cuda:", index, " is not available: ", availability.reason);
  throw Error(str_cat("device cuda:", index, " does not exist (this machine has ", availability.device_count,
                      " CUDA device(s))"));
}

const DeviceInfo& device_info(int index) { return state_of(index).info; }

cudaStream_t use_device(int index) {
  DeviceState& state = state_of(index);
  int current = -1;
  LAMINA_CUDA_CHECK(cudaGetDevice(&current));
  if (current != index) LAMINA_CUDA_CHECK(cudaSetDevice(index));
  return state.stream;
}

void synchronize_stream(int index) { LAMINA_CUDA_CHECK(cudaStreamSynchronize(use_device(index))); }

Event::Event(int device) : device_(device) {
  use_device(device);
  LAMINA_CUDA_CHECK(cudaEventCreate(&event_));
}

Event::~Event() {
  if (event_ != nullptr) cudaEventDestroy(event_);  // no throw from a destructor
}

void Event::record(cudaStream_t stream) {
  use_device(device_);
  LAMINA_CUDA_CHECK(cudaEventRecord(event_, stream));
}

void Event::synchronize() const { LAMINA_CUDA_CHECK(cudaEventSynchronize(event_)); }

void Event::make_stream_wait(cudaStream_t stream) const { LAMINA_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }

float Event::elapsed_ms(const Event& start, const Event& end) {
  float ms = 0;
  LAMINA_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, end.event_));
  return ms;
}

}  // namespace cuda
}  // namespace lamina
