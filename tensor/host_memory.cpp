#include "tensor/host_memory.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "tensor/error.h"
#include "tensor/storage.h"

#ifndef LAMINA_SYSTEM_ALLOCATOR
#define LAMINA_SYSTEM_ALLOCATOR 0  // set to 1 by sanitizer builds
#endif
#if !LAMINA_SYSTEM_ALLOCATOR
#include <mimalloc.h>
#endif

namespace lamina {
namespace {

constexpr uint64_t kUnlimited = UINT64_MAX;

// The whole of a small text file (/proc, /sys), or "" when it cannot be read.
std::string read_small_file(const std::string& path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return {};
  std::string text;
  char buffer[4096];
  ssize_t got;
  while ((got = ::read(descriptor, buffer, sizeof buffer)) > 0) text.append(buffer, size_t(got));
  ::close(descriptor);
  return text;
}

// The number after "<key>" at the start of a line ("MemTotal:  24683772 kB" -> 24683772), or
// `missing` when no line starts with the key.
uint64_t field(const std::string& text, const char* key, uint64_t missing) {
  const size_t key_length = std::strlen(key);
  for (size_t at = 0; at < text.size();) {
    const size_t end = std::min(text.find('\n', at), text.size());
    const size_t value_at = at + key_length;
    const bool separated = value_at < end && (text[value_at] == ' ' || text[value_at] == '\t');
    if (separated && text.compare(at, key_length, key) == 0) return std::strtoull(text.c_str() + value_at, nullptr, 10);
    at = end + 1;
  }
  return missing;
}

// A cgroup limit file: a number of bytes, "max" (v2) or a huge number (v1) for none.
uint64_t read_limit(const std::string& path) {
  const std::string text = read_small_file(path);
  if (text.empty() || text.compare(0, 3, "max") == 0) return kUnlimited;
  const uint64_t limit = std::strtoull(text.c_str(), nullptr, 10);
  return limit >= (uint64_t(1) << 62) ? kUnlimited : limit;
}

struct CgroupMemory {
  uint64_t limit = kUnlimited;
  uint64_t used = 0;  // excluding page cache the kernel can drop to make room

