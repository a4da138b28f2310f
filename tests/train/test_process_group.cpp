// The CPU process group (train/distributed/process_group.h) with real processes, and the
// rendezvous environment parsing (train/distributed/rendezvous.h).
//
// How the ranks start: each test posix_spawns this test binary again, once per rank, running
// only the hidden case "process group rank (spawned by the tests)" with RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT and the scenario in the environment. Why not fork(): by the time a
// case runs, earlier cases have started the kernels' thread pool (and the allocator its
// state); a forked child keeps only the forking thread, so a lock another thread held at the
// fork stays locked forever in the child. A fresh exec has none of that, and it goes through
// the real path a launcher uses (distributed_env_from_environment).
//
// Every collective is checked against a single-process computation of the same values: each
// rank can make every rank's input (a function of rank and index), so it computes the expected
// result itself. The values are small integers, exact in every dtype, so that the ring's order
// of additions cannot matter and any misplaced element shows as an exact mismatch.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "free_port.h"
#include "helpers.h"
#include "scratch_dir.h"
#include "train/distributed/process_group.h"
#include "train/distributed/rendezvous.h"

extern char** environ;

using namespace lamina;
using namespace lamina::dist;
using lamina::testing::free_port;

namespace {

constexpr const char* kRankCase = "process group rank (spawned by the tests)";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The ranks of one scenario, started as processes; their output goes to <dir>/rank<r>.log.
struct SpawnedRun {
  testing::ScratchDir dir;
  int world_size;
  std::map<int, pid_t> pids;       // rank -> process
  std::map<int, int> exit_status;  // rank -> exit code (or 128 + signal)

