#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (sized for an H100/H200 with 16 cores: under
# 8 minutes). It configures a Release build with the CUDA backend (build-gpu/, or
# $LAMINA_BUILD_DIR), builds the CLI and the CUDA test suite with every core, runs the suite
# (every CUDA op against its CPU twin), then `lamina bench ops --device cuda` (bf16 GEMM against a
# bare cuBLASLt call, memory-bound ops against a device copy, the allocator), and prints a short
# table last. Full logs go to $OUT when it is set (the device tool's output folder), else to
# <build>/gpu-check/. The exit status is non-zero when the build or any test fails.
#
#   tools/gpu-check.sh               run everything
#   tools/gpu-check.sh --fetch-deps  (on a Debian/Ubuntu machine with apt) download the build's
#                                    Debian packages (Eigen, mimalloc, doctest) into .gpu-deps/,
#                                    for a GPU machine that has CUDA but not these; carry that
#                                    folder along and this script unpacks and uses it.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
build_dir="${LAMINA_BUILD_DIR:-build-gpu}"
jobs="${LAMINA_JOBS:-$(nproc)}"  # every core by default
deps_dir="${LAMINA_GPU_DEPS:-$repo_root/.gpu-deps}"
deps_packages=(libeigen3-dev libmimalloc-dev libmimalloc2.0 doctest-dev)

if [[ "${1:-}" == "--fetch-deps" ]]; then
  mkdir -p "$deps_dir"
  if [[ "$deps_dir" == "$repo_root/.gpu-deps" ]]; then  # keep it out of git status (the device tool's carry takes it)
    grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
  fi
  (cd "$deps_dir" && apt-get download "${deps_packages[@]}") || exit 1
  echo "gpu-check: packages in $deps_dir (carry it to the GPU machine):"
  ls -1 "$deps_dir"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: tools/gpu-check.sh [--fetch-deps]" >&2
  exit 2
fi

logs="${OUT:-$build_dir/gpu-check}"
mkdir -p "$logs"
summary="$logs/summary.txt"
: > "$summary"
started=$SECONDS
note() { echo "$*" | tee -a "$summary"; }
elapsed() { echo $((SECONDS - $1)); }
# The device tool stops a command at 600 s, and what the command has not printed by then is lost:
# the phases after the build share what is left until $deadline (570 s after the start unless
# LAMINA_GPU_CHECK_SECONDS says otherwise), each keeping time back for the phases after it.
deadline=$((started + ${LAMINA_GPU_CHECK_SECONDS:-570}))
phase_limit() {  # phase_limit CAP RESERVE -> seconds for a phase: at most CAP, leaving RESERVE, at least 10
  local left=$((deadline - SECONDS - $2))
  ((left > $1)) && left=$1
  ((left < 10)) && left=10
  echo "$left"
}

# ---- what machine this is
{
  echo "== gpu-check $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.sm,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  "${CXX:-c++}" --version 2>&1 | head -1
  echo "cores: $(nproc)"
} > "$logs/machine.txt" 2>&1
cat "$logs/machine.txt"

# Build only for the GPU that is here (halves nvcc's time); both default targets otherwise.
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
[[ "$arch" =~ ^[0-9]+$ ]] || arch="80;90"

# ---- carried dependencies, when the machine lacks them
cmake_extra=()
if compgen -G "$deps_dir/*.deb" > /dev/null; then
  prefix=/tmp/lamina-deps
  mkdir -p "$prefix"
  for deb in "$deps_dir"/*.deb; do dpkg-deb -x "$deb" "$prefix" || exit 1; done
  cmake_extra+=("-DCMAKE_PREFIX_PATH=$prefix/usr")
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  note "dependencies: unpacked $(ls "$deps_dir"/*.deb | wc -l) packages from $deps_dir into $prefix"
fi

# ---- configure and build
phase=$SECONDS
generator=()
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja > /dev/null 2>&1; then generator=(-G Ninja); fi
if ! cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLAMINA_CUDA=ON \
      -DLAMINA_BUILD_TESTS=ON -DLAMINA_SANITIZE_TESTS=OFF "-DLAMINA_CUDA_ARCHITECTURES=$arch" "${cmake_extra[@]}" \
      > "$logs/configure.log" 2>&1; then
  tail -30 "$logs/configure.log"
  note "FAILED: configure (see configure.log)"
  exit 1
fi
if ! cmake --build "$build_dir" -j"$jobs" --target lamina test_cuda > "$logs/build.log" 2>&1; then
  grep -E "error|Error" "$logs/build.log" | head -40
  note "FAILED: build (see build.log)"
  exit 1
fi
build_seconds=$(elapsed $phase)
note "build: lamina + test_cuda for CUDA architectures $arch in ${build_seconds} s"

# ---- the CUDA test suite, one process per test file: a kernel fault (an illegal address, say)
# leaves the process's CUDA context unusable, so in one process it would fail every case after
# it and hide what those cases would have found. Every file's output goes to one log ($OUT
# brings back at most 8 files).
phase=$SECONDS
tests_status=0
tests_end=$((SECONDS + $(phase_limit 240 100)))
: > "$logs/test_cuda.log"
part="$(mktemp)"
total_cases=0 passed_cases=0 failed_cases=0 broken_files=""
for source in tests/cuda/test_*.cpp; do
  file="${source##*/}"
  limit=$((tests_end - SECONDS))
  ((limit < 10)) && limit=10
  timeout "$limit" "$build_dir/tests/test_cuda" --duration=true "--source-file=*/$file" > "$part" 2>&1
  status=$?
  { echo "== $file: exit $status (limit $limit s)"; cat "$part"; } >> "$logs/test_cuda.log"
  ((status != 0 && tests_status == 0)) && tests_status=$status
  cases="$(grep -E '^\[doctest\] test cases:' "$part" | tail -1)"
  if [[ -n "$cases" ]]; then
    read -r total passed failed < <(echo "$cases" | tr -cs '0-9' ' ' | awk '{print $1, $2, $3}')
    total_cases=$((total_cases + total)) passed_cases=$((passed_cases + passed)) failed_cases=$((failed_cases + failed))
  elif ((status != 77)); then
    broken_files+=" $file (exit $status$([[ $status -eq 124 ]] && echo ', timed out'))"
  fi
  note "tests $file: exit $status; ${cases:-no doctest summary}"
