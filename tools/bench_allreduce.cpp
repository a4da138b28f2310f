// `lamina bench allreduce`: the CPU process group's all_reduce (train/distributed/process_group.h)
// by message size, between --ranks local processes that this command starts itself.
//
// The bench re-executes itself (/proc/self/exe) once per rank with RANK, WORLD_SIZE,
// MASTER_ADDR=127.0.0.1 and a free MASTER_PORT in the environment, and LAMINA_BENCH_ALLREDUCE_RANK
// marking the child; the ranks rendezvous exactly as a training run's do. Rank 0 prints one
// JSON line per size:
//   seconds      per all_reduce: the slowest rank's mean over the last timed round (rounds grow
//                until one lasts --seconds)
//   algbw_gbps   bytes / seconds: how fast a tensor of that size is all-reduced
//   busbw_gbps   2(n-1)/n * bytes / seconds: what each rank's link carries, comparable across
//                world sizes (the NCCL tests' convention); a ring cannot beat the copy rate
//   memcpy_gbps  a single-threaded memcpy of the same size on rank 0 in the same run (bytes
//                copied per second): every byte crosses the kernel twice on loopback (send and
//                receive copies) and is added once, so busbw is expected well below it
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tensor/tensor.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"
#include "train/distributed/process_group.h"
#include "train/distributed/rendezvous.h"

extern char** environ;

namespace lamina::cli {
namespace {

constexpr const char* kChildVariable = "LAMINA_BENCH_ALLREDUCE_RANK";

// "4K", "1M", "64M", "1G" (binary multiples) or plain bytes.
int64_t parse_size(const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  const std::string suffix = text.substr(digits);
  int64_t scale = 1;
  if (suffix == "K" || suffix == "k") scale = int64_t(1) << 10;
  else if (suffix == "M" || suffix == "m") scale = int64_t(1) << 20;
  else if (suffix == "G" || suffix == "g") scale = int64_t(1) << 30;
  else if (!suffix.empty()) digits = 0;
  if (digits == 0 || digits > 12) {
    throw UsageError("lamina bench allreduce: --sizes: '" + text + "' is not a size (bytes, or a number with K, M or G)",
                     "run 'lamina bench allreduce --help'");
  }
  const int64_t bytes = std::stoll(text.substr(0, digits)) * scale;
  if (bytes < 1 || bytes > (int64_t(4) << 30)) {
    throw UsageError("lamina bench allreduce: --sizes: '" + text + "' is outside 1 byte to 4G",
                     "run 'lamina bench allreduce --help'");
  }
  return bytes;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  LAMINA_CHECK(fd >= 0, "lamina bench allreduce: socket() failed: ", std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  LAMINA_CHECK(bound, "lamina bench allreduce: cannot find a free port: ", std::strerror(errno));
  return ntohs(address.sin_port);
}

double slowest_rank(dist::Communicator& group, double seconds) {
  Tensor value = Tensor::from_vector<double>({seconds}, {1});
  group.all_reduce(value, dist::ReduceOp::max);
  return value.item<double>();
}

double memcpy_gbps(int64_t bytes, double min_seconds) {
  std::vector<uint8_t> source(size_t(bytes), 1), destination(size_t(bytes), 0);
  const Timing timing = measure([&] { std::memcpy(destination.data(), source.data(), size_t(bytes)); }, min_seconds);
  return double(bytes) / timing.median_seconds / 1e9;
}

// One rank: every size, in order, the same number of iterations on every rank.
int run_rank(const std::vector<int64_t>& sizes, DType dtype, double min_seconds) {
  const dist::DistributedEnv env = dist::distributed_env_from_environment();
  std::unique_ptr<dist::Communicator> group = dist::connect_process_group(env, dist::distributed_timeout());
  const int world = group->world_size();
  for (int64_t bytes : sizes) {
    const int64_t elements = std::max<int64_t>(1, bytes / int64_t(dtype_size(dtype)));
    const int64_t message_bytes = elements * int64_t(dtype_size(dtype));
    Tensor tensor = Tensor::from_vector<float>(std::vector<float>(size_t(elements), 1.0f), {elements}, dtype);
    group->all_reduce(tensor);  // warm-up: buffers, the kernel's socket memory
    // Timed rounds of growing length until one lasts --seconds; every rank sees the slowest
    // rank's time, so all make the same decisions and call all_reduce equally often.
    int64_t iterations = 1;
    double seconds = 0;
    while (true) {
      group->barrier();
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < iterations; ++i) group->all_reduce(tensor);
      const double elapsed =
          slowest_rank(*group, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      seconds = elapsed / double(iterations);
      if (elapsed >= min_seconds || iterations >= 1'000'000) break;
      const double growth = std::clamp(1.2 * min_seconds / std::max(elapsed, 1e-9), 2.0, 100.0);
      iterations = std::min<int64_t>(1'000'000, int64_t(std::ceil(double(iterations) * growth)));
    }
    if (group->rank() == 0) {
      JsonLine line;
      line.add("bench", "allreduce")
          .add("ranks", world)
          .add("dtype", dtype_name(dtype))
          .add("bytes", message_bytes)
          .add("iterations", iterations)
          .add("seconds", seconds)
          .add("algbw_gbps", double(message_bytes) / seconds / 1e9)
          .add("busbw_gbps", 2.0 * (world - 1) / world * double(message_bytes) / seconds / 1e9)
          .add("memcpy_gbps", memcpy_gbps(message_bytes, std::min(min_seconds, 0.2)));
      line.print();
    }
  }
  return 0;
}

// Starts the ranks as children of this process and waits for all of them.
int run_ranks(int ranks, const std::vector<std::string>& args) {
  const int port = free_port();
  std::vector<pid_t> children;
  int failed = 0;
  for (int rank = 0; rank < ranks; ++rank) {
    std::vector<std::string> environment;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string text = *entry;
      const std::string name = text.substr(0, text.find('='));
      if (name != "RANK" && name != "WORLD_SIZE" && name != "LOCAL_RANK" && name != "LOCAL_WORLD_SIZE" &&
          name != "MASTER_ADDR" && name != "MASTER_PORT" && name != kChildVariable)
        environment.push_back(text);
    }
    for (const std::string& setting :
         {"RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(ranks), "LOCAL_RANK=" + std::to_string(rank),
          "LOCAL_WORLD_SIZE=" + std::to_string(ranks), std::string("MASTER_ADDR=127.0.0.1"),
          "MASTER_PORT=" + std::to_string(port), std::string(kChildVariable) + "=1"})
      environment.push_back(setting);
    std::vector<std::string> arguments = {"lamina", "bench", "allreduce"};
    arguments.insert(arguments.end(), args.begin(), args.end());
    std::vector<char*> argv, envp;
    for (std::string& text : arguments) argv.push_back(text.data());
    argv.push_back(nullptr);
    for (std::string& text : environment) envp.push_back(text.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    const int status = posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), envp.data());
    if (status != 0) {
      std::fprintf(stderr, "lamina bench allreduce: cannot start rank %d: %s\n", rank, std::strerror(status));
      failed = 1;
      break;
    }
    children.push_back(pid);
  }
  // A rank that fails makes the others fail within the timeout; the first failure stops the rest.
  size_t remaining = children.size();
  std::vector<bool> done(children.size(), false);
  while (remaining > 0) {
    int status = 0;
    const pid_t pid = ::wait(&status);
    if (pid < 0) break;
    const auto found = std::find(children.begin(), children.end(), pid);
    if (found == children.end()) continue;
    done[size_t(found - children.begin())] = true;
    --remaining;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && !failed) {
      failed = 1;
      std::fprintf(stderr, "lamina bench allreduce: rank %d failed (%s %d); stopping the others\n",
                   int(found - children.begin()), WIFEXITED(status) ? "exit status" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      for (size_t i = 0; i < children.size(); ++i)
        if (!done[i]) ::kill(children[i], SIGTERM);
    }
  }
  return failed;
}

}  // namespace

