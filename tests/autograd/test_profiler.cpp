// The op profiler (tensor/profiler.h): self and inclusive times of nested scopes, call counts,
// scopes on several threads, nothing recorded while off; and the names the autograd engine and
// the differentiable functions record for a small backward.
#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "autograd/functions.h"
#include "helpers.h"
#include "tensor/parallel.h"
#include "tensor/profiler.h"

using namespace lamina;

namespace {

// Starts each test from an empty table with recording on, and leaves recording off for the
// other tests of the binary even when a check fails.
struct Recording {
  Recording() {
    profiler::reset();
    profiler::set_enabled(true);
  }
  ~Recording() {
    profiler::set_enabled(false);
    profiler::reset();
  }
};

std::map<std::string, profiler::ScopeStats> recorded() {
  std::map<std::string, profiler::ScopeStats> by_name;
  for (const profiler::ScopeStats& stats : profiler::snapshot()) by_name[stats.name] = stats;
  return by_name;
}

void sleep_ms(int milliseconds) { std::this_thread::sleep_for(std::chrono::milliseconds(milliseconds)); }

}  // namespace

TEST_CASE("profiler: a nested scope's time is the outer scope's total but not its self time") {
  const Recording recording;
  {
    const profiler::Scope outer("outer");
    sleep_ms(2);
    for (int i = 0; i < 2; ++i) {
      const profiler::Scope inner("inner");
      sleep_ms(3);
    }
  }
  const auto stats = recorded();
  REQUIRE(stats.size() == 2);
  const profiler::ScopeStats& outer = stats.at("outer");
  const profiler::ScopeStats& inner = stats.at("inner");
  CHECK(outer.calls == 1);
  CHECK(inner.calls == 2);
  // Sleeps last at least what they ask for.
  CHECK(inner.total_seconds >= 0.006);
  CHECK(outer.self_seconds >= 0.002);
  CHECK(outer.total_seconds >= 0.008);
  // Self times partition the outermost scope's wall time exactly; a leaf's self is its total.
  CHECK(outer.self_seconds + inner.self_seconds == doctest::Approx(outer.total_seconds).epsilon(1e-9));
  CHECK(inner.self_seconds == doctest::Approx(inner.total_seconds).epsilon(1e-9));
  CHECK(outer.self_seconds < outer.total_seconds - 0.005);
  // Largest self time first.
  const std::vector<profiler::ScopeStats> ordered = profiler::snapshot();
  CHECK(ordered[0].self_seconds >= ordered[1].self_seconds);
}

TEST_CASE("profiler: a name nested in itself counts its time once and every call") {
  const Recording recording;
  {
    const profiler::Scope outer("op");
    sleep_ms(2);
    {
      const profiler::Scope inner("op");
      sleep_ms(4);
    }
  }
  const profiler::ScopeStats op = recorded().at("op");
  CHECK(op.calls == 2);
  CHECK(op.total_seconds >= 0.006);
  // Counting the inner scope's total too would give about 10 ms against 6 ms of wall time.
  CHECK(op.total_seconds == doctest::Approx(op.self_seconds).epsilon(1e-9));
}

TEST_CASE("profiler: a dynamic name is the prefix and the name joined") {
  const Recording recording;
  const std::string name = "matmul";
  { const profiler::Scope scope("forward:", name); }
  const auto stats = recorded();
  CHECK(stats.size() == 1);
  CHECK(stats.count("forward:matmul") == 1);
}

TEST_CASE("profiler: nothing is recorded while off, and a scope records as it was opened") {
  profiler::set_enabled(false);
  profiler::reset();
  {
    const profiler::Scope scope("while_off");
    profiler::set_enabled(true);  // turned on inside: this scope still records nothing
  }
  {
    const profiler::Scope scope("while_on");
    profiler::set_enabled(false);  // turned off inside: this scope still closes and records
  }
  Tensor x = Tensor::scalar(2.0, DType::f64);
  x.set_requires_grad(true);
  (exp(x) * x).backward();
  const auto stats = recorded();
  CHECK(stats.size() == 1);
  CHECK(stats.count("while_on") == 1);
  profiler::reset();
  CHECK(profiler::snapshot().empty());
}

TEST_CASE("profiler: threads nest their scopes separately and every call is counted") {
  const Recording recording;
  // Thread A holds "shared" open while thread B opens and closes its own "shared": B's scope is
  // outermost on its thread, so both count in full (a single stack for all threads would nest B
  // in A and count it once, and take it out of A's self time).
  std::atomic<int> phase{0};
  std::thread holder([&] {
    const profiler::Scope scope("shared");
    phase = 1;
    while (phase.load() != 2) std::this_thread::yield();
  });
  std::thread inner([&] {
    while (phase.load() != 1) std::this_thread::yield();
    {
      const profiler::Scope scope("shared");
      sleep_ms(20);
    }
    phase = 2;
  });
  holder.join();
  inner.join();
  const profiler::ScopeStats shared = recorded().at("shared");
  CHECK(shared.calls == 2);
  CHECK(shared.total_seconds >= 0.040);
  CHECK(shared.self_seconds >= 0.040);

  // Many threads closing scopes at once: no call is lost.
  profiler::reset();
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t)
    workers.emplace_back([] {
      for (int i = 0; i < 500; ++i) {
        const profiler::Scope outer("work");
        const profiler::Scope nested("work_inner");
      }
    });
  for (std::thread& worker : workers) worker.join();
  const auto stats = recorded();
  CHECK(stats.at("work").calls == 2000);
  CHECK(stats.at("work_inner").calls == 2000);
}

TEST_CASE("profiler: scopes inside parallel_for chunks are counted once per chunk") {
  const Recording recording;
  const ThreadCountGuard threads(2);
  {
    const profiler::Scope op("op");
    parallel_for(0, 8, 1, [](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const profiler::Scope chunk("chunk");
        sleep_ms(1);
      }
    });
  }
  const auto stats = recorded();
  CHECK(stats.at("op").calls == 1);
  CHECK(stats.at("chunk").calls == 8);
  CHECK(stats.at("chunk").total_seconds >= 0.008);
  CHECK(stats.at("op").self_seconds >= 0.0);
}

TEST_CASE("profiler: a backward records each function's forward and each node's backward") {
  const Recording recording;
  Tensor x = Tensor::scalar(0.5, DType::f64);
  x.set_requires_grad(true);
  // x feeds both exp and mul: the engine sums its two gradients before AccumulateGrad.
  const Tensor loss = sum(exp(x) * x);
  loss.backward();
  const auto stats = recorded();
  std::set<std::string> names;
  for (const auto& [name, entry] : stats) names.insert(name);
  const std::set<std::string> expected = {"forward:exp",           "forward:mul",           "forward:sum",
                                          "backward:engine",       "backward:sum",          "backward:mul",
                                          "backward:exp",          "backward:AccumulateGrad",
                                          "backward:sum_gradients"};
  CHECK(names == expected);
  for (const auto& [name, entry] : stats) {
    INFO(name);
    CHECK(entry.calls == 1);
  }
  // Every node ran inside the engine's scope.
  const double nodes = stats.at("backward:sum").total_seconds + stats.at("backward:mul").total_seconds +
                       stats.at("backward:exp").total_seconds + stats.at("backward:AccumulateGrad").total_seconds;
  CHECK(stats.at("backward:engine").total_seconds >= nodes);
  CHECK(x.grad().item<double>() == doctest::Approx(std::exp(0.5) * 1.5));
}
