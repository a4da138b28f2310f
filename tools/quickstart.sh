#!/usr/bin/env bash
# The first command of the README: installs missing packages, builds the lamina executable
# in build/ (or $LAMINA_BUILD_DIR) and runs `lamina demo`. Today the demo is a CPU showcase
# (a small MLP trained with lamina's autograd and fused AdamW); the full Llama pipeline demo
# replaces it when training lands.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${LAMINA_BUILD_DIR:-build}"
cd "$repo_root"

tools/install-deps.sh
tools/configure.sh
cmake --build "$build_dir" --target lamina -j2
exec "$build_dir/lamina" demo
