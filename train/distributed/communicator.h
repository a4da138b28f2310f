// Collective communication between the ranks of a distributed run: the interface the trainers
// use, whatever carries the bytes.
//
// Two backends implement it: NCCL between GPUs (train/distributed/cuda/nccl_communicator.h,
// CUDA builds only), and a CPU process group (train/distributed/process_group.h): real
// processes on one or several machines exchanging real bytes over TCP, with the same semantics,
// which is what the tests run. A run finds its place from the environment
// (train/distributed/rendezvous.h: RANK, WORLD_SIZE, ... as torchrun or SLURM set them).
//
// Every rank calls the same collectives in the same order with tensors of the same shape and
// dtype; rank r's data lands where the operation says. An operation returns a Work handle at
// once and completes in the background (one communication thread or stream per communicator,
// so operations complete in the order they were issued); wait() blocks until it has and
// rethrows its error. A peer that exits or stops answering makes the waiting ranks fail with an
// Error naming the peer within the communicator's timeout, never hang forever.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "tensor/tensor.h"

namespace lamina::dist {

enum class ReduceOp { sum, average, max };
const char* reduce_op_name(ReduceOp op);

// An operation in flight.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the operation has completed on this rank; throws its error (a peer gone, a
  // timeout) as lamina::Error. Waiting again returns at once (or throws again).
  virtual void wait() = 0;
  virtual bool completed() const = 0;
};

// What a communicator has moved, for the metrics (bytes this rank sent, time its operations were
// in flight).
struct CommunicationStats {
  int64_t bytes_sent = 0;
  int64_t operations = 0;
  double seconds_in_flight = 0;  // summed over operations, issue to completion
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;  // "cpu" or "nccl"
  // Where the tensors given to this communicator live (the CPU process group: the CPU; NCCL:
  // its GPU).
  virtual Device device() const { return Device::cpu(); }

  // In place: every rank's `tensor` becomes the element-wise reduction over the ranks (average:
  // the sum divided by world_size, in the tensor's dtype; integer dtypes refuse average).
  // Contiguous tensors; every dtype of tensor/dtype.h (bf16 and f16 add in f32 and round once
  // per hop).
  virtual std::shared_ptr<Work> all_reduce_async(const Tensor& tensor, ReduceOp op) = 0;
  // `input` holds world_size equal chunks of output.numel() elements; rank r's `output` becomes
  // the reduction over the ranks of chunk r.
  virtual std::shared_ptr<Work> reduce_scatter_async(const Tensor& input, const Tensor& output, ReduceOp op) = 0;
  // `output` holds world_size chunks of input.numel() elements; chunk r becomes rank r's `input`.
  virtual std::shared_ptr<Work> all_gather_async(const Tensor& input, const Tensor& output) = 0;
  // Every rank's `tensor` becomes root's.
  virtual std::shared_ptr<Work> broadcast_async(const Tensor& tensor, int root) = 0;
  // Returns when every rank has called it (or throws when one cannot).
  virtual void barrier() = 0;

  virtual CommunicationStats stats() const = 0;

  // Blocking forms.
  void all_reduce(const Tensor& tensor, ReduceOp op = ReduceOp::sum) { all_reduce_async(tensor, op)->wait(); }
  void reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op = ReduceOp::sum) {
    reduce_scatter_async(input, output, op)->wait();
  }
  void all_gather(const Tensor& input, const Tensor& output) { all_gather_async(input, output)->wait(); }
  void broadcast(const Tensor& tensor, int root) { broadcast_async(tensor, root)->wait(); }
  // Root's text on every rank (control messages: the checkpoint a run resumes from, an error).
  std::string broadcast_text(const std::string& text, int root);
  // The sum over the ranks of a host number (a step's loss, its target tokens).
  double all_reduce_sum(double value);
  int64_t all_reduce_sum(int64_t value);
};

struct DistributedEnv;  // train/distributed/rendezvous.h

// The communicator for this rank: backend "cpu" (the TCP process group), "nccl" (CUDA builds
// with NCCL; the GPU is local_rank) or "auto" (nccl when built and a GPU is usable, else cpu).
// The timeout is distributed_timeout() (LAMINA_DIST_TIMEOUT_S). "nccl" in a build without it
// is an Error saying so.
std::unique_ptr<Communicator> make_communicator(const DistributedEnv& env, const std::string& backend);

}  // namespace lamina::dist