  SpawnedRun(const std::string& scenario, int world, double timeout_seconds, const std::vector<int>& ranks)
      : dir("process-group-" + scenario + "-" + std::to_string(world)), world_size(world) {
    const int port = free_port();
    for (int rank : ranks) {
      std::vector<std::string> environment;
      const std::vector<std::string> ours = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                             "MASTER_PORT", "LAMINA_DIST_TIMEOUT_S", "LAMINA_PG_TEST_SCENARIO",
                                             "LAMINA_PG_TEST_DIR"};
      for (char** entry = environ; *entry != nullptr; ++entry) {
        const std::string text = *entry;
        const std::string name = text.substr(0, text.find('='));
        if (std::find(ours.begin(), ours.end(), name) == ours.end()) environment.push_back(text);
      }
      environment.push_back("RANK=" + std::to_string(rank));
      environment.push_back("WORLD_SIZE=" + std::to_string(world));
      environment.push_back("LOCAL_RANK=" + std::to_string(rank));
      environment.push_back("LOCAL_WORLD_SIZE=" + std::to_string(world));
      environment.push_back("MASTER_ADDR=127.0.0.1");
      environment.push_back("MASTER_PORT=" + std::to_string(port));
      environment.push_back("LAMINA_DIST_TIMEOUT_S=" + std::to_string(timeout_seconds));
      environment.push_back("LAMINA_PG_TEST_SCENARIO=" + scenario);
      environment.push_back("LAMINA_PG_TEST_DIR=" + dir.path.string());
      std::vector<char*> env_pointers;
      for (std::string& text : environment) env_pointers.push_back(text.data());
      env_pointers.push_back(nullptr);

      std::string program = "/proc/self/exe", filter = std::string("--test-case=") + kRankCase,
                  no_skip = "--no-skip=true";
      char* argv[] = {program.data(), filter.data(), no_skip.data(), nullptr};
      posix_spawn_file_actions_t actions;
      posix_spawn_file_actions_init(&actions);
      const std::string log = dir / ("rank" + std::to_string(rank) + ".log");
      posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&actions, 1, 2);
      pid_t pid = 0;
      const int status = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv, env_pointers.data());
      posix_spawn_file_actions_destroy(&actions);
      REQUIRE_MESSAGE(status == 0, "posix_spawn failed: ", std::strerror(status));
      pids[rank] = pid;
    }
  }

  ~SpawnedRun() {  // never leave a rank behind, whatever failed
    for (auto& [rank, pid] : pids) {
      if (exit_status.count(rank) == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  }

  // Waits for the given ranks (all when empty) up to `limit`; a rank still running then is killed
  // and fails the test.
  void wait(std::chrono::seconds limit, std::vector<int> ranks = {}) {
    if (ranks.empty())
      for (auto& [rank, pid] : pids) ranks.push_back(rank);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (int rank : ranks) {
      while (exit_status.count(rank) == 0) {
        int status = 0;
        const pid_t done = ::waitpid(pids[rank], &status, WNOHANG);
        if (done == pids[rank]) {
          exit_status[rank] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        } else if (std::chrono::steady_clock::now() > deadline) {
          ::kill(pids[rank], SIGKILL);
          ::waitpid(pids[rank], nullptr, 0);
          exit_status[rank] = 128 + SIGKILL;
          FAIL_CHECK("rank ", rank, " still ran after ", limit.count(), " s; its log:\n", log(rank));
        } else {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
    }
  }

  void kill_rank(int rank) {
    ::kill(pids[rank], SIGKILL);
    ::waitpid(pids[rank], nullptr, 0);
    exit_status[rank] = 128 + SIGKILL;
  }

  std::string log(int rank) const { return read_text(dir / ("rank" + std::to_string(rank) + ".log")); }
  std::string result(int rank) const { return read_text(dir / ("rank" + std::to_string(rank) + ".result")); }

  void expect_exit(int rank, int code) {
    CHECK_MESSAGE(exit_status[rank] == code, "rank ", rank, " of ", world_size, " exited with ", exit_status[rank],
                  " (expected ", code, "); its log:\n", log(rank));
  }
};

// ---- what a rank computes (in the spawned process)

// Rank `rank`'s element i, the same on every rank that computes it.
double input_value(DType dtype, int rank, int64_t i) {
  if (dtype == DType::boolean) return (i * 7 + rank * 3) % 5 == 0 ? 1 : 0;
  const double value = double((i * 31 + rank * 17 + 5) % 23);
  return dtype == DType::u8 ? value : value - 11;
}

Tensor rank_input(DType dtype, int rank, int64_t count) {
  std::vector<double> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) values[size_t(i)] = input_value(dtype, rank, i);
  return Tensor::from_vector<double>(values, {count}, dtype);
}

// The reduction over ranks of elements [start, start + count), as one process computes it
// (average: the sum in the dtype, divided once in the dtype's compute type, which is what
// "divides once at the end" means).
Tensor expected_reduction(DType dtype, ReduceOp op, int world, int64_t count, int64_t start = 0) {
  std::vector<double> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    double result = op == ReduceOp::max ? -1e300 : 0;
    for (int r = 0; r < world; ++r) {
      const double value = input_value(dtype, r, start + i);
      result = op == ReduceOp::max ? std::max(result, value) : result + value;
    }
    if (dtype == DType::boolean) result = result != 0 ? 1 : 0;
    values[size_t(i)] = result;
  }
  Tensor expected = Tensor::from_vector<double>(values, {count}, dtype);
  if (op == ReduceOp::average) {
    visit_floating(dtype, "expected average", [&](auto tag) {
      using T = typename decltype(tag)::type;
      T* data = expected.data<T>();
      for (int64_t i = 0; i < count; ++i) data[i] = T(compute_t<T>(data[i]) / compute_t<T>(world));
    });
  }
  return expected;
}

// Exact comparison; the message names the first differing element.
void check_equal(const Tensor& actual, const Tensor& expected, const std::string& what) {
  REQUIRE(actual.numel() == expected.numel());
  const std::vector<double> a = actual.to_vector<double>(), b = expected.to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i] && !(std::isnan(a[i]) && std::isnan(b[i]))) {
      FAIL_CHECK(what, ": element ", i, " of ", a.size(), " is ", a[i], ", expected ", b[i]);
      return;
    }
  }
}

Tensor slice_of(const Tensor& whole, int64_t start, int64_t length) { return whole.narrow(0, start, length).contiguous(); }

void write_result(int rank, const std::string& text) {
  std::ofstream(std::string(std::getenv("LAMINA_PG_TEST_DIR")) + "/rank" + std::to_string(rank) + ".result") << text;
}

