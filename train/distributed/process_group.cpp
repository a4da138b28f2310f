// The CPU process group over TCP: rendezvous, the ring algorithms, fault reporting (the design
// is described in process_group.h).
//
// Threads: the caller's thread validates and queues an operation; one communication thread per
// group runs the queue in order, so asynchronous operations complete in the order they were
// issued and the sockets are only ever touched by that thread. Sockets are non-blocking and
// every wait is a poll() bounded by the timeout: a rank sends to its successor and receives
// from its predecessor at the same time, which a pair of blocking calls could not do without
// deadlocking once both kernels' buffers are full.
#include "train/distributed/process_group.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "tensor/error.h"

namespace lamina::dist {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x4c4d5047;  // "LMPG"
constexpr uint32_t kProtocolVersion = 1;
constexpr size_t kMaxSendCall = size_t(4) << 20;  // bytes handed to one send()/recv()

std::string seconds_text(std::chrono::milliseconds duration) {
  return str_cat(double(duration.count()) / 1000.0, " s");
}

std::string system_error_text(int error) { return std::strerror(error); }

// An owned file descriptor.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() { reset(); }
  Socket(Socket&& other) noexcept : fd_(other.release()) {}
  Socket& operator=(Socket&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = other.release();
    }
    return *this;
  }
  int fd() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

void make_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  LAMINA_CHECK(flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0,
               "process group: fcntl(O_NONBLOCK) failed: ", system_error_text(errno));
}

void tune_stream_socket(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // headers are small: no Nagle delay
  make_nonblocking(fd);
}

int milliseconds_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return int(std::clamp<int64_t>(left, 0, 1 << 30));
}

// Waits for `events` on `fd` until the deadline; false on timeout.
bool poll_one(int fd, short events, Clock::time_point deadline) {
  while (true) {
    pollfd entry{fd, events, 0};
    const int ready = ::poll(&entry, 1, milliseconds_until(deadline));
    if (ready > 0) return true;
    if (ready == 0) return false;
    LAMINA_CHECK(errno == EINTR, "process group: poll failed: ", system_error_text(errno));
  }
}

sockaddr_in resolve_ipv4(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int status = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
  LAMINA_CHECK(status == 0 && found != nullptr, "process group: cannot resolve MASTER_ADDR '", host,
               "': ", ::gai_strerror(status));
  sockaddr_in address;
  std::memcpy(&address, found->ai_addr, sizeof address);
  ::freeaddrinfo(found);
  address.sin_port = htons(uint16_t(port));
  return address;
}

// A listening socket on every interface at `port` (0: any free port); returns the bound port.
Socket listen_on(int port, int backlog, int& bound_port, const std::string& purpose) {
  Socket socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  LAMINA_CHECK(socket.open(), "process group: socket() failed: ", system_error_text(errno));
  const int one = 1;
  // A run restarted at once finds its port in TIME_WAIT; SO_REUSEADDR lets it listen again.
  ::setsockopt(socket.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(uint16_t(port));
  LAMINA_CHECK(::bind(socket.fd(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0, "process group: ",
               purpose, " cannot listen on port ", port, ": ", system_error_text(errno),
               port != 0 ? " (another run on this port? choose another MASTER_PORT)" : "");
  LAMINA_CHECK(::listen(socket.fd(), backlog) == 0, "process group: listen() failed: ", system_error_text(errno));
  socklen_t length = sizeof address;
  ::getsockname(socket.fd(), reinterpret_cast<sockaddr*>(&address), &length);
  bound_port = ntohs(address.sin_port);
  make_nonblocking(socket.fd());
  return socket;
}

// The next connection on a listening socket, or a closed Socket at the deadline.
Socket accept_until(int listen_fd, Clock::time_point deadline, sockaddr_in* peer = nullptr) {
  while (poll_one(listen_fd, POLLIN, deadline)) {
    sockaddr_in address{};
    socklen_t length = sizeof address;
    const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&address), &length, SOCK_CLOEXEC);
    if (fd >= 0) {
      if (peer != nullptr) *peer = address;
      Socket socket(fd);
      tune_stream_socket(fd);
      return socket;
    }
    LAMINA_CHECK(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED,
                 "process group: accept() failed: ", system_error_text(errno));
  }
  return Socket();
}

// Connects, retrying (the listener may not exist yet) until the deadline; a closed Socket then,
// with the last failure in `last_error`.
Socket connect_until(const sockaddr_in& address, Clock::time_point deadline, std::string& last_error) {
  last_error = "no attempt finished";
  while (Clock::now() < deadline) {
    Socket socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    LAMINA_CHECK(socket.open(), "process group: socket() failed: ", system_error_text(errno));
    make_nonblocking(socket.fd());
    int status = ::connect(socket.fd(), reinterpret_cast<const sockaddr*>(&address), sizeof address);
    if (status != 0 && errno == EINPROGRESS) {
      // Bounded by the deadline, and by a second per attempt so that a lost SYN is retried.
      const auto attempt_deadline = std::min(deadline, Clock::now() + std::chrono::seconds(1));
      if (poll_one(socket.fd(), POLLOUT, attempt_deadline)) {
        int error = 0;
        socklen_t length = sizeof error;
        ::getsockopt(socket.fd(), SOL_SOCKET, SO_ERROR, &error, &length);
        status = error == 0 ? 0 : -1;
        errno = error;
      } else {
        errno = ETIMEDOUT;
      }
    }
    if (status == 0) {
      tune_stream_socket(socket.fd());
      return socket;
    }
    last_error = system_error_text(errno);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(50, milliseconds_until(deadline))));
  }
  return Socket();
}

