// Memory that really runs out (a `ulimit -v`, not an oversized request): the limit counts in
// what host_memory() reports, and operator new still throws a std::bad_alloc with a message
// when not even a few bytes are left, instead of recursing into itself until the process aborts.
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

#include "helpers.h"
#include "tensor/host_memory.h"

using namespace lamina;

namespace {

// This process's address space now (VmSize), in bytes; 0 when /proc does not say.
uint64_t address_space_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmSize:", 0) == 0) return std::strtoull(line.c_str() + 7, nullptr, 10) * 1024;
  return 0;
}

// Sets RLIMIT_AS to the current address space plus `headroom` for its lifetime.
class AddressSpaceLimit {
 public:
  explicit AddressSpaceLimit(uint64_t headroom) {
    ::getrlimit(RLIMIT_AS, &saved_);
    const uint64_t used = address_space_bytes();
    if (used == 0) return;
    struct rlimit limit = saved_;
    limit.rlim_cur = rlim_t(used + headroom);
    active_ = (saved_.rlim_cur == RLIM_INFINITY || limit.rlim_cur < saved_.rlim_cur) && ::setrlimit(RLIMIT_AS, &limit) == 0;
  }
  ~AddressSpaceLimit() {
    if (active_) ::setrlimit(RLIMIT_AS, &saved_);
  }
  bool active() const { return active_; }

 private:
  struct rlimit saved_ {};
  bool active_ = false;
};

}  // namespace

TEST_CASE("host memory: a ulimit -v counts, so large requests are refused with a message") {
  const uint64_t headroom = uint64_t(256) << 20;
  HostMemory limited;
  {
    AddressSpaceLimit limit(headroom);
    if (!limit.active()) {
      MESSAGE("SKIPPED: cannot read VmSize or lower RLIMIT_AS here");
      return;
    }
    limited = host_memory();
  }
  CHECK(limited.available_bytes <= headroom);
  CHECK(limited.total_bytes >= limited.available_bytes);
  AddressSpaceLimit limit(headroom);
  CHECK_THROWS_WITH_AS(check_host_memory(uint64_t(1) << 30, "a test block"),
                       doctest::Contains("out of host memory: a test block needs 1.00 GiB"), Error);
}

TEST_CASE("operator new reports running out of memory even when no memory is left for the message") {
  if (system_allocator_build()) {
    MESSAGE("SKIPPED: sanitizer builds keep the runtime's operator new");
    return;
  }
  // Fill the address space left under a limit with blocks of decreasing size, down to a few
  // bytes: the last failure happens with nothing left at all, where a message that needs the
  // heap cannot be made. Only a pointer is written into each block, so the machine's memory
  // is barely used: the limit is on address space.
  char last_message[512] = "";
  size_t failures = 0;
  {
    AddressSpaceLimit limit(uint64_t(64) << 20);
    if (!limit.active()) {
      MESSAGE("SKIPPED: cannot read VmSize or lower RLIMIT_AS here");
      return;
    }
    // The blocks are chained through their first bytes: keeping them needs no allocation.
    void* chain = nullptr;
    uint64_t held = 0;
    for (const size_t block_size : {size_t(1) << 20, size_t(4096), size_t(64), size_t(8)}) {
      while (held < (uint64_t(1) << 40)) {  // far more than any limit here allows: a guard, not a bound
        try {
          void* block = ::operator new(block_size);
          *static_cast<void**>(block) = chain;
          chain = block;
          held += block_size;
        } catch (const std::bad_alloc& error) {
          std::strncpy(last_message, error.what(), sizeof last_message - 1);
          ++failures;
          break;
        }
      }
    }
    while (chain != nullptr) {
      void* next = *static_cast<void**>(chain);
      ::operator delete(chain);
      chain = next;
    }
  }
  CHECK(failures == 4);
  CHECK(std::string(last_message) == "out of host memory: could not allocate 8 B (operator new)");
}