// Asynchronous operations issued back to back complete in issue order: a broadcast from rank 1
// and then a sum give world x rank 1's values (the other order would give the sum of all).
void check_async_order_and_helpers(Communicator& group) {
  const int world = group.world_size(), rank = group.rank();
  const int64_t count = 1001;
  Tensor a = rank_input(DType::f32, rank, count);
  Tensor gathered = Tensor::empty({world * count}, DType::f32);
  Tensor scattered = Tensor::empty({count}, DType::f32);
  Tensor scatter_input = rank_input(DType::f32, rank, world * count);
  const CommunicationStats before = group.stats();
  auto first = group.broadcast_async(a, 1 % world);
  auto second = group.all_reduce_async(a, ReduceOp::sum);
  auto third = group.all_gather_async(rank_input(DType::f32, rank, count), gathered);
  auto fourth = group.reduce_scatter_async(scatter_input, scattered, ReduceOp::sum);
  fourth->wait();  // waiting on the last first: the earlier ones must be done by then
  CHECK(first->completed());
  CHECK(second->completed());
  CHECK(third->completed());
  third->wait();
  second->wait();
  first->wait();
  std::vector<double> expected_a(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) expected_a[size_t(i)] = world * input_value(DType::f32, 1 % world, i);
  check_equal(a, Tensor::from_vector<double>(expected_a, {count}, DType::f32), "broadcast then all_reduce");
  for (int r = 0; r < world; ++r)
    check_equal(slice_of(gathered, r * count, count), rank_input(DType::f32, r, count), "async all_gather chunk");
  check_equal(scattered, expected_reduction(DType::f32, ReduceOp::sum, world, count, rank * count),
              "async reduce_scatter");
  const CommunicationStats after = group.stats();
  CHECK(after.operations == before.operations + 4);
  CHECK(after.bytes_sent > before.bytes_sent);
  CHECK(after.seconds_in_flight > before.seconds_in_flight);

  CHECK(group.broadcast_text(rank == world - 1 ? "from the last rank \xE2\x9C\x93" : "ignored", world - 1) ==
        "from the last rank \xE2\x9C\x93");
  CHECK(group.broadcast_text(rank == 0 ? "" : "not root", 0).empty());
  CHECK(group.all_reduce_sum(0.5 * (rank + 1)) == 0.25 * world * (world + 1));
  CHECK(group.all_reduce_sum(int64_t(1) << 40) == (int64_t(world) << 40));
  group.barrier();
}

// Every operation, every dtype, the given element counts, against the single-process results.
void check_every_collective(Communicator& group, const std::vector<int64_t>& counts, const std::vector<DType>& dtypes) {
  const int world = group.world_size(), rank = group.rank();
  for (DType dtype : dtypes) {
    for (int64_t count : counts) {
      const std::string where = std::string(dtype_name(dtype)) + " x " + std::to_string(count) + " on rank " +
                                std::to_string(rank) + " of " + std::to_string(world);
      std::vector<ReduceOp> ops = {ReduceOp::sum, ReduceOp::max};
      if (is_floating(dtype)) ops.push_back(ReduceOp::average);
      for (ReduceOp op : ops) {
        Tensor tensor = rank_input(dtype, rank, count);
        group.all_reduce(tensor, op);
        check_equal(tensor, expected_reduction(dtype, op, world, count),
                    "all_reduce(" + std::string(reduce_op_name(op)) + ") " + where);
      }
      // reduce_scatter: chunks of `count`; rank r gets the reduction of chunk r.
      Tensor scattered = Tensor::empty({count}, dtype);
      group.reduce_scatter(rank_input(dtype, rank, world * count), scattered, ReduceOp::sum);
      check_equal(scattered, expected_reduction(dtype, ReduceOp::sum, world, count, rank * count),
                  "reduce_scatter " + where);
      Tensor gathered = Tensor::empty({world * count}, dtype);
      group.all_gather(rank_input(dtype, rank, count), gathered);
      for (int r = 0; r < world; ++r)
        check_equal(slice_of(gathered, r * count, count), rank_input(dtype, r, count),
                    "all_gather chunk " + std::to_string(r) + " " + where);
      const int root = world - 1;
      Tensor broadcast = rank_input(dtype, rank, count);
      group.broadcast(broadcast, root);
      check_equal(broadcast, rank_input(dtype, root, count), "broadcast " + where);
    }
  }
}

