#!/usr/bin/env bash
# The test command of the README (and of CI): installs missing packages, configures build/
# (or $LAMINA_BUILD_DIR) in Release with the ASan+UBSan suites, builds everything, runs the
# fuzz targets briefly, then every suite. ctest's summary is the last thing printed; the exit
# status is ctest's (or the fuzz run's, when it fails).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${LAMINA_BUILD_DIR:-build}"
cd "$repo_root"

tools/install-deps.sh
tools/configure.sh -DLAMINA_BUILD_TESTS=ON -DLAMINA_SANITIZE_TESTS=ON
cmake --build "$build_dir" -j2
# A short bounded fuzz run (tools/fuzz.sh: its own clang++ build, ~20 s per target), before
# ctest so that ctest's summary stays the last line.
tools/fuzz.sh
exec ctest --test-dir "$build_dir" --output-on-failure