// Blocking-style reads and writes on a non-blocking socket with a deadline (rendezvous and
// control messages only; the data path is ProcessGroup::transfer). Both return false on
// timeout or when the peer is gone.
bool write_all(int fd, const void* data, size_t bytes, Clock::time_point deadline) {
  const auto* at = static_cast<const uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t sent = ::send(fd, at, bytes, MSG_NOSIGNAL);
    if (sent > 0) {
      at += sent;
      bytes -= size_t(sent);
    } else if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (!poll_one(fd, POLLOUT, deadline)) return false;
    } else {
      return false;
    }
  }
  return true;
}

bool read_all(int fd, void* data, size_t bytes, Clock::time_point deadline) {
  auto* at = static_cast<uint8_t*>(data);
  while (bytes > 0) {
    const ssize_t got = ::recv(fd, at, bytes, 0);
    if (got > 0) {
      at += got;
      bytes -= size_t(got);
    } else if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (!poll_one(fd, POLLIN, deadline)) return false;
    } else {
      return false;
    }
  }
  return true;
}

struct HelloMessage {  // a rank to rank 0, and a rank to its ring successor
  uint32_t magic = kMagic;
  uint32_t version = kProtocolVersion;
  int32_t rank = 0;
  int32_t world_size = 0;
  uint32_t data_port = 0;
  uint32_t reserved = 0;
};

struct TableEntry {  // rank 0's answer: where each rank's data socket listens
  uint32_t ipv4 = 0;  // network byte order; 0 for rank 0: "the master address"
  uint32_t port = 0;
};

// What the ranks agree on before each operation.
enum class OperationKind : uint8_t { all_reduce, reduce_scatter, all_gather, broadcast, barrier };

struct OperationHeader {
  uint32_t magic = kMagic;
  uint8_t kind = 0;
  uint8_t dtype = 0;
  uint8_t reduce = 0;
  uint8_t reserved = 0;
  uint64_t sequence = 0;
  int64_t count = 0;  // elements (reduce_scatter: of the output; all_gather: of the input)
  int32_t root = 0;
  uint32_t reserved2 = 0;
};
static_assert(sizeof(OperationHeader) == 32);

const char* kind_name(OperationKind kind) {
  switch (kind) {
    case OperationKind::all_reduce: return "all_reduce";
    case OperationKind::reduce_scatter: return "reduce_scatter";
    case OperationKind::all_gather: return "all_gather";
    case OperationKind::broadcast: return "broadcast";
    case OperationKind::barrier: return "barrier";
  }
  return "unknown operation";
}

std::string describe(const OperationHeader& header) {
  const auto kind = OperationKind(header.kind);
  if (header.magic != kMagic || header.kind > uint8_t(OperationKind::barrier) ||
      header.dtype > uint8_t(DType::boolean)) {
    return "a corrupt operation header (a protocol mismatch: different lamina versions?)";
  }
  std::string text = kind_name(kind);
  if (kind == OperationKind::all_reduce || kind == OperationKind::reduce_scatter)
    text += str_cat("(", reduce_op_name(ReduceOp(header.reduce)), ")");
  if (kind == OperationKind::broadcast) text += str_cat("(root ", header.root, ")");
  if (kind != OperationKind::barrier)
    text += str_cat(" of ", header.count, " ", dtype_name(DType(header.dtype)), " elements");
  return text + str_cat(" as call #", header.sequence);
}

bool same_call(const OperationHeader& a, const OperationHeader& b) {
  return a.magic == b.magic && a.kind == b.kind && a.dtype == b.dtype && a.reduce == b.reduce &&
         a.sequence == b.sequence && a.count == b.count && a.root == b.root;
}

// target[i] = incoming[i] (op) contribution[i]; target may be contribution.
template <typename T>
void reduce_elements(const T* incoming, const T* contribution, T* target, size_t count, ReduceOp op) {
  if constexpr (std::is_same_v<T, bool>) {
    for (size_t i = 0; i < count; ++i) target[i] = incoming[i] || contribution[i];  // sum and max: or
  } else if constexpr (std::is_integral_v<T>) {
    using Unsigned = std::make_unsigned_t<T>;  // wrap on overflow, as NCCL does, never undefined behaviour
    if (op == ReduceOp::max) {
      for (size_t i = 0; i < count; ++i) target[i] = std::max(incoming[i], contribution[i]);
    } else {
      for (size_t i = 0; i < count; ++i) target[i] = T(Unsigned(Unsigned(incoming[i]) + Unsigned(contribution[i])));
    }
  } else {
    using Compute = compute_t<T>;  // bf16 and f16 add in f32, rounded once here, per hop
    if (op == ReduceOp::max) {
      for (size_t i = 0; i < count; ++i) {
        const Compute a = Compute(incoming[i]), b = Compute(contribution[i]);
        target[i] = T(a > b || a != a ? a : b);  // NaN wins, as in torch.max
      }
    } else {
      for (size_t i = 0; i < count; ++i) target[i] = T(Compute(incoming[i]) + Compute(contribution[i]));
    }
  }
}

