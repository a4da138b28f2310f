// Which wide CPU instructions this machine can run, detected once at run time. The build may
// target a newer CPU than the one it runs on (CI machines lack AMX or AVX-512 BF16), so every
// kernel that uses such instructions asks here before it runs them.
#pragma once

namespace lamina::ops::cpu {

struct CpuFeatures {
  bool avx2_fma = false;     // AVX2 and FMA3, with the OS saving the YMM state
  bool avx512f = false;     // AVX-512 Foundation, with the OS saving the ZMM state
  bool avx512bf16 = false;  // vdpbf16ps / vcvtne2ps2bf16 (plus AVX-512 BW and VL, which they need)
  bool amx_bf16 = false;    // tdpbf16ps, and the kernel granted this process the tile state
  bool avx512vnni = false;  // vpdpbusd on ZMM (AVX-512 VNNI, plus AVX-512 BW and VL)
  bool avx_vnni = false;    // the VEX-encoded vpdpbusd on YMM (AVX-VNNI), with the OS saving the YMM state
  bool amd = false;         // cpuid's vendor is AuthenticAMD (for choices that differ by core design)
};

// Detected on the first call (cpuid, xgetbv, and for AMX arch_prctl(ARCH_REQ_XCOMP_PERM));
// thread-safe, cheap afterwards.
const CpuFeatures& cpu_features();

}  // namespace lamina::ops::cpu
