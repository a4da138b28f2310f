// The CPU process group: a Communicator whose ranks are real processes exchanging real bytes
// over TCP, on one machine (loopback) or several. The tests run distributed training through
// it, and it is the fallback backend on machines without NCCL.
//
// Why TCP: it works between machines as well as on one, needs nothing beyond POSIX sockets,
// and a peer that dies shows up as an EOF or a reset on its socket, so a failure is a clear
// error instead of a hang (shared memory would need a watchdog of its own for that).
//
// Rendezvous (IPv4: MASTER_ADDR is an IPv4 address or a name that resolves to one): rank 0
// listens on MASTER_PORT of every interface; every other rank connects (retrying
// until the timeout: rank 0 may start later) and says its rank and the port of its own data
// socket; rank 0 answers with the table of every rank's address and port; then each rank
// connects to its ring successor. The connection to rank 0 stays open as a control channel:
// a rank that fails tells rank 0 why, and rank 0 tells the others, so every rank's error names
// the rank that caused it.
//
// The ring: rank r sends only to r+1 and receives only from r-1. all_reduce is a ring
// reduce-scatter followed by a ring all-gather: each rank sends 2(n-1)/n of the tensor, the
// least any algorithm needs, whatever the world size. Data moves in pieces (piece_bytes): a
// piece received from the predecessor is reduced into the tensor while the next piece arrives,
// so a large tensor needs no full-size staging copy. broadcast pipelines the pieces along the
// ring from the root; barrier is an all_reduce of one element.
//
// Before each operation the ranks exchange a 32-byte header (sequence number, operation, dtype,
// element count, root): ranks that disagree all fail with an Error naming both ranks' calls,
// instead of reading each other's bytes as garbage. After any error the group is broken and
// every later operation throws at once. (The header costs world_size - 1 small hops per call:
// about 30 us per small all_reduce between 2 local ranks, `lamina bench allreduce`. Headers and
// data go as the machine stores them: every rank must share one byte order, as all x86-64 and
// ARM64 machines do.)
//
// dtypes: f32, f64, bf16, f16, i32, i64, u8 and bool. bf16 and f16 add in f32 and round once per
// hop; average divides once, at the end, in the tensor's dtype (f32 for the 16-bit floats);
// integers and bool refuse average; u8 sums wrap modulo 256; bool's sum and max are logical or.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>

#include "train/distributed/communicator.h"
#include "train/distributed/rendezvous.h"

namespace lamina::dist {

constexpr size_t kDefaultPieceBytes = size_t(1) << 20;

// Connects this rank to the others (see above). `timeout` bounds the rendezvous and, during
// operations, how long a rank waits without receiving a byte. World size 1 opens no sockets.
// `piece_bytes` (rounded to whole elements; tests shrink it to exercise the pieces on small
// tensors) is how much of a transfer is staged at once.
std::unique_ptr<Communicator> connect_process_group(const DistributedEnv& env, std::chrono::milliseconds timeout,
                                                    size_t piece_bytes = kDefaultPieceBytes);

}  // namespace lamina::dist