void reduce_bytes(DType dtype, ReduceOp op, const uint8_t* incoming, const uint8_t* contribution, uint8_t* target,
                  size_t count) {
  visit_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    reduce_elements(reinterpret_cast<const T*>(incoming), reinterpret_cast<const T*>(contribution),
                    reinterpret_cast<T*>(target), count, op);
  });
}

void divide_in_place(DType dtype, uint8_t* data, size_t count, int divisor) {
  visit_floating(dtype, "process group average", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Compute = compute_t<T>;
    T* values = reinterpret_cast<T*>(data);
    for (size_t i = 0; i < count; ++i) values[i] = T(Compute(values[i]) / Compute(divisor));
  });
}

// An operation's completion, shared by the caller (wait) and the communication thread. The
// error travels as its message and is thrown anew on the waiting thread: an exception object
// shared between threads is freed by whichever drops it last, which thread sanitizers cannot
// follow through the C++ runtime.
class CompletionWork : public Work {
 public:
  void wait() override {
    std::unique_lock lock(mutex_);
    finished_.wait(lock, [&] { return done_; });
    if (failed_) throw Error(error_);
  }
  bool completed() const override {
    std::lock_guard lock(mutex_);
    return done_;
  }
  void finish(bool failed, std::string error) {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
      failed_ = failed;
      error_ = std::move(error);
    }
    finished_.notify_all();
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable finished_;
  bool done_ = false;
  bool failed_ = false;
  std::string error_;
};

// The sockets a rank holds after the rendezvous.
struct Connections {
  Socket to_next;    // we send to rank + 1
  Socket from_prev;  // we receive from rank - 1
  // Rank 0: one per other rank (index = rank; [0] unused). Others: [0] is the link to rank 0.
  std::vector<Socket> control;
};

Connections rendezvous(const DistributedEnv& env, std::chrono::milliseconds timeout) {
  const int world = env.world_size, rank = env.rank;
  const auto deadline = Clock::now() + timeout;
  const std::string master = str_cat(env.master_addr, ":", env.master_port);
  Connections connections;
  connections.control.resize(rank == 0 ? size_t(world) : 1);

  int data_port = 0;
  Socket data_listener = listen_on(0, 4, data_port, str_cat("rank ", rank, "'s data socket"));
  const sockaddr_in master_address = resolve_ipv4(env.master_addr, env.master_port);
  std::vector<TableEntry> table(static_cast<size_t>(world));

  if (rank == 0) {
    int master_port = 0;
    Socket master_listener = listen_on(env.master_port, world, master_port, str_cat("rank 0 (", master, ")"));
    table[0].port = uint32_t(data_port);
    int joined = 1;
    while (joined < world) {
      sockaddr_in peer{};
      Socket socket = accept_until(master_listener.fd(), deadline, &peer);
      if (!socket.open()) {
        std::string missing;
        for (int r = 1; r < world; ++r)
          if (!connections.control[size_t(r)].open()) missing += str_cat(missing.empty() ? "" : ", ", r);
        throw Error(str_cat("process group rendezvous: rank 0 waited ", seconds_text(timeout), " at ", master,
                            " for WORLD_SIZE=", world, " ranks, but rank(s) ", missing,
                            " never connected (did they start, with the same MASTER_ADDR and MASTER_PORT?)"));
      }
      HelloMessage hello;
      if (!read_all(socket.fd(), &hello, sizeof hello, deadline) || hello.magic != kMagic) continue;  // not a rank
      LAMINA_CHECK(hello.version == kProtocolVersion, "process group rendezvous: a rank speaks protocol version ",
                   hello.version, ", rank 0 speaks ", kProtocolVersion, " (different lamina builds?)");
      LAMINA_CHECK(hello.world_size == world, "process group rendezvous: rank ", hello.rank, " says WORLD_SIZE=",
                   hello.world_size, " but rank 0 has WORLD_SIZE=", world);
      LAMINA_CHECK(hello.rank > 0 && hello.rank < world, "process group rendezvous: a peer says it is rank ",
                   hello.rank, ", outside 1..", world - 1);
      LAMINA_CHECK(!connections.control[size_t(hello.rank)].open(),
                   "process group rendezvous: two processes say they are rank ", hello.rank,
                   " (check RANK in the launcher)");
      table[size_t(hello.rank)] = {peer.sin_addr.s_addr, hello.data_port};
      connections.control[size_t(hello.rank)] = std::move(socket);
      ++joined;
    }
    for (int r = 1; r < world; ++r) {
      LAMINA_CHECK(write_all(connections.control[size_t(r)].fd(), table.data(), table.size() * sizeof(TableEntry), deadline),
                   "process group rendezvous: rank ", r, " left before rank 0 could send it the table");
    }
  } else {
    std::string last_error;
    Socket socket = connect_until(master_address, deadline, last_error);
    LAMINA_CHECK(socket.open(), "process group rendezvous: rank ", rank, " could not reach rank 0 at ", master,
                 " within ", seconds_text(timeout), " (last error: ", last_error, "); is rank 0 running?");
    HelloMessage hello;
    hello.rank = rank;
    hello.world_size = world;
    hello.data_port = uint32_t(data_port);
    LAMINA_CHECK(write_all(socket.fd(), &hello, sizeof hello, deadline), "process group rendezvous: rank ", rank,
                 " lost its connection to rank 0 at ", master);
    LAMINA_CHECK(read_all(socket.fd(), table.data(), table.size() * sizeof(TableEntry), deadline),
                 "process group rendezvous: rank ", rank, " reached rank 0 at ", master,
                 " but got no table of ranks within ", seconds_text(timeout), " (not all WORLD_SIZE=", world,
                 " ranks joined, or rank 0 failed)");
    connections.control[0] = std::move(socket);
  }

  // The ring: connect to the successor first (its listener queues us), then accept the predecessor.
  const int next = (rank + 1) % world, prev = (rank + world - 1) % world;
  sockaddr_in next_address = master_address;
  if (next != 0) next_address.sin_addr.s_addr = table[size_t(next)].ipv4;
  next_address.sin_port = htons(uint16_t(table[size_t(next)].port));
  std::string last_error;
  connections.to_next = connect_until(next_address, deadline, last_error);
  LAMINA_CHECK(connections.to_next.open(), "process group rendezvous: rank ", rank, " could not connect to rank ", next,
               " (its ring successor) within ", seconds_text(timeout), ": ", last_error);
  HelloMessage ring_hello;
  ring_hello.rank = rank;
  ring_hello.world_size = world;
  LAMINA_CHECK(write_all(connections.to_next.fd(), &ring_hello, sizeof ring_hello, deadline),
               "process group rendezvous: rank ", next, " closed the ring connection from rank ", rank);
  connections.from_prev = accept_until(data_listener.fd(), deadline);
  HelloMessage from_prev;
  LAMINA_CHECK(connections.from_prev.open() &&
                   read_all(connections.from_prev.fd(), &from_prev, sizeof from_prev, deadline),
               "process group rendezvous: rank ", rank, " got no ring connection from rank ", prev, " within ",
               seconds_text(timeout));
  LAMINA_CHECK(from_prev.magic == kMagic && from_prev.rank == prev, "process group rendezvous: rank ", rank,
               " expected its ring predecessor rank ", prev, " but rank ", from_prev.rank, " connected");
  return connections;
}

