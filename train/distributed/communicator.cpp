// The parts of the Communicator interface that every backend shares (host-value helpers built
// on the tensor collectives), and make_communicator, which picks the backend.
#include "train/distributed/communicator.h"

#include "tensor/cuda_runtime.h"
#include "tensor/error.h"
#include "train/distributed/process_group.h"
#include "train/distributed/rendezvous.h"
#if LAMINA_WITH_NCCL
#include "train/distributed/cuda/nccl_communicator.h"
#endif

namespace lamina::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::average: return "average";
    case ReduceOp::max: return "max";
  }
  return "unknown reduce op";
}

std::string Communicator::broadcast_text(const std::string& text, int root) {
  // The length first, so that every rank can size its buffer; then the bytes.
  const Device where = device();
  Tensor length = Tensor::from_vector<int64_t>({int64_t(rank() == root ? text.size() : 0)}, {1}).to(where);
  broadcast(length, root);
  const int64_t size = length.item<int64_t>();
  if (size == 0) return "";
  std::vector<uint8_t> bytes(size_t(size), 0);
  if (rank() == root) std::copy(text.begin(), text.end(), bytes.begin());
  Tensor buffer = Tensor::from_vector<uint8_t>(bytes, {size}).to(where);
  broadcast(buffer, root);
  const std::vector<uint8_t> received = buffer.to_vector<uint8_t>();
  return std::string(received.begin(), received.end());
}

double Communicator::all_reduce_sum(double value) {
  Tensor tensor = Tensor::from_vector<double>({value}, {1}).to(device());
  all_reduce(tensor, ReduceOp::sum);
  return tensor.item<double>();
}

int64_t Communicator::all_reduce_sum(int64_t value) {
  Tensor tensor = Tensor::from_vector<int64_t>({value}, {1}).to(device());
  all_reduce(tensor, ReduceOp::sum);
  return tensor.item<int64_t>();
}

std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, const std::string& backend) {
  LAMINA_CHECK(backend == "cpu" || backend == "nccl" || backend == "auto", "distributed backend '", backend,
               "' is unknown (expected cpu, nccl or auto)");
  const std::chrono::milliseconds timeout = distributed_timeout();
  bool use_nccl = backend == "nccl";
#if LAMINA_WITH_NCCL
  if (backend == "auto") use_nccl = cuda_availability().device_count > 0;
  if (use_nccl) return connect_nccl_communicator(env, timeout);
#else
  LAMINA_CHECK(!use_nccl, "distributed backend 'nccl': this lamina was built without NCCL (",
               cuda_backend_built() ? "the CUDA build found no libnccl/nccl.h"
                                    : "a CPU-only build: configure with -DLAMINA_CUDA=ON",
               "); use --backend cpu");
#endif
  return connect_process_group(env, timeout);
}

}  // namespace lamina::dist
