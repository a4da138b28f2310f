// The NCCL communicator (see nccl_communicator.h): rendezvous through the CPU process group,
// one communication stream, CUDA events as Work, every NCCL and CUDA call checked.
#include "train/distributed/cuda/nccl_communicator.h"

#include <nccl.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/error.h"
#include "train/distributed/process_group.h"

namespace lamina::dist {
namespace {

using Clock = std::chrono::steady_clock;

// Throws an Error naming the call as written, NCCL's description, and its last message.
void check_nccl(ncclResult_t status, const char* call, ncclComm_t comm) {
  if (status == ncclSuccess) return;
  const char* detail = comm != nullptr ? ncclGetLastError(comm) : nullptr;
  throw Error(str_cat("NCCL: ", call, " failed: ", ncclGetErrorString(status),
                      detail != nullptr && *detail != '\0' ? str_cat(" (", detail, ")") : std::string()));
}
#define LAMINA_NCCL_CHECK(comm, call) check_nccl((call), #call, (comm))

ncclDataType_t nccl_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
    case DType::boolean: return ncclUint8;  // one byte, 0 or 1; reduced with max (logical or)
  }
  throw Error("nccl: corrupt dtype value");
}

// bool's sum and max are a logical or (max of 0/1 bytes), as in the CPU process group.
ncclRedOp_t nccl_op(DType dtype, ReduceOp op, const char* name) {
  LAMINA_CHECK(op != ReduceOp::average || is_floating(dtype), "nccl ", name, ": average of ", dtype_name(dtype),
               " is refused (integers and bool cannot hold it): use sum and divide");
  if (dtype == DType::boolean) return ncclMax;
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::average: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  throw Error("nccl: corrupt reduce op value");
}

