// Run-time detection of AVX-512 (with VNNI), AVX-VNNI and AMX: cpuid says what the CPU implements, xgetbv whether the
// OS saves the wide register state, and on Linux arch_prctl asks the kernel for the AMX tile
// data state, which a process must request before its first tile instruction.
#include "ops/cpu/cpu_features.h"

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lamina::ops::cpu {
namespace {

#if defined(__x86_64__) || defined(__i386__)
// xgetbv(0) without needing the "xsave" target for the intrinsic; only called once cpuid
// reported OSXSAVE, so the instruction exists.
uint64_t read_xcr0() {
  uint32_t low = 0, high = 0;
  __asm__ volatile("xgetbv" : "=a"(low), "=d"(high) : "c"(0));
  return (uint64_t(high) << 32) | low;
}

bool bit(uint32_t word, int index) { return (word >> index) & 1u; }

// Linux grants the AMX tile data state (XFEATURE 18) per process, on request.
bool request_amx_permission() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureTileData = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) != 0) return false;
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) != 0) return false;
  return (granted >> kXfeatureTileData) & 1ul;
#else
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures features;
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return features;
  // The vendor string is ebx, edx, ecx: "Auth" "enti" "cAMD".
  features.amd = ebx == 0x68747541u && edx == 0x69746e65u && ecx == 0x444d4163u;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return features;
  const bool has_fma = bit(ecx, 12), has_osxsave = bit(ecx, 27), has_avx = bit(ecx, 28);
  if (!has_osxsave || !has_avx) return features;
  const uint64_t xcr0 = read_xcr0();
  const bool os_saves_ymm = (xcr0 & 0x6) == 0x6;             // SSE and AVX state
  const bool os_saves_zmm = os_saves_ymm && (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM0-15 high halves, ZMM16-31
  const bool os_saves_tiles = (xcr0 & 0x60000) == 0x60000;    // TILECFG and TILEDATA
  if (__get_cpuid_max(0, nullptr) < 7) return features;
  uint32_t leaf7_ebx = 0, leaf7_ecx = 0, leaf7_edx = 0, leaf7_1_eax = 0;
  __cpuid_count(7, 0, eax, leaf7_ebx, leaf7_ecx, leaf7_edx);
  const uint32_t max_subleaf = eax;
  if (max_subleaf >= 1) __cpuid_count(7, 1, leaf7_1_eax, ebx, ecx, edx);
  features.avx2_fma = os_saves_ymm && has_fma && bit(leaf7_ebx, 5);
  features.avx512f = os_saves_zmm && bit(leaf7_ebx, 16);
  const bool avx512bw_vl = bit(leaf7_ebx, 30) && bit(leaf7_ebx, 31);
  features.avx512bf16 = features.avx512f && avx512bw_vl && bit(leaf7_1_eax, 5);
  features.avx512vnni = features.avx512f && avx512bw_vl && bit(leaf7_ecx, 11);
  features.avx_vnni = os_saves_ymm && bit(leaf7_1_eax, 4);
  const bool amx_tile = bit(leaf7_edx, 24), amx_bf16 = bit(leaf7_edx, 22);
  features.amx_bf16 = os_saves_tiles && amx_tile && amx_bf16 && request_amx_permission();
  return features;
}
#else
CpuFeatures detect() { return {}; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();  // thread-safe one-time initialisation
  return features;
}

}  // namespace lamina::ops::cpu