// all_reduce(sum) of `count` elements in every dtype.
void check_every_all_reduce(Communicator& group, int64_t count) {
  for (DType dtype : kAllDTypes) {
    Tensor tensor = rank_input(dtype, group.rank(), count);
    group.all_reduce(tensor, ReduceOp::sum);
    check_equal(tensor, expected_reduction(dtype, ReduceOp::sum, group.world_size(), count),
                std::string("all_reduce(sum) of ") + dtype_name(dtype) + " x " + std::to_string(count));
  }
}

}  // namespace

// ---- the spawned rank (skipped in a normal run; the tests above start it)

TEST_CASE("process group rank (spawned by the tests)" * doctest::skip()) {
  const char* scenario_text = std::getenv("LAMINA_PG_TEST_SCENARIO");
  REQUIRE_MESSAGE(scenario_text != nullptr, "run by the process group tests only");
  const std::string scenario = scenario_text;
  const DistributedEnv env = distributed_env_from_environment();
  const auto timeout = distributed_timeout();
  // Small pieces, so that a megabyte-sized tensor moves as dozens of them, and of a size that
  // divides neither the parts nor the element counts (the last piece of a part is short).
  std::unique_ptr<Communicator> group = connect_process_group(env, timeout, 40000);
  REQUIRE(group->world_size() == env.world_size);
  REQUIRE(group->rank() == env.rank);
  const int rank = env.rank;

  if (scenario == "collectives") {
    check_async_order_and_helpers(*group);
    check_every_collective(*group, {1, 7}, std::vector<DType>(std::begin(kAllDTypes), std::end(kAllDTypes)));
    // The large odd size (dozens of pieces per ring step): every operation in f32 and bf16
    // (the 16-bit path rounds per hop) and, at 3 ranks, every dtype's all_reduce; all of it at
    // every world size cost more than the suite's few seconds on two cores.
    check_every_collective(*group, {1000003}, {DType::f32, DType::bf16});
    if (env.world_size == 3) check_every_all_reduce(*group, 1000003);
    write_result(rank, "ok");
  } else if (scenario == "exit") {
    Tensor warmup = rank_input(DType::f32, rank, 8);
    group->all_reduce(warmup);  // everyone is connected and working
    Tensor big = rank_input(DType::f32, rank, 4'000'003);
    if (rank == 1) {
      auto work = group->all_reduce_async(big, ReduceOp::sum);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::_Exit(3);  // mid-operation, without a goodbye
    }
    const auto start = std::chrono::steady_clock::now();
    std::string message = "no error";
    try {
      group->all_reduce(big);
    } catch (const Error& error) {
      message = error.what();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::string later = "no error";
    const auto later_start = std::chrono::steady_clock::now();
    try {
      group->all_reduce(warmup);
    } catch (const Error& error) {
      later = error.what();
    }
    const double later_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - later_start).count();
    write_result(rank, message + "\n" + std::to_string(seconds) + "\n" + later + "\n" + std::to_string(later_seconds));
  } else if (scenario == "hang") {
    Tensor tensor = rank_input(DType::f32, rank, 8);
    group->all_reduce(tensor);
    if (rank == 1) std::this_thread::sleep_for(std::chrono::seconds(60));  // stuck; the test kills it
    const auto start = std::chrono::steady_clock::now();
    std::string message = "no error";
    try {
      group->all_reduce(tensor);
    } catch (const Error& error) {
      message = error.what();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    write_result(rank, message + "\n" + std::to_string(seconds));
  } else if (scenario == "mismatch") {
    Tensor tensor = rank_input(DType::f32, rank, rank == 2 ? 8 : 7);
    std::string message = "no error", later = "no error";
    try {
      group->all_reduce(tensor);
    } catch (const Error& error) {
      message = error.what();
    }
    try {
      group->all_reduce(tensor);
    } catch (const Error& error) {
      later = error.what();
    }
    write_result(rank, message + "\n" + later);
  } else {
    FAIL("unknown scenario ", scenario);
  }
}

// ---- the tests

TEST_CASE("process group: every collective, dtype and odd size at 2, 3 and 4 ranks, against one process") {
  for (int world : {2, 3, 4}) {
    CAPTURE(world);
    std::vector<int> ranks;
    for (int r = 0; r < world; ++r) ranks.push_back(r);
    SpawnedRun run("collectives", world, 20, ranks);
    run.wait(std::chrono::seconds(120));
    for (int r = 0; r < world; ++r) {
      run.expect_exit(r, 0);
      CHECK(run.result(r) == "ok");
    }
  }
}

// At 4 ranks, rank 3 is no neighbour of rank 1: it learns the cause from rank 0, which passes on
// what rank 1's neighbours reported (without that it would blame rank 2, or time out).
TEST_CASE("process group: a rank that exits mid-collective makes the others fail, naming it, within the timeout") {
  SpawnedRun run("exit", 4, 3, {0, 1, 2, 3});
  run.wait(std::chrono::seconds(30));
  run.expect_exit(1, 3);
  for (int r : {0, 2, 3}) {
    run.expect_exit(r, 0);
    std::istringstream lines(run.result(r));
    std::string message, seconds, later, later_seconds;
    std::getline(lines, message);
    std::getline(lines, seconds);
    std::getline(lines, later);
    std::getline(lines, later_seconds);
    CAPTURE(r);
    const bool failed_first =
        message.find("rank 1 closed its connection during all_reduce (did it exit?)") != std::string::npos;
    if (r == 3 && !failed_first) {
      // Rank 3 receives nothing from rank 1 directly: under load its share of the ring can be
      // complete before rank 1 leaves. The failure then reaches it at its next operation, still
      // naming rank 1 (relayed by rank 0).
      CHECK_MESSAGE(message == "no error", message);
      CHECK_MESSAGE(later.find("rank 1 closed its connection") != std::string::npos, later);
      continue;
    }
    CHECK_MESSAGE(failed_first, message);
    CHECK(std::stod(seconds) < 3.0);
    // The group is broken: the next operation fails at once, repeating the cause.
    CHECK_MESSAGE(later.find("unusable after an earlier error: rank 1 closed") != std::string::npos, later);
    CHECK(std::stod(later_seconds) < 0.5);
  }
}

TEST_CASE("process group: a rank that stops answering makes the others time out, naming it and the timeout") {
  SpawnedRun run("hang", 2, 1, {0, 1});
  run.wait(std::chrono::seconds(30), {0});
  run.kill_rank(1);
  run.expect_exit(0, 0);
  std::istringstream lines(run.result(0));
  std::string message, seconds;
  std::getline(lines, message);
  std::getline(lines, seconds);
  CHECK_MESSAGE(message.find("no data from rank 1 for 1 s during all_reduce") != std::string::npos, message);
  CHECK(std::stod(seconds) >= 0.9);
  CHECK(std::stod(seconds) < 5.0);
}

TEST_CASE("process group: ranks that call different operations all fail with both calls named") {
  SpawnedRun run("mismatch", 3, 5, {0, 1, 2});
  run.wait(std::chrono::seconds(30));
  for (int r = 0; r < 3; ++r) {
    CAPTURE(r);
    run.expect_exit(r, 0);
    std::istringstream lines(run.result(r));
    std::string message, later;
    std::getline(lines, message);
    std::getline(lines, later);
    CHECK_MESSAGE(message.find("rank 0 called all_reduce(sum) of 7 f32 elements as call #0, rank 2 called "
                               "all_reduce(sum) of 8 f32 elements as call #0") != std::string::npos,
                  message);
    CHECK_MESSAGE(later.find("unusable after an earlier error") != std::string::npos, later);
  }
}

TEST_CASE("process group rendezvous: a rank that never joins, or no rank 0, is a timeout error naming it") {
  DistributedEnv env;
  env.world_size = 3;
  env.master_port = free_port();
  env.rank = 0;
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(connect_process_group(env, std::chrono::milliseconds(300)),
                       doctest::Contains("rank(s) 1, 2 never connected"), Error);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds >= 0.29);
  CHECK(seconds < 3.0);
  env.rank = 2;  // nobody listens at the master port
  CHECK_THROWS_WITH_AS(connect_process_group(env, std::chrono::milliseconds(300)),
                       doctest::Contains("rank 2 could not reach rank 0 at 127.0.0.1:"), Error);
}

