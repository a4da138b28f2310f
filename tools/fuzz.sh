#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang++ in build-fuzz/ (or
# $LAMINA_FUZZ_BUILD_DIR) and runs each one for a bounded time: LAMINA_FUZZ_SECONDS per target
# (default 20), inputs up to 4 KiB, starting from its corpus in build-fuzz/corpus/<target>/
# (kept between runs, so later runs start where earlier ones got to) and from the hand-made
# inputs in tests/fuzz/seeds/<target>/ when there are any (read only: they give structured
# formats such as JSONL a start the fuzzer would take long to find). Exits non-zero on the
# first crash, leak or failed check; libFuzzer writes the input that caused it into
# build-fuzz/artifacts/. Installs clang and libFuzzer when missing and run as root.
#
# usage: tools/fuzz.sh [TARGET...]   (default: every fuzz_*.cpp in tests/fuzz/)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${LAMINA_FUZZ_BUILD_DIR:-build-fuzz}"
seconds="${LAMINA_FUZZ_SECONDS:-20}"
cd "$repo_root"

# clang++ and libFuzzer's runtime (Debian: clang, libclang-rt-dev).
fuzzer_runtime_present() {
  command -v clang++ >/dev/null 2>&1 || return 1
  echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
    clang++ -x c++ -fsanitize=fuzzer - -o /dev/null >/dev/null 2>&1
}
if ! fuzzer_runtime_present; then
  if (( EUID != 0 )) || ! command -v apt-get >/dev/null 2>&1; then
    echo "fuzz.sh: clang++ with libFuzzer is needed (Debian: sudo apt-get install -y clang libclang-rt-dev)" >&2
    exit 1
  fi
  echo "fuzz.sh: installing clang libclang-rt-dev" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q clang libclang-rt-dev >&2; then
    apt-get update -q >&2
    apt-get install -y -q clang libclang-rt-dev >&2
  fi
fi

if (( $# > 0 )); then
  targets=("$@")
else
  targets=()
  for source in tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$source" .cpp)"); done
fi

generator=()
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
  -DLAMINA_FUZZ=ON -DLAMINA_CUDA=OFF >/dev/null
cmake --build "$build_dir" -j2 --target "${targets[@]}"

for target in "${targets[@]}"; do
  corpus="$build_dir/corpus/$target"
  artifacts="$build_dir/artifacts/$target"
  log="$build_dir/logs/$target.log"
  seeds=()
  if [[ -d "tests/fuzz/seeds/$target" ]]; then seeds=("tests/fuzz/seeds/$target"); fi
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  echo "fuzz.sh: running $target for ${seconds}s (log: $log)"
  if ! "$build_dir/tests/fuzz/$target" "$corpus" "${seeds[@]}" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
       -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log" >&2
    echo "fuzz.sh: $target FAILED; the input that broke it is in $artifacts/, the whole log in $log" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  echo "fuzz.sh: $target: ${runs:-?} inputs in ${seconds}s, no crash and no failed check"
done