  uint64_t left() const { return limit - std::min(limit, used); }
};

// The page cache in a cgroup's memory.stat that is not shared memory (which cannot be dropped).
uint64_t reclaimable_cache(const std::string& stat, const char* cache_key, const char* shared_key) {
  const uint64_t cache = field(stat, cache_key, 0);
  return cache - std::min(cache, field(stat, shared_key, 0));
}

// The memory cgroup of this process: the tightest limit on its path (v2), or the hierarchical
// limit (v1). Page cache that is not shared memory counts as free, as in /proc/meminfo's
// MemAvailable.
CgroupMemory cgroup_memory() {
  CgroupMemory out;
  const std::string membership = read_small_file("/proc/self/cgroup");
  for (size_t at = 0; at < membership.size();) {
    const size_t end = std::min(membership.find('\n', at), membership.size());
    const std::string line = membership.substr(at, end - at);
    at = end + 1;
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string controllers(1, ',');  // ",cpu,memory," so that a whole name can be searched for
    controllers.append(line, first + 1, second - first - 1).push_back(',');
    std::string path = line.substr(second + 1);
    if (controllers == ",,") {  // v2: walk from this cgroup up to the root
      for (;;) {
        const std::string folder = "/sys/fs/cgroup" + (path == "/" ? "" : path);
        const uint64_t limit = read_limit(folder + "/memory.max");
        if (limit != kUnlimited) {
          const uint64_t current = std::strtoull(read_small_file(folder + "/memory.current").c_str(), nullptr, 10);
          const uint64_t reclaimable = reclaimable_cache(read_small_file(folder + "/memory.stat"), "file", "shmem");
          const CgroupMemory level{limit, current - std::min(current, reclaimable)};
          if (level.left() < out.left()) out = level;
        }
        if (path.empty() || path == "/") break;
        path = path.substr(0, path.rfind('/'));
      }
    } else if (controllers.find(",memory,") != std::string::npos) {  // v1
      std::string folder = "/sys/fs/cgroup/memory" + path;
      std::string stat = read_small_file(folder + "/memory.stat");
      if (stat.empty()) stat = read_small_file((folder = "/sys/fs/cgroup/memory") + "/memory.stat");  // a namespace
      const uint64_t limit = field(stat, "hierarchical_memory_limit", kUnlimited);
      if (limit >= (uint64_t(1) << 62)) continue;
      const uint64_t usage = std::strtoull(read_small_file(folder + "/memory.usage_in_bytes").c_str(), nullptr, 10);
      const uint64_t reclaimable = reclaimable_cache(stat, "total_cache", "total_shmem");
      const CgroupMemory level{limit, usage - std::min(usage, reclaimable)};
      if (level.left() < out.left()) out = level;
    }
  }
  return out;
}

// The limits of `ulimit -v` (RLIMIT_AS, against the address space, VmSize) and `ulimit -d`
// (RLIMIT_DATA, against private writable mappings, VmData): past them malloc returns NULL
// however much memory the machine has. `limit` is the tightest, `left` what remains under it.
struct ProcessLimit {
  uint64_t limit = kUnlimited;
  uint64_t left = kUnlimited;
};

ProcessLimit process_limit() {
  ProcessLimit out;
  std::string status;  // read only when a limit is set
  const struct {
    int resource;
    const char* key;
  } limits[] = {{RLIMIT_AS, "VmSize:"}, {RLIMIT_DATA, "VmData:"}};
  for (const auto& [resource, key] : limits) {
    struct rlimit limit {};
    if (::getrlimit(resource, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) continue;
    if (status.empty()) status = read_small_file("/proc/self/status");
    const uint64_t used = field(status, key, 0) * 1024;
    const uint64_t cap = uint64_t(limit.rlim_cur);
    out.limit = std::min(out.limit, cap);
    out.left = std::min(out.left, cap - std::min(cap, used));
  }
  return out;
}

// What operator new throws: a std::bad_alloc that says what could not be allocated. The text
// lives in the object, formatted without allocating: it is built when allocation just failed,
// and a message that needed the heap would fail again (and recurse through operator new).
class HostOutOfMemory : public std::bad_alloc {
 public:
  HostOutOfMemory(const char* format, ...) __attribute__((format(printf, 2, 3))) {
    va_list arguments;
    va_start(arguments, format);
    std::vsnprintf(message_, sizeof message_, format, arguments);
    va_end(arguments);
  }
  const char* what() const noexcept override { return message_; }

 private:
  char message_[512];
};

// operator new for lamina builds: check large requests, then malloc (which is mimalloc's),
// calling the new-handler as the standard asks; throws instead of aborting. (Unused in
// sanitizer builds, which keep the runtime's operator new.)
[[maybe_unused]] void* allocate_or_throw(std::size_t bytes, std::size_t alignment) {
  if (!host_memory_fits(bytes))
    throw HostOutOfMemory("%s", host_memory_shortage(bytes, "an allocation (operator new)").c_str());
  for (;;) {
    void* data = nullptr;
    if (alignment <= alignof(std::max_align_t)) {
      data = std::malloc(bytes == 0 ? 1 : bytes);
    } else if (::posix_memalign(&data, alignment, bytes == 0 ? 1 : bytes) != 0) {
      data = nullptr;
    }
    if (data != nullptr) return data;
    const std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) {
      char size[32];
      format_bytes_into(size, sizeof size, bytes);
      throw HostOutOfMemory("out of host memory: could not allocate %s (operator new)", size);
    }
    handler();
  }
}

}  // namespace

HostMemory host_memory() {
  const std::string meminfo = read_small_file("/proc/meminfo");
  const uint64_t kib = 1024;
  HostMemory memory;
  memory.total_bytes = (field(meminfo, "MemTotal:", 0) + field(meminfo, "SwapTotal:", 0)) * kib;
  memory.available_bytes = (field(meminfo, "MemAvailable:", 0) + field(meminfo, "SwapFree:", 0)) * kib;
  if (memory.total_bytes == 0) return {kUnlimited, kUnlimited};  // no /proc: nothing to go by
  const CgroupMemory cgroup = cgroup_memory();
  if (cgroup.limit != kUnlimited) {
    memory.total_bytes = std::min(memory.total_bytes, cgroup.limit);
    memory.available_bytes = std::min(memory.available_bytes, cgroup.left());
  }
  const ProcessLimit process = process_limit();
  memory.total_bytes = std::min(memory.total_bytes, process.limit);
  memory.available_bytes = std::min(memory.available_bytes, process.left);
  return memory;
}

bool host_memory_fits(uint64_t bytes) { return bytes < kCheckedHostBytes || bytes <= host_memory().available_bytes; }

std::string host_memory_shortage(uint64_t bytes, std::string_view what) {
  const HostMemory memory = host_memory();
  return str_cat("out of host memory: ", what, " needs ", format_bytes(bytes), " but only ",
                 format_bytes(memory.available_bytes), " of the ", format_bytes(memory.total_bytes),
                 " of host memory (RAM and swap, within this process's memory limits) are available");
}

void check_host_memory(uint64_t bytes, std::string_view what) {
  if (!host_memory_fits(bytes)) throw Error(host_memory_shortage(bytes, what));
}

void format_bytes_into(char* text, size_t size, uint64_t bytes) {
  if (bytes < 1024) {
    std::snprintf(text, size, "%llu B", static_cast<unsigned long long>(bytes));
    return;
  }
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = double(bytes) / 1024.0;
  int unit = 0;
  while (value >= 1024.0 && unit < 5) {
    value /= 1024.0;
    ++unit;
  }
  std::snprintf(text, size, "%.2f %s", value, units[unit]);
}

std::string format_bytes(uint64_t bytes) {
  char text[32];
  format_bytes_into(text, sizeof text, bytes);
  return text;
}

bool system_allocator_build() { return LAMINA_SYSTEM_ALLOCATOR != 0; }

void release_free_host_memory() {
  empty_cache(Device::cpu());
#if !LAMINA_SYSTEM_ALLOCATOR
  mi_collect(true);
#endif
}

void return_freed_memory_promptly() {
#if !LAMINA_SYSTEM_ALLOCATOR
  // mimalloc 2.0's name for it; its environment variables (read at its start) win.
  if (std::getenv("MIMALLOC_RESET_DELAY") == nullptr && std::getenv("MIMALLOC_DECOMMIT_DELAY") == nullptr)
    mi_option_set(mi_option_decommit_delay, 0);
#endif
}

}  // namespace lamina

// Sanitizer builds keep the runtime's own operator new, which ASan instruments.
#if !LAMINA_SYSTEM_ALLOCATOR
void* operator new(std::size_t bytes) { return lamina::allocate_or_throw(bytes, alignof(std::max_align_t)); }
void* operator new[](std::size_t bytes) { return lamina::allocate_or_throw(bytes, alignof(std::max_align_t)); }
void* operator new(std::size_t bytes, std::align_val_t alignment) {
  return lamina::allocate_or_throw(bytes, std::size_t(alignment));
}
void* operator new[](std::size_t bytes, std::align_val_t alignment) {
  return lamina::allocate_or_throw(bytes, std::size_t(alignment));
}
#endif
