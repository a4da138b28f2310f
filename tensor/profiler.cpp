#include "tensor/profiler.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>

namespace lamina::profiler {

namespace detail {
std::atomic<bool> g_enabled{false};
}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;

// One open scope on this thread.
struct Frame {
  std::string name;
  Clock::time_point start;
  double child_seconds = 0;  // wall time of the scopes opened directly inside this one
  bool outermost = true;     // no enclosing scope on this thread has the same name
};

// Scopes close in the reverse order they opened on a thread (they are RAII objects), so a
// stack per thread is the whole nesting state.
thread_local std::vector<Frame> t_open_scopes;

struct Totals {
  double self_seconds = 0;
  double total_seconds = 0;
  int64_t calls = 0;
};

// Written once per closed scope, by any thread. A lock per scope is cheap next to the ops being
// timed and keeps the table exact without per-thread tables to merge.
std::mutex g_mutex;
std::unordered_map<std::string, Totals>& totals_by_name() {
  static auto* table = new std::unordered_map<std::string, Totals>();  // outlives exiting threads
  return *table;
}

}  // namespace

void set_enabled(bool enabled) { detail::g_enabled.store(enabled, std::memory_order_relaxed); }

void Scope::begin(std::string_view prefix, std::string_view name) {
  Frame frame;
  frame.name.reserve(prefix.size() + name.size());
  frame.name.append(prefix).append(name);
  for (const Frame& open : t_open_scopes)
    if (open.name == frame.name) frame.outermost = false;
  t_open_scopes.push_back(std::move(frame));
  open_ = true;
  // Read last, so that the bookkeeping above is not charged to the scope.
  t_open_scopes.back().start = Clock::now();
}

void Scope::end() {
  const Clock::time_point stop = Clock::now();
  Frame frame = std::move(t_open_scopes.back());
  t_open_scopes.pop_back();
  const double seconds = std::chrono::duration<double>(stop - frame.start).count();
  if (!t_open_scopes.empty()) t_open_scopes.back().child_seconds += seconds;
  std::lock_guard<std::mutex> lock(g_mutex);
  Totals& totals = totals_by_name()[frame.name];
  totals.self_seconds += seconds - frame.child_seconds;
  if (frame.outermost) totals.total_seconds += seconds;
  ++totals.calls;
}

std::vector<ScopeStats> snapshot() {
  std::vector<ScopeStats> out;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (const auto& [name, totals] : totals_by_name())
      out.push_back({name, totals.self_seconds, totals.total_seconds, totals.calls});
  }
  std::sort(out.begin(), out.end(), [](const ScopeStats& a, const ScopeStats& b) {
    return a.self_seconds != b.self_seconds ? a.self_seconds > b.self_seconds : a.name < b.name;
  });
  return out;
}

void reset() {
  std::lock_guard<std::mutex> lock(g_mutex);
  totals_by_name().clear();
}

}  // namespace lamina::profiler