// Control messages on the link to rank 0: why a rank failed, or that it is leaving cleanly.
constexpr char kAbortMessage = 'A';
constexpr char kGoodbyeMessage = 'G';

void send_control(int fd, char kind, const std::string& text) {
  std::string message(1, kind);
  const uint32_t length = uint32_t(text.size());
  message.append(reinterpret_cast<const char*>(&length), sizeof length);
  message += text;
  write_all(fd, message.data(), message.size(), Clock::now() + std::chrono::milliseconds(500));  // best effort
}

class ProcessGroup : public Communicator {
 public:
  ProcessGroup(const DistributedEnv& env, std::chrono::milliseconds timeout, size_t piece_bytes, Connections connections)
      : rank_(env.rank),
        world_size_(env.world_size),
        timeout_(timeout),
        piece_bytes_(std::max<size_t>(piece_bytes, 64)),
        connections_(std::move(connections)) {
    control_open_.assign(connections_.control.size(), true);
    if (rank_ == 0 && !control_open_.empty()) control_open_[0] = false;  // rank 0 has no link to itself
    if (world_size_ > 1) thread_ = std::thread([this] { communication_loop(); });
  }

  ~ProcessGroup() override {
    if (thread_.joinable()) {
      {
        std::lock_guard lock(queue_mutex_);
        stopping_ = true;
      }
      queue_changed_.notify_all();
      thread_.join();
    }
    // A clean exit says so on the control link, which is then no longer watched.
    if (broken_message_.empty()) {
      for (size_t i = 0; i < connections_.control.size(); ++i)
        if (control_open_[i]) send_control(connections_.control[i].fd(), kGoodbyeMessage, "");
    }
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string backend() const override { return "cpu"; }

  std::shared_ptr<Work> all_reduce_async(const Tensor& tensor, ReduceOp op) override {
    check_tensor(tensor, "all_reduce", "tensor");
    check_reduce_op(tensor.dtype(), op, "all_reduce");
    return enqueue(make_header(OperationKind::all_reduce, tensor.dtype(), op, tensor.numel(), 0),
                   [this, tensor, op] { run_all_reduce(tensor, op); });
  }

  std::shared_ptr<Work> reduce_scatter_async(const Tensor& input, const Tensor& output, ReduceOp op) override {
    check_tensor(input, "reduce_scatter", "input");
    check_tensor(output, "reduce_scatter", "output");
    LAMINA_CHECK(input.dtype() == output.dtype(), "process group reduce_scatter: input is ", dtype_name(input.dtype()),
                 " but output is ", dtype_name(output.dtype()));
    LAMINA_CHECK(input.numel() == output.numel() * world_size_, "process group reduce_scatter: input has ",
                 input.numel(), " elements, expected world_size (", world_size_, ") x output's ", output.numel());
    check_reduce_op(input.dtype(), op, "reduce_scatter");
    return enqueue(make_header(OperationKind::reduce_scatter, input.dtype(), op, output.numel(), 0),
                   [this, input, output, op] { run_reduce_scatter(input, output, op); });
  }

  std::shared_ptr<Work> all_gather_async(const Tensor& input, const Tensor& output) override {
    check_tensor(input, "all_gather", "input");
    check_tensor(output, "all_gather", "output");
    LAMINA_CHECK(input.dtype() == output.dtype(), "process group all_gather: input is ", dtype_name(input.dtype()),
                 " but output is ", dtype_name(output.dtype()));
    LAMINA_CHECK(output.numel() == input.numel() * world_size_, "process group all_gather: output has ",
                 output.numel(), " elements, expected world_size (", world_size_, ") x input's ", input.numel());
    return enqueue(make_header(OperationKind::all_gather, input.dtype(), ReduceOp::sum, input.numel(), 0),
                   [this, input, output] { run_all_gather(input, output); });
  }

  std::shared_ptr<Work> broadcast_async(const Tensor& tensor, int root) override {
    check_tensor(tensor, "broadcast", "tensor");
    LAMINA_CHECK(root >= 0 && root < world_size_, "process group broadcast: root ", root, " is not a rank (world size ",
                 world_size_, ")");
    return enqueue(make_header(OperationKind::broadcast, tensor.dtype(), ReduceOp::sum, tensor.numel(), root),
                   [this, tensor, root] { run_broadcast(tensor, root); });
  }

  void barrier() override {
    enqueue(make_header(OperationKind::barrier, DType::i32, ReduceOp::sum, 1, 0), [this] {
      const Tensor token = Tensor::from_vector<int32_t>({1}, {1});
      run_all_reduce(token, ReduceOp::sum);
    })->wait();
  }

  CommunicationStats stats() const override {
    std::lock_guard lock(stats_mutex_);
    return stats_;
  }

 private:
  struct QueuedOperation {
    OperationHeader header;
    std::function<void()> body;
    std::shared_ptr<CompletionWork> work;
    Clock::time_point issued;
  };

  // ---- issuing (caller's thread)

  void check_tensor(const Tensor& tensor, const char* op, const char* argument) const {
    check_defined(tensor, op, argument);
    LAMINA_CHECK(tensor.device().is_cpu(), "process group ", op, ": ", argument, " is on ", tensor.device().str(),
                 "; the CPU process group moves host memory (use the nccl backend for GPU tensors)");
    LAMINA_CHECK(tensor.is_contiguous(), "process group ", op, ": ", argument, " (shape ", tensor.shape(),
                 ") is not contiguous");
  }

  static void check_reduce_op(DType dtype, ReduceOp op, const char* name) {
    LAMINA_CHECK(op != ReduceOp::average || is_floating(dtype), "process group ", name, ": average of ",
                 dtype_name(dtype), " is refused (integers and bool cannot hold it): use sum and divide");
  }

  OperationHeader make_header(OperationKind kind, DType dtype, ReduceOp op, int64_t count, int root) {
    OperationHeader header;
    header.kind = uint8_t(kind);
    header.dtype = uint8_t(dtype);
    header.reduce = uint8_t(op);
    header.count = count;
    header.root = root;
    return header;  // the sequence number is given when queued
  }

  std::shared_ptr<Work> enqueue(OperationHeader header, std::function<void()> body) {
    auto work = std::make_shared<CompletionWork>();
    const auto issued = Clock::now();
    if (world_size_ == 1) {  // nothing to wait for: run it here, errors thrown at once
      body();
      record_completion(issued);
      work->finish(false, "");
      return work;
    }
    {
      std::lock_guard lock(queue_mutex_);
      if (!broken_message_.empty()) throw Error(broken_text());
      header.sequence = next_sequence_++;
      queue_.push_back({header, std::move(body), work, issued});
    }
    queue_changed_.notify_all();
    return work;
  }

  std::string broken_text() const {
    return str_cat("process group (rank ", rank_, ") is unusable after an earlier error: ", broken_message_);
  }

  void record_completion(Clock::time_point issued) {
    std::lock_guard lock(stats_mutex_);
    stats_.operations += 1;
    stats_.seconds_in_flight += std::chrono::duration<double>(Clock::now() - issued).count();
  }

  // ---- the communication thread

  void communication_loop() {
    while (true) {
      QueuedOperation operation;
      {
        std::unique_lock lock(queue_mutex_);
        queue_changed_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, and everything issued has run
        operation = std::move(queue_.front());
        queue_.pop_front();
      }
      std::string error;
      bool failed = false;
      {
        std::lock_guard lock(queue_mutex_);
        if (!broken_message_.empty()) {
          failed = true;
          error = broken_text();
        }
      }
      if (!failed) {
        try {
          current_ = OperationKind(operation.header.kind);
          agree_on(operation.header);
          operation.body();
        } catch (const std::exception& failure) {
          failed = true;
          error = failure.what();
        } catch (...) {
          failed = true;
          error = "an exception that is not a std::exception";
        }
        if (failed) {
          std::lock_guard lock(queue_mutex_);
          broken_message_ = error;
        }
      }
      record_completion(operation.issued);
      operation.work->finish(failed, std::move(error));
    }
  }

  int ring_index(int value) const { return ((value % world_size_) + world_size_) % world_size_; }
  int next_rank() const { return ring_index(rank_ + 1); }
  int prev_rank() const { return ring_index(rank_ - 1); }

  // Every rank's header around the ring (an all-gather of 32 bytes each): every rank sees every
  // call and all fail alike, naming the first rank that differs from rank 0.
  void agree_on(const OperationHeader& mine) {
    std::vector<OperationHeader> headers(static_cast<size_t>(world_size_));
    headers[size_t(rank_)] = mine;
    for (int step = 0; step < world_size_ - 1; ++step) {
      const int send_index = ring_index(rank_ - step), receive_index = ring_index(rank_ - step - 1);
      transfer({reinterpret_cast<const uint8_t*>(&headers[size_t(send_index)]), sizeof(OperationHeader)},
               {reinterpret_cast<uint8_t*>(&headers[size_t(receive_index)]), sizeof(OperationHeader), nullptr});
    }
    for (int r = 1; r < world_size_; ++r) {
      if (!same_call(headers[0], headers[size_t(r)])) {
        throw Error(str_cat("process group: the ranks called different operations: rank 0 called ",
                            describe(headers[0]), ", rank ", r, " called ", describe(headers[size_t(r)]),
                            " (every rank must issue the same collectives in the same order, with the same "
                            "shapes and dtypes)"));
      }
    }
  }

  struct Outgoing {
    const uint8_t* data = nullptr;
    size_t bytes = 0;
  };
  struct Incoming {
    uint8_t* data = nullptr;  // the destination, or the staging buffer when on_piece is set
    size_t bytes = 0;
    // Called with (offset, length) in the stream as each piece lands in the staging buffer.
    std::function<void(size_t, size_t)> on_piece;
  };

  uint8_t* staging(size_t bytes) {
    if (staging_.size() < bytes) staging_.resize(bytes);
    return staging_.data();
  }

  // Sends `out` to the successor while receiving `in` from the predecessor. Fails (see fail())
  // when a peer closes, when rank 0 reports another rank's failure, or when no byte moves for
  // the timeout.
  void transfer(const Outgoing& out, const Incoming& in) {
    size_t sent = 0, received = 0, piece_filled = 0;
    auto last_progress = Clock::now();
    std::vector<pollfd> fds;
    while (sent < out.bytes || received < in.bytes) {
      fds.clear();
      int send_slot = -1, receive_slot = -1;
      if (sent < out.bytes) {
        send_slot = int(fds.size());
        fds.push_back({connections_.to_next.fd(), POLLOUT, 0});
      }
      if (received < in.bytes) {
        receive_slot = int(fds.size());
        fds.push_back({connections_.from_prev.fd(), POLLIN, 0});
      }
      const size_t first_control = fds.size();
      for (size_t i = 0; i < connections_.control.size(); ++i)
        if (control_open_[i]) fds.push_back({connections_.control[i].fd(), POLLIN, 0});

      const auto waited = Clock::now() - last_progress;
      if (waited >= timeout_) {
        fail(receive_slot >= 0
                 ? str_cat("no data from rank ", prev_rank(), " for ", seconds_text(timeout_), " during ",
                           kind_name(current_), " (LAMINA_DIST_TIMEOUT_S): is it stuck, or still busy before this call?")
                 : str_cat("rank ", next_rank(), " took no data for ", seconds_text(timeout_), " during ",
                           kind_name(current_), " (LAMINA_DIST_TIMEOUT_S): is it stuck?"));
      }
      const int wait_ms = int(std::chrono::duration_cast<std::chrono::milliseconds>(timeout_ - waited).count()) + 1;
      const int ready = ::poll(fds.data(), nfds_t(fds.size()), wait_ms);
      if (ready < 0) {
        LAMINA_CHECK(errno == EINTR, "process group: poll failed: ", system_error_text(errno));
        continue;
      }
      if (ready == 0) continue;

      for (size_t slot = first_control, i = 0; i < connections_.control.size(); ++i) {
        if (!control_open_[i]) continue;
        if (fds[slot++].revents != 0) handle_control(int(i));
      }
      if (send_slot >= 0 && fds[size_t(send_slot)].revents != 0) {
        const ssize_t count = ::send(connections_.to_next.fd(), out.data + sent, std::min(out.bytes - sent, kMaxSendCall),
                                     MSG_NOSIGNAL | MSG_DONTWAIT);
        if (count > 0) {
          sent += size_t(count);
          last_progress = Clock::now();
          std::lock_guard lock(stats_mutex_);
          stats_.bytes_sent += count;
        } else if (errno == EPIPE || errno == ECONNRESET) {
          peer_closed(next_rank());
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          fail(str_cat("sending to rank ", next_rank(), " during ", kind_name(current_),
                       " failed: ", system_error_text(errno)));
        }
      }
      if (receive_slot >= 0 && fds[size_t(receive_slot)].revents != 0) {
        uint8_t* destination;
        size_t want;
        size_t piece_length = 0;
        if (in.on_piece) {
          const size_t piece_start = received - piece_filled;
          piece_length = std::min(piece_bytes_, in.bytes - piece_start);
          destination = in.data + piece_filled;
          want = piece_length - piece_filled;
        } else {
          destination = in.data + received;
          want = std::min(in.bytes - received, kMaxSendCall);
        }
        const ssize_t count = ::recv(connections_.from_prev.fd(), destination, want, MSG_DONTWAIT);
        if (count > 0) {
          received += size_t(count);
          last_progress = Clock::now();
          if (in.on_piece) {
            piece_filled += size_t(count);
            if (piece_filled == piece_length) {
              in.on_piece(received - piece_length, piece_length);
              piece_filled = 0;
            }
          }
        } else if (count == 0 || errno == ECONNRESET) {
          peer_closed(prev_rank());
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          fail(str_cat("receiving from rank ", prev_rank(), " during ", kind_name(current_),
                       " failed: ", system_error_text(errno)));
        }
      }
    }
  }

  // A control message is waiting on link i: a peer's failure (which becomes this rank's error), its
  // clean exit, or its link closing.
  void handle_control(int index) {
    const int fd = connections_.control[size_t(index)].fd();
    const int peer = rank_ == 0 ? index : 0;
    char kind = 0;
    uint32_t length = 0;
    const auto deadline = Clock::now() + std::chrono::milliseconds(1000);
    if (!read_all(fd, &kind, 1, deadline) || !read_all(fd, &length, sizeof length, deadline)) {
      // Closed without a word: the peer crashed, or failed (a mismatch every rank saw) and left.
      // Not an error by itself: its last bytes may still be on their way to this rank, which
      // then finishes the operation; if they are not, the data sockets say so.
      control_open_[size_t(index)] = false;
      return;
    }
    std::string text(std::min<uint32_t>(length, 1 << 16), '\0');
    read_all(fd, text.data(), text.size(), deadline);
    if (kind == kGoodbyeMessage) {
      control_open_[size_t(index)] = false;  // left cleanly: its closed link is no news
      return;
    }
    // Rank 0 passes the failure on to everyone else; the others fail with rank 0's word.
    fail(text.empty() ? str_cat("rank ", peer, " failed during ", kind_name(current_)) : text, index);
  }

  // The neighbour `peer` closed its socket. The control links may say more (the neighbour
  // reported the failure that made it exit, or rank 0 passed one on): wait a moment for them
  // before blaming the neighbour.
  [[noreturn]] void peer_closed(int peer) {
    const std::string own = str_cat("rank ", peer, " closed its connection during ", kind_name(current_), " (did it exit?)");
    const auto grace = Clock::now() + std::min<std::chrono::milliseconds>(timeout_, std::chrono::milliseconds(200));
    std::vector<pollfd> fds;
    std::vector<int> indices;
    for (size_t i = 0; i < connections_.control.size(); ++i) {
      if (control_open_[i]) {
        fds.push_back({connections_.control[i].fd(), POLLIN, 0});
        indices.push_back(int(i));
      }
    }
    if (!fds.empty() && ::poll(fds.data(), nfds_t(fds.size()), milliseconds_until(grace)) > 0) {
      for (size_t i = 0; i < fds.size(); ++i)
        if (fds[i].revents != 0) handle_control(indices[i]);  // throws with the better message
    }
    fail(own);
  }

  // Tells the others (through rank 0) and throws. `source` is the control link the news came
  // from, which need not hear it back.
  [[noreturn]] void fail(const std::string& message, int source = -1) {
    for (size_t i = 0; i < connections_.control.size(); ++i) {
      if (control_open_[i] && int(i) != source) send_control(connections_.control[i].fd(), kAbortMessage, message);
    }
    throw Error(message);
  }

  // ---- the algorithms (communication thread; world size > 1)

  struct Segments {  // `count` elements in world_size nearly equal parts
    int64_t base, extra;
    int64_t offset(int index) const { return index * base + std::min<int64_t>(index, extra); }
    int64_t length(int index) const { return base + (index < extra ? 1 : 0); }
  };

  // Ring reduce-scatter: after world_size - 1 steps rank r holds the reduction of part r. At each
  // step a rank sends the part it reduced last and reduces the part arriving from its
  // predecessor into `target(part, step)` with its own contribution.
  // sent_part(part, step): where the part sent at `step` is; target(part, step): where the part
  // received at `step` is reduced to; contribution: this rank's own input, laid out by part_offset.
  void ring_reduce_scatter(DType dtype, ReduceOp op, const uint8_t* contribution,
                           const std::function<const uint8_t*(int, int)>& sent_part,
                           const std::function<uint8_t*(int, int)>& target,
                           const std::function<int64_t(int)>& part_offset,
                           const std::function<int64_t(int)>& part_length) {
    const size_t element = dtype_size(dtype);
    uint8_t* buffer = staging(piece_bytes_);
    for (int step = 0; step < world_size_ - 1; ++step) {
      const int send_part = ring_index(rank_ - step - 1), receive_part = ring_index(rank_ - step - 2);
      const uint8_t* own = contribution + size_t(part_offset(receive_part)) * element;
      uint8_t* destination = target(receive_part, step);
      transfer({sent_part(send_part, step), size_t(part_length(send_part)) * element},
               {buffer, size_t(part_length(receive_part)) * element, [&](size_t offset, size_t length) {
                  reduce_bytes(dtype, op, buffer, own + offset, destination + offset, length / element);
                }});
    }
  }

  // Ring all-gather: rank r starts with part r and passes on what it last received.
  void ring_all_gather(uint8_t* data, size_t element, const std::function<int64_t(int)>& part_offset,
                       const std::function<int64_t(int)>& part_length) {
    for (int step = 0; step < world_size_ - 1; ++step) {
      const int send_part = ring_index(rank_ - step), receive_part = ring_index(rank_ - step - 1);
      transfer({data + size_t(part_offset(send_part)) * element, size_t(part_length(send_part)) * element},
               {data + size_t(part_offset(receive_part)) * element, size_t(part_length(receive_part)) * element, nullptr});
    }
  }

  void run_all_reduce(const Tensor& tensor, ReduceOp op) {
    auto* data = static_cast<uint8_t*>(tensor.raw_data());
    const size_t element = tensor.element_size();
    if (world_size_ > 1 && tensor.numel() > 0) {
      const Segments parts{tensor.numel() / world_size_, tensor.numel() % world_size_};
      const auto offset = [&](int part) { return parts.offset(part); };
      const auto length = [&](int part) { return parts.length(part); };
      // In place: the part sent at a step is the one reduced at the step before.
      ring_reduce_scatter(
          tensor.dtype(), op, data, [&](int part, int) { return data + size_t(parts.offset(part)) * element; },
          [&](int part, int) { return data + size_t(parts.offset(part)) * element; }, offset, length);
      ring_all_gather(data, element, offset, length);
    }
    if (op == ReduceOp::average) divide_in_place(tensor.dtype(), data, size_t(tensor.numel()), world_size_);
  }

  void run_reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) {
    const auto* in = static_cast<const uint8_t*>(input.raw_data());
    auto* out = static_cast<uint8_t*>(output.raw_data());
    const size_t element = input.element_size();
    const int64_t chunk = output.numel();
    const size_t chunk_bytes = size_t(chunk) * element;
    if (world_size_ == 1) {
      if (out != in) std::memmove(out, in, chunk_bytes);
    } else if (chunk > 0) {
      // The input stays as given: partial sums go to two part-sized buffers in turn (the one
      // being sent and the one being filled), the last step's straight into the output.
      std::vector<uint8_t> partial[2];
      if (world_size_ > 2) partial[0].resize(chunk_bytes), partial[1].resize(chunk_bytes);
      const int last_step = world_size_ - 2;
      ring_reduce_scatter(
          input.dtype(), op, in,
          [&](int part, int step) -> const uint8_t* {
            return step == 0 ? in + size_t(part) * chunk_bytes : partial[(step - 1) % 2].data();
          },
          [&](int, int step) { return step == last_step ? out : partial[step % 2].data(); },
          [&](int part) { return int64_t(part) * chunk; }, [&](int) { return chunk; });
    }
    if (op == ReduceOp::average) divide_in_place(output.dtype(), out, size_t(chunk), world_size_);
  }

