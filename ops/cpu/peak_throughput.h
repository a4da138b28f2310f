// Peak arithmetic rates of this CPU, measured by short micro-benchmarks on register- and
// tile-resident data: the ceiling a GEMM or a profile can be compared against.
#pragma once

namespace lamina::ops::cpu {

// GFLOP/s summed over the threads (one multiply-add counts as two flops); 0 where the CPU
// lacks the instructions.
struct PeakThroughput {
  double f32_fma_gflops = 0;   // vfmadd231ps on 512-bit (AVX-512F) or 256-bit (AVX2+FMA) vectors
  double bf16_dot_gflops = 0;  // vdpbf16ps on 512-bit vectors
  double amx_bf16_gflops = 0;  // tdpbf16ps on 16x32 bf16 tiles
};

// Runs each benchmark on `threads` threads at once (clamped to 1 or more), about 0.2 s in all.
PeakThroughput measure_peak_throughput(int threads);
// The same with about `seconds_each` per benchmark (plus a calibration of a twentieth of it); on
// one thread it runs on the calling thread and leaves the thread pool alone.
PeakThroughput measure_peak_throughput(int threads, double seconds_each);

}  // namespace lamina::ops::cpu
