// The NCCL backend of lamina::dist::Communicator: collectives between GPUs, one per rank, over
// NVLink, PCIe or the network, as NCCL finds best. CUDA builds with NCCL only (this folder is
// compiled when CMake finds libnccl and nccl.h; see CMakeLists.txt).
//
// Setup: NCCL needs every rank to hold the same ncclUniqueId. Rank 0 makes it, and the CPU
// process group's TCP rendezvous (process_group.h) carries its 128 bytes to the others, so the
// NCCL backend reads the same RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT and fails the same way
// when a rank never comes. Then ncclCommInitRank on GPU local_rank.
//
// Streams: NCCL work runs on one communication stream per communicator. An operation first
// makes that stream wait for the device's compute stream (so it reads the tensor as the
// kernels queued before it left it), and its Work is a CUDA event recorded after it. wait()
// blocks the host until the event (bounded by the timeout: NCCL itself would wait forever for
// a dead peer; at the timeout the communicator is aborted and the Error names the operation)
// and makes the compute stream wait for it too.
#pragma once

#include <chrono>
#include <memory>

#include "train/distributed/communicator.h"
#include "train/distributed/rendezvous.h"

namespace lamina::dist {

// Tensors given to the returned communicator live on cuda:<env.local_rank>; a machine with
// fewer GPUs than local ranks is an Error naming both counts.
std::unique_ptr<Communicator> connect_nccl_communicator(const DistributedEnv& env, std::chrono::milliseconds timeout);

}  // namespace lamina::dist