// What the communicator and its Works share: the Works may outlive a call, not the communicator.
struct NcclState {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  int rank = 0;
  std::chrono::milliseconds timeout{0};
  std::mutex mutex;
  std::string broken_message;  // set when an operation failed or timed out and comm was aborted
  CommunicationStats stats;
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<NcclState> state, const char* name, std::vector<Tensor> tensors, cudaEvent_t done,
           Clock::time_point issued)
      : state_(std::move(state)), name_(name), tensors_(std::move(tensors)), done_(done), issued_(issued) {}

  ~NcclWork() override {
    // Not waited for: the tensors' memory goes back to the allocator, which hands it out on the
    // compute stream, so that stream must not run past the communication.
    if (!waited_) cudaStreamWaitEvent(cuda::use_device(state_->device), done_, 0);
    cudaEventDestroy(done_);
  }

  void wait() override {
    if (waited_) {
      if (error_) std::rethrow_exception(error_);
      return;
    }
    waited_ = true;
    try {
      wait_for_event();
      LAMINA_CUDA_CHECK(cudaStreamWaitEvent(cuda::use_device(state_->device), done_, 0));
      std::lock_guard lock(state_->mutex);
      state_->stats.operations += 1;
      state_->stats.seconds_in_flight += std::chrono::duration<double>(Clock::now() - issued_).count();
    } catch (...) {
      error_ = std::current_exception();
      throw;
    }
  }

  bool completed() const override { return cudaEventQuery(done_) == cudaSuccess; }

 private:
  // NCCL waits forever for a peer that died; poll the event and NCCL's async error instead, and
  // abort the communicator at the timeout.
  void wait_for_event() {
    const auto deadline = Clock::now() + state_->timeout;
    while (true) {
      const cudaError_t status = cudaEventQuery(done_);
      if (status == cudaSuccess) return;
      if (status != cudaErrorNotReady) LAMINA_CUDA_CHECK(status);
      ncclResult_t async_error = ncclSuccess;
      LAMINA_NCCL_CHECK(state_->comm, ncclCommGetAsyncError(state_->comm, &async_error));
      if (async_error != ncclSuccess) {
        abort(str_cat("NCCL ", name_, " on rank ", state_->rank, " failed: ", ncclGetErrorString(async_error), " (",
                      ncclGetLastError(state_->comm), ")"));
      }
      if (Clock::now() > deadline) {
        abort(str_cat("NCCL ", name_, " on rank ", state_->rank, " did not complete within ",
                      double(state_->timeout.count()) / 1000.0,
                      " s (LAMINA_DIST_TIMEOUT_S): a peer exited or is stuck; the communicator is aborted"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  [[noreturn]] void abort(const std::string& message) {
    std::lock_guard lock(state_->mutex);
    if (state_->broken_message.empty()) {
      state_->broken_message = message;
      ncclCommAbort(state_->comm);
      state_->comm = nullptr;
    }
    throw Error(message);
  }

  std::shared_ptr<NcclState> state_;
  const char* name_;
  std::vector<Tensor> tensors_;  // alive until the operation has completed
  cudaEvent_t done_;
  Clock::time_point issued_;
  bool waited_ = false;
  std::exception_ptr error_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(const DistributedEnv& env, std::chrono::milliseconds timeout)
      : state_(std::make_shared<NcclState>()), world_size_(env.world_size) {
    const int devices = cuda::device_count();
    LAMINA_CHECK(devices > 0, "nccl backend: no usable CUDA device on this machine (use --backend cpu)");
    LAMINA_CHECK(env.local_rank < devices, "nccl backend: local rank ", env.local_rank, " needs GPU ", env.local_rank,
                 " but this machine has ", devices, " (start at most ", devices, " ranks per machine)");
    state_->device = env.local_rank;
    state_->rank = env.rank;
    state_->timeout = timeout;
    cuda::use_device(state_->device);  // current device for ncclCommInitRank

    // The unique id travels over the process group's TCP rendezvous.
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (env.rank == 0) LAMINA_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
    {
      std::unique_ptr<Communicator> bootstrap = connect_process_group(env, timeout);
      Tensor id_bytes = Tensor::empty({int64_t(sizeof id)}, DType::u8);
      std::memcpy(id_bytes.raw_data(), &id, sizeof id);
      bootstrap->broadcast(id_bytes, 0);
      std::memcpy(&id, id_bytes.raw_data(), sizeof id);
    }
    LAMINA_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
    LAMINA_NCCL_CHECK(nullptr, ncclCommInitRank(&state_->comm, env.world_size, id, env.rank));
  }

  ~NcclCommunicator() override {
    std::lock_guard lock(state_->mutex);
    if (state_->comm != nullptr) {
      cudaStreamSynchronize(state_->stream);  // operations nobody waited for
      ncclCommDestroy(state_->comm);
      state_->comm = nullptr;
    }
    if (state_->stream != nullptr) cudaStreamDestroy(state_->stream);
  }

  int rank() const override { return state_->rank; }
  int world_size() const override { return world_size_; }
  std::string backend() const override { return "nccl"; }
  Device device() const override { return Device::cuda(state_->device); }

  std::shared_ptr<Work> all_reduce_async(const Tensor& tensor, ReduceOp op) override {
    check_tensor(tensor, "all_reduce", "tensor");
    const ncclRedOp_t reduce = nccl_op(tensor.dtype(), op, "all_reduce");
    add_bytes(2.0 * (world_size_ - 1) / world_size_ * double(tensor.nbytes()));
    return launch("all_reduce", {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllReduce(tensor.raw_data(), tensor.raw_data(), size_t(tensor.numel()), nccl_dtype(tensor.dtype()),
                           reduce, comm, stream);
    });
  }

  std::shared_ptr<Work> reduce_scatter_async(const Tensor& input, const Tensor& output, ReduceOp op) override {
    check_tensor(input, "reduce_scatter", "input");
    check_tensor(output, "reduce_scatter", "output");
    LAMINA_CHECK(input.dtype() == output.dtype() && input.numel() == output.numel() * world_size_,
                 "nccl reduce_scatter: input (", input.numel(), " ", dtype_name(input.dtype()),
                 ") must be world_size (", world_size_, ") x output (", output.numel(), " ", dtype_name(output.dtype()), ")");
    const ncclRedOp_t reduce = nccl_op(input.dtype(), op, "reduce_scatter");
    add_bytes(double(world_size_ - 1) * double(output.nbytes()));
    return launch("reduce_scatter", {input, output}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclReduceScatter(input.raw_data(), output.raw_data(), size_t(output.numel()), nccl_dtype(input.dtype()),
                               reduce, comm, stream);
    });
  }

  std::shared_ptr<Work> all_gather_async(const Tensor& input, const Tensor& output) override {
    check_tensor(input, "all_gather", "input");
    check_tensor(output, "all_gather", "output");
    LAMINA_CHECK(input.dtype() == output.dtype() && output.numel() == input.numel() * world_size_,
                 "nccl all_gather: output (", output.numel(), " ", dtype_name(output.dtype()),
                 ") must be world_size (", world_size_, ") x input (", input.numel(), " ", dtype_name(input.dtype()), ")");
    add_bytes(double(world_size_ - 1) * double(input.nbytes()));
    return launch("all_gather", {input, output}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclAllGather(input.raw_data(), output.raw_data(), size_t(input.numel()), nccl_dtype(input.dtype()), comm,
                           stream);
    });
  }

  std::shared_ptr<Work> broadcast_async(const Tensor& tensor, int root) override {
    check_tensor(tensor, "broadcast", "tensor");
    LAMINA_CHECK(root >= 0 && root < world_size_, "nccl broadcast: root ", root, " is not a rank (world size ",
                 world_size_, ")");
    if (rank() == root) add_bytes(double(tensor.nbytes()));
    return launch("broadcast", {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
      return ncclBroadcast(tensor.raw_data(), tensor.raw_data(), size_t(tensor.numel()), nccl_dtype(tensor.dtype()), root,
                           comm, stream);
    });
  }

  void barrier() override {
    const Tensor token = Tensor::empty({1}, DType::i32, device());
    all_reduce_async(token, ReduceOp::sum)->wait();
    LAMINA_CUDA_CHECK(cudaStreamSynchronize(state_->stream));
  }

  CommunicationStats stats() const override {
    std::lock_guard lock(state_->mutex);
    return state_->stats;
  }

 private:
  void check_tensor(const Tensor& tensor, const char* op, const char* argument) const {
    check_defined(tensor, op, argument);
    LAMINA_CHECK(tensor.device() == device(), "nccl ", op, ": ", argument, " is on ", tensor.device().str(),
                 ", but this rank's communicator is on ", device().str());
    LAMINA_CHECK(tensor.is_contiguous(), "nccl ", op, ": ", argument, " (shape ", tensor.shape(), ") is not contiguous");
  }

  void add_bytes(double bytes) {
    std::lock_guard lock(state_->mutex);
    state_->stats.bytes_sent += int64_t(bytes);
  }

  // Orders the operation after the compute stream's queued work, issues it on the
  // communication stream and records its completion event.
  std::shared_ptr<Work> launch(const char* name, std::vector<Tensor> tensors,
                               const std::function<ncclResult_t(ncclComm_t, cudaStream_t)>& call) {
    ncclComm_t comm;
    {
      std::lock_guard lock(state_->mutex);
      LAMINA_CHECK(state_->broken_message.empty(), "nccl communicator (rank ", state_->rank,
                   ") is unusable after an earlier error: ", state_->broken_message);
      comm = state_->comm;
    }
    const auto issued = Clock::now();
    const cudaStream_t compute = cuda::use_device(state_->device);
    cudaEvent_t ready = nullptr, done = nullptr;
    LAMINA_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    LAMINA_CUDA_CHECK(cudaEventRecord(ready, compute));
    LAMINA_CUDA_CHECK(cudaStreamWaitEvent(state_->stream, ready, 0));
    LAMINA_CUDA_CHECK(cudaEventDestroy(ready));  // the wait is queued; the event may go
    const ncclResult_t status = call(comm, state_->stream);
    check_nccl(status, name, comm);
    LAMINA_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    LAMINA_CUDA_CHECK(cudaEventRecord(done, state_->stream));
    return std::make_shared<NcclWork>(state_, name, std::move(tensors), done, issued);
  }

  std::shared_ptr<NcclState> state_;
  int world_size_;
};

}  // namespace

std::unique_ptr<Communicator> connect_nccl_communicator(const DistributedEnv& env, std::chrono::milliseconds timeout) {
  return std::make_unique<NcclCommunicator>(env, timeout);
}

}  // namespace lamina::dist
