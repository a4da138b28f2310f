#!/usr/bin/env bash
# The test command of the README (and of CI): installs missing packages, fetches the real model
# (tools/fetch-models.sh, optional), configures build/
# (or $LAMINA_BUILD_DIR) in Release with the ASan+UBSan suites, builds everything, runs the
# fuzz targets briefly, then every suite. ctest's summary is the last thing printed; the exit
# status is ctest's (or the fuzz run's, when it fails).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${LAMINA_BUILD_DIR:-build}"
cd "$repo_root"

tools/install-deps.sh
# The real pretrained model (SmolLM2-135M-Instruct, GGUF) for the tests that need it; offline it
# only warns, and those tests show as skipped.
tools/fetch-models.sh --optional
tools/configure.sh -DLAMINA_BUILD_TESTS=ON -DLAMINA_SANITIZE_TESTS=ON
cmake --build "$build_dir" -j2
# A short bounded fuzz run (tools/fuzz.sh: its own clang++ build, ~20 s per target), before
# ctest so that the test summary stays the last line.
tools/fuzz.sh

# ctest prints the suites that did not run (the CUDA suite without a GPU, the `_assets` entries
# without ../shared/assets) after its summary, so the closing line is written here from ctest's
# own result: "N passed, N failed". Two suites at a time: the machine this is sized for has two
# cores, and a suite and its ASan twin keep out of each other's files (tests/scratch_dir.h).
ctest_log="$build_dir/ctest-last.log"
set +e
ctest --test-dir "$build_dir" --output-on-failure -j2 2>&1 | tee "$ctest_log"
ctest_status=${PIPESTATUS[0]}
set -e
# Why each skipped entry skipped (ctest shows a skipped test's output only in its own log).
grep -h '^SKIPPED:' "$build_dir/Testing/Temporary/LastTest.log" 2>/dev/null | sort -u || true
summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$ctest_log" | tail -n 1)
if [[ -z "$summary" ]]; then
  echo "0 passed, 1 failed (ctest printed no summary; exit status $ctest_status)"
  exit $((ctest_status == 0 ? 1 : ctest_status))
fi
failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$summary")
total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$summary")
skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' "$ctest_log" || true)
not_run=""
((skipped > 0)) && not_run=" ($skipped skipped: see above)"
echo "$((total - failed - skipped)) passed, $failed failed$not_run"
exit "$ctest_status"