done
rm -f "$part"
tests_seconds=$(elapsed $phase)
grep -E "SKIPPED|ERROR|FAILED|error:" "$logs/test_cuda.log" | head -40
tests_line="test cases: $total_cases | $passed_cases passed | $failed_cases failed${broken_files:+; no summary from:$broken_files}"
note "tests: exit $tests_status in ${tests_seconds} s; $tests_line"

# ---- the benchmarks
phase=$SECONDS
timeout "$(phase_limit 150 60)" "$build_dir/lamina" bench ops --device cuda > "$logs/bench_cuda.jsonl" 2> "$logs/bench_cuda.log"
bench_status=$?
note "bench: exit $bench_status in $(elapsed $phase) s ($(wc -l < "$logs/bench_cuda.jsonl") JSON lines)"
[[ $bench_status -eq 0 ]] || tail -20 "$logs/bench_cuda.log"
# A training step of the ~30M model in bf16 mixed precision (what `lamina train --device cuda` runs).
phase=$SECONDS
timeout "$(phase_limit 90 5)" "$build_dir/lamina" bench train --device cuda --quick --batch-size 16 --seq-len 1024 \
  >> "$logs/bench_cuda.jsonl" 2>> "$logs/bench_cuda.log"
train_bench_status=$?
note "bench train: exit $train_bench_status in $(elapsed $phase) s"
[[ $train_bench_status -eq 0 ]] || tail -20 "$logs/bench_cuda.log"

# ---- the table: one row per benchmark case (flat JSON lines, read with awk)
field() {  # field NAME LINE -> the value of "NAME": in a flat JSON line (quotes dropped)
  echo "$2" | grep -o "\"$1\":[^,}]*" | head -1 | cut -d: -f2- | tr -d '"'
}
{
  echo
  echo "== lamina CUDA check: $(sed -n 3p "$logs/machine.txt")"
  printf '%-30s %-10s %12s %12s %8s %s\n' case dtype value baseline ratio target
  while IFS= read -r line; do
    name="$(field case "$line")"
    case "$name" in
      machine) continue ;;
      allocator_pair)
        printf '%-30s %-10s %9.0f ns %9.0f ns %8s %s\n' "$name" "-" "$(field ns_per_pair "$line")" \
          "$(field cudamalloc_free_ns_per_pair "$line")" "-" "(cudaMalloc+cudaFree)"
        ;;
      llama_30m_step*)
        printf '%-30s %-10s %9s tok/s %9s MFU %6s %s\n' "$name" "$(field dtype "$line")" \
          "$(field tokens_per_s "$line")" "$(field mfu "$line")" "-" "(no target)"
        ;;
      gemm*)
        printf '%-30s %-10s %7s TF/s %7s TF/s %8s %s\n' "$name" "$(field dtype "$line")" "$(field tflops "$line")" \
          "$(field cublaslt_tflops "$line")" "$(field ratio_vs_cublaslt "$line")" \
          ">=0.9: $(field meets_target "$line")"
        ;;
      *)
        printf '%-30s %-10s %7s GB/s %7s GB/s %8s %s\n' "$name" "$(field dtype "$line")" "$(field gbps "$line")" \
          "$(field device_copy_gbps "$line")" "$(field ratio_vs_device_copy "$line")" \
          ">=0.7: $(field meets_target "$line")"
        ;;
    esac
  done < "$logs/bench_cuda.jsonl"
  echo "tests: $tests_line (exit $tests_status); build ${build_seconds} s, tests ${tests_seconds} s, total $(elapsed $started) s"
} | tee -a "$summary"

[[ $tests_status -eq 0 && $bench_status -eq 0 && $train_bench_status -eq 0 ]]