TEST_CASE("process group of one rank: every operation without sockets; bad arguments are errors") {
  DistributedEnv env;  // world size 1
  std::unique_ptr<Communicator> group = connect_process_group(env, std::chrono::milliseconds(1000));
  CHECK(group->backend() == "cpu");
  Tensor tensor = Tensor::from_vector<float>({1, 2, 3}, {3});
  group->all_reduce(tensor, ReduceOp::average);
  CHECK(tensor.to_vector<float>() == std::vector<float>{1, 2, 3});
  Tensor output = Tensor::empty({3});
  group->reduce_scatter(tensor, output);
  CHECK(output.to_vector<float>() == std::vector<float>{1, 2, 3});
  Tensor gathered = Tensor::empty({3});
  group->all_gather(Tensor::from_vector<float>({4, 5, 6}, {3}), gathered);
  CHECK(gathered.to_vector<float>() == std::vector<float>{4, 5, 6});
  group->broadcast(tensor, 0);
  group->barrier();
  CHECK(group->broadcast_text("alone", 0) == "alone");
  CHECK(group->all_reduce_sum(2.5) == 2.5);
  CHECK(group->all_reduce_sum(int64_t(7)) == 7);
  CHECK(group->stats().operations >= 7);
  CHECK_THROWS_WITH_AS(group->broadcast(tensor, 1), doctest::Contains("root 1 is not a rank"), Error);
  CHECK_THROWS_WITH_AS(group->all_reduce(Tensor::from_vector<int32_t>({1}, {1}), ReduceOp::average),
                       doctest::Contains("average of i32 is refused"), Error);
  CHECK_THROWS_WITH_AS(group->all_reduce(Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2}).transpose(0, 1)),
                       doctest::Contains("is not contiguous"), Error);
  CHECK_THROWS_WITH_AS(group->all_gather(tensor, Tensor::empty({4})), doctest::Contains("output has 4 elements"), Error);
}

