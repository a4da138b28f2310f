#!/usr/bin/env bash
# Configures the build folder (default build/, or $LAMINA_BUILD_DIR) for a Release build,
# with Ninja when it is installed. Extra arguments go to cmake: tools/configure.sh -DLAMINA_CUDA=OFF
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${LAMINA_BUILD_DIR:-build}"
cd "$repo_root"

generator=()
# An existing build folder keeps the generator it was made with (cmake refuses to switch).
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