  void run_all_gather(const Tensor& input, const Tensor& output) {
    const auto* in = static_cast<const uint8_t*>(input.raw_data());
    auto* out = static_cast<uint8_t*>(output.raw_data());
    const size_t element = input.element_size();
    const int64_t chunk = input.numel();
    uint8_t* own = out + size_t(rank_) * size_t(chunk) * element;
    if (own != in) std::memmove(own, in, size_t(chunk) * element);
    if (world_size_ > 1 && chunk > 0)
      ring_all_gather(out, element, [&](int part) { return int64_t(part) * chunk; }, [&](int) { return chunk; });
  }

  // Pipelined along the ring from the root: each rank forwards piece k while receiving piece k + 1.
  void run_broadcast(const Tensor& tensor, int root) {
    if (world_size_ == 1 || tensor.numel() == 0) return;
    auto* data = static_cast<uint8_t*>(tensor.raw_data());
    const size_t bytes = tensor.nbytes();
    const int position = ring_index(rank_ - root);
    if (position == 0) {
      transfer({data, bytes}, {});
      return;
    }
    if (position == world_size_ - 1) {
      transfer({}, {data, bytes, nullptr});
      return;
    }
    const size_t pieces = (bytes + piece_bytes_ - 1) / piece_bytes_;
    const auto piece = [&](size_t index) {
      const size_t start = index * piece_bytes_;
      return std::pair<size_t, size_t>(start, std::min(piece_bytes_, bytes - start));
    };
    for (size_t index = 0; index <= pieces; ++index) {
      Outgoing out;
      Incoming in;
      if (index > 0) out = {data + piece(index - 1).first, piece(index - 1).second};
      if (index < pieces) in = {data + piece(index).first, piece(index).second, nullptr};
      transfer(out, in);
    }
  }

