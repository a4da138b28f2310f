// Named wall-time scopes for finding where a training step's time goes (`lamina bench train
// --profile`).
//
// A Scope placed at the top of an op accumulates, per name, the wall time and the number of
// entries. Off (the default) a scope costs one relaxed atomic load and a branch, so the scopes
// stay compiled into every op. On, each scope reads the clock twice and takes a global lock once
// when it closes (a few hundred nanoseconds: fine for ops of microseconds and more).
//
// Nesting is tracked per thread, on the thread that opened the scope (a worker thread running a
// chunk of an op has its own, usually empty, stack). For each name two times are kept:
//   self:  the scope's wall time minus the time of the scopes opened directly inside it. The
//          self times of all names add up to the wall time of the outermost scopes, with no
//          double counting: the per-op table ranks by it.
//   total: the scope's wall time including everything inside it, counted only for the outermost
//          scope of that name on the thread (a recursive or repeated nesting of one name is not
//          counted twice).
// `calls` counts every entry, nested or not.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lamina::profiler {

namespace detail {
extern std::atomic<bool> g_enabled;
}  // namespace detail

inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }
// Scopes opened while enabled record; a scope open across a switch still closes properly (it
// records when it was opened with recording on, and never otherwise).
void set_enabled(bool enabled);

struct ScopeStats {
  std::string name;
  double self_seconds = 0;
  double total_seconds = 0;
  int64_t calls = 0;
};

// Every name recorded since the last reset(), largest self time first (ties: by name).
std::vector<ScopeStats> snapshot();
// Forgets what was recorded. Scopes open at the time still record when they close.
void reset();

class Scope {
 public:
  explicit Scope(std::string_view name) {
    if (enabled()) begin(name, {});
  }
  // The name is prefix + name, joined only when recording ("forward:", op_name): a caller with
  // a dynamic name builds no string while the profiler is off.
  Scope(std::string_view prefix, std::string_view name) {
    if (enabled()) begin(prefix, name);
  }
  ~Scope() {
    if (open_) end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin(std::string_view prefix, std::string_view name);
  void end();
  bool open_ = false;
};

}  // namespace lamina::profiler