TEST_CASE("make_communicator: cpu works at world size 1; nccl in a CPU build and unknown names are errors") {
  DistributedEnv env;
  CHECK(make_communicator(env, "cpu")->backend() == "cpu");
  CHECK_THROWS_WITH_AS(make_communicator(env, "mpi"), doctest::Contains("'mpi' is unknown"), Error);
#if !LAMINA_WITH_NCCL
  CHECK_THROWS_WITH_AS(make_communicator(env, "nccl"), doctest::Contains("built without NCCL"), Error);
  CHECK(make_communicator(env, "auto")->backend() == "cpu");
#endif
}

// ---- the environment

namespace {
EnvironmentLookup lookup_in(std::map<std::string, std::string> variables) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(variables));
  return [shared](const char* name) -> const char* {
    const auto found = shared->find(name);
    return found == shared->end() ? nullptr : found->second.c_str();
  };
}
}  // namespace

TEST_CASE("distributed_env_from: torchrun's variables") {
  const DistributedEnv env = distributed_env_from(lookup_in({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                                             {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "node07"},
                                                             {"MASTER_PORT", "1234"}, {"SLURM_PROCID", "0"},
                                                             {"SLURM_NTASKS", "1"}}));
  CHECK(env.source == "torchrun");  // torchrun's variables win over SLURM's
  CHECK(env.rank == 5);
  CHECK(env.world_size == 8);
  CHECK(env.local_rank == 1);
  CHECK(env.local_world_size == 4);
  CHECK(env.master_addr == "node07");
  CHECK(env.master_port == 1234);
  const DistributedEnv defaults = distributed_env_from(lookup_in({{"RANK", "1"}, {"WORLD_SIZE", "2"}}));
  CHECK(defaults.local_rank == 1);
  CHECK(defaults.local_world_size == 2);
  CHECK(defaults.master_addr == "127.0.0.1");
  CHECK(defaults.master_port == 29500);

  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"RANK", "2"}, {"WORLD_SIZE", "2"}})),
                       doctest::Contains("RANK=2 but WORLD_SIZE=2"), Error);
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"RANK", "x1"}, {"WORLD_SIZE", "2"}})),
                       doctest::Contains("RANK='x1' is not an integer"), Error);
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"RANK", "0"}, {"WORLD_SIZE", "2 "}})),
                       doctest::Contains("WORLD_SIZE='2 ' is not an integer"), Error);
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"RANK", "0"}, {"WORLD_SIZE", "0"}})),
                       doctest::Contains("WORLD_SIZE=0 is out of range"), Error);
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"RANK", "0"}})),
                       doctest::Contains("RANK is set but WORLD_SIZE is not"), Error);
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}})),
                       doctest::Contains("MASTER_PORT=70000 is out of range"), Error);
  CHECK_THROWS_WITH_AS(
      distributed_env_from(lookup_in({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}})),
      doctest::Contains("LOCAL_RANK=2 but LOCAL_WORLD_SIZE=2"), Error);
}

