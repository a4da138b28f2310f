#!/usr/bin/env bash
# The first command of the README: installs missing packages, builds the lamina executable
# in build/ (or $LAMINA_BUILD_DIR) and runs `lamina demo`: a small Llama pretrained on text it
# generates, fine-tuned in the Llama-3 chat format and tested on held-out questions, on the CPU.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${LAMINA_BUILD_DIR:-build}"
cd "$repo_root"

tools/install-deps.sh
tools/configure.sh
cmake --build "$build_dir" --target lamina -j2
exec "$build_dir/lamina" demo