int run_bench_allreduce(const Arguments& args) {
  FlagParser flags("lamina bench allreduce",
                   "all_reduce of the CPU process group between local rank processes (started by this command): "
                   "seconds, algorithm and bus bandwidth per message size, against a memcpy of the same size");
  flags.add_option("ranks", "N", "how many rank processes to start (2 to 64)", "2");
  flags.add_option("sizes", "LIST", "message sizes in bytes, comma-separated, K/M/G binary multiples",
                   "4K,64K,1M,16M,64M");
  flags.add_option("dtype", "NAME", "element type: f32, f64, bf16, f16, i32, i64, u8", "f32");
  flags.add_option("seconds", "S", "how long the timed round of each size lasts at least", "0.5");
  if (!flags.parse(args)) return 0;
  const int ranks = int(flags.int_value("ranks", 2, 2, 64));
  std::vector<int64_t> sizes;
  for (const std::string& item : flags.list_value("sizes")) sizes.push_back(parse_size(item));
  if (sizes.empty()) sizes = {4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20};
  const std::string dtype_text = flags.value("dtype").value_or("f32");
  DType dtype;
  try {
    dtype = dtype_from_name(dtype_text);
  } catch (const Error&) {
    throw UsageError("lamina bench allreduce: --dtype '" + dtype_text + "' is not a dtype",
                     "run 'lamina bench allreduce --help'");
  }
  if (dtype == DType::boolean) {
    throw UsageError("lamina bench allreduce: --dtype bool is not measured (its sum is a logical or)",
                     "run 'lamina bench allreduce --help'");
  }
  const double seconds = flags.double_value("seconds", 0.5, 0.001, 600);
  if (const char* child = std::getenv(kChildVariable); child != nullptr && *child != '\0')
    return run_rank(sizes, dtype, seconds);
  return run_ranks(ranks, args);
}

}  // namespace lamina::cli