TEST_CASE("distributed_env_from: SLURM's variables, and one process without any") {
  const DistributedEnv env = distributed_env_from(
      lookup_in({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "1"}, {"SLURM_NODEID", "2"},
                 {"SLURM_STEP_TASKS_PER_NODE", "2(x2),3"}, {"SLURM_NTASKS_PER_NODE", "9"},
                 {"SLURM_STEP_NODELIST", "gpu[07-09]"}, {"SLURM_NODELIST", "other1"}}));
  CHECK(env.source == "slurm");
  CHECK(env.rank == 5);
  CHECK(env.world_size == 7);
  CHECK(env.local_rank == 1);
  CHECK(env.local_world_size == 3);  // node 2 of "2,2,3"
  CHECK(env.master_addr == "gpu07");
  CHECK(env.master_port == 29500);
  const DistributedEnv overridden =
      distributed_env_from(lookup_in({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "a[1-2]"},
                                      {"MASTER_ADDR", "10.0.0.1"}, {"MASTER_PORT", "4000"}}));
  CHECK(overridden.master_addr == "10.0.0.1");
  CHECK(overridden.master_port == 4000);
  CHECK(distributed_env_from(lookup_in({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_NODELIST", "b[3-4]"}}))
            .master_addr == "b3");
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "2"}})),
                       doctest::Contains("SLURM_PROCID=3 but SLURM_NTASKS=2"), Error);
  CHECK_THROWS_WITH_AS(distributed_env_from(lookup_in({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"},
                                                       {"SLURM_NODELIST", "n[1-"}})),
                       doctest::Contains("SLURM_NODELIST: host list 'n[1-'"), Error);

  const DistributedEnv single = distributed_env_from(lookup_in({}));
  CHECK(single.source == "single");
  CHECK(single.world_size == 1);
  CHECK(single.rank == 0);
}

TEST_CASE("expand_slurm_hostlist and tasks per node") {
  CHECK(expand_slurm_hostlist("node[01-03,7],gpu5") ==
        std::vector<std::string>{"node01", "node02", "node03", "node7", "gpu5"});
  CHECK(expand_slurm_hostlist("a") == std::vector<std::string>{"a"});
  CHECK(expand_slurm_hostlist("r[1-2]c[8-9]") == std::vector<std::string>{"r1c8", "r1c9", "r2c8", "r2c9"});
  CHECK(expand_slurm_hostlist("x[098-101]") == std::vector<std::string>{"x098", "x099", "x100", "x101"});
  CHECK_THROWS_WITH_AS(expand_slurm_hostlist("node[3-1]"), doctest::Contains("runs backwards"), Error);
  CHECK_THROWS_WITH_AS(expand_slurm_hostlist("node[a-b]"), doctest::Contains("'a-b' is not a number"), Error);
  CHECK_THROWS_WITH_AS(expand_slurm_hostlist("node[1,2"), doctest::Contains("never closed"), Error);
  CHECK_THROWS_WITH_AS(expand_slurm_hostlist("a,,b"), doctest::Contains("an empty name"), Error);
  CHECK(expand_slurm_tasks_per_node("2(x3),1") == std::vector<int>{2, 2, 2, 1});
  CHECK(expand_slurm_tasks_per_node("4") == std::vector<int>{4});
  CHECK_THROWS_AS(expand_slurm_tasks_per_node("2(x3"), Error);
}

TEST_CASE("distributed_timeout: LAMINA_DIST_TIMEOUT_S in seconds, 300 s by default") {
  CHECK(distributed_timeout_from(lookup_in({})) == std::chrono::milliseconds(300'000));
  CHECK(distributed_timeout_from(lookup_in({{"LAMINA_DIST_TIMEOUT_S", "2.5"}})) == std::chrono::milliseconds(2500));
  CHECK_THROWS_WITH_AS(distributed_timeout_from(lookup_in({{"LAMINA_DIST_TIMEOUT_S", "soon"}})),
                       doctest::Contains("LAMINA_DIST_TIMEOUT_S='soon'"), Error);
  CHECK_THROWS_AS(distributed_timeout_from(lookup_in({{"LAMINA_DIST_TIMEOUT_S", "-1"}})), Error);
}