  const int rank_;
  const int world_size_;
  const std::chrono::milliseconds timeout_;
  const size_t piece_bytes_;

  // The communication thread's own state.
  Connections connections_;
  std::vector<bool> control_open_;
  std::vector<uint8_t> staging_;
  OperationKind current_ = OperationKind::all_reduce;

  std::mutex queue_mutex_;
  std::condition_variable queue_changed_;
  std::deque<QueuedOperation> queue_;
  uint64_t next_sequence_ = 0;
  bool stopping_ = false;
  std::string broken_message_;  // the first error; the group refuses everything after it

  mutable std::mutex stats_mutex_;
  CommunicationStats stats_;

  std::thread thread_;  // last: starts after everything it reads exists
};

}  // namespace

std::unique_ptr<Communicator> connect_process_group(const DistributedEnv& env, std::chrono::milliseconds timeout,
                                                    size_t piece_bytes) {
  LAMINA_CHECK(env.world_size >= 1 && env.rank >= 0 && env.rank < env.world_size, "process group: rank ", env.rank,
               " is not below world size ", env.world_size);
  LAMINA_CHECK(timeout.count() > 0, "process group: the timeout must be positive");
  // Pieces hold whole elements of every dtype (at most 8 bytes).
  piece_bytes = std::max<size_t>(64, piece_bytes / 8 * 8);
  Connections connections;
  if (env.world_size > 1) connections = rendezvous(env, timeout);
  return std::make_unique<ProcessGroup>(env, timeout, piece_bytes, std::move(connections));
}

}  // namespace lamina::dist
