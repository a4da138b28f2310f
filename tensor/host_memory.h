// How much host memory this process can still get, and the checks that use it.
//
// Linux overcommits: mimalloc maps large blocks with MAP_NORESERVE, so a request for more than
// the machine has succeeds, and the kernel's OOM killer ends the process (with no message) once
// the pages are touched. So large requests are compared with what the system reports before
// they are made, and refused with an error while one can still be printed. The same file
// replaces the global operator new, which under mimalloc aborts on failure instead of throwing
// std::bad_alloc: with lamina linked, a failed `new` throws a std::bad_alloc whose what() names
// the size and the memory available.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lamina {

struct HostMemory {
  // Physical memory plus swap, within this process's cgroup limit and its ulimit -v / -d.
  uint64_t total_bytes = 0;
  uint64_t available_bytes = 0;  // what can still be allocated without the OOM killer or a ulimit stepping in
};

// Read from /proc/meminfo, the cgroup (v1 or v2) and the resource limits (RLIMIT_AS,
// RLIMIT_DATA, with /proc/self/status) of this process, at the time of the call.
HostMemory host_memory();

// Requests below this size are never checked: they cannot be what exhausts memory, and the
// check reads /proc.
inline constexpr uint64_t kCheckedHostBytes = uint64_t(64) << 20;

// Whether `bytes` more host memory can be allocated now (always true below kCheckedHostBytes).
bool host_memory_fits(uint64_t bytes);

// "out of host memory: <what> needs 40.00 GiB but only 21.90 GiB of the 23.54 GiB ... are available"
std::string host_memory_shortage(uint64_t bytes, std::string_view what);
// Throws lamina::Error with host_memory_shortage(bytes, what) unless host_memory_fits(bytes).
void check_host_memory(uint64_t bytes, std::string_view what);

// "512 B", "3.50 MiB", "40.00 GiB", "1.20 TiB".
std::string format_bytes(uint64_t bytes);
// The same text written into `text` (at most `size` bytes with the NUL), without allocating:
// for messages about an allocation that just failed.
void format_bytes_into(char* text, size_t size, uint64_t bytes);

// Gives the memory that freed tensors and objects left behind back to the system: lamina's block
// cache of freed tensors (empty_cache) and the pages mimalloc keeps for reuse (mi_collect; builds
// without mimalloc skip that part). For a process whose peak memory should stay near what it
// holds, at a point where much was just freed: inference of a quantized GGUF model after its
// prefill (the chunks' activations) and before the output head and the rest of the KV cache
// come into memory. The next large allocations pay their page faults again.
void release_free_host_memory();

// From now on, memory that becomes free goes back to the system at once instead of after
// mimalloc's delay (25 ms; a forced collection does not cut it short, and it is what lets freed
// pages pile up under a steady stream of allocations). For the same processes, called before
// anything large is freed (a GGUF file's parsed metadata, ~18 MB of short-lived strings for a
// 49k vocabulary). Makes large allocations pay their page faults: not for training. A no-op in
// builds without mimalloc (the C allocator returns large blocks on free).
void return_freed_memory_promptly();

// Whether this build leaves host memory to the system allocator and the runtime's operator new
// (sanitizer builds, so that ASan sees every block) instead of mimalloc, the block cache and
// lamina's throwing operator new. A run-time answer: the test suites' objects are shared by both
// builds.
bool system_allocator_build();

}  // namespace lamina
