#!/usr/bin/env bash
# Makes sure the Debian/Ubuntu packages lamina builds with are installed: a C++20 compiler,
# CMake, Ninja (or make), Eigen, mimalloc and doctest. Silent when everything is present;
# installs what is missing when run as root, otherwise prints the sudo command and fails.
# The CUDA toolkit is optional and not installed here (see README.md, LAMINA_CUDA).
set -euo pipefail

required=(cmake g++ libeigen3-dev libmimalloc-dev doctest-dev)

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps.sh: not a Debian-based system; install these yourself if the build cannot" \
       "find them: CMake >= 3.24, Ninja or make, a C++20 compiler, Eigen 3, mimalloc, doctest" >&2
  exit 0
fi

missing=()
for package in "${required[@]}"; do
  is_installed "$package" || missing+=("$package")
done
# Either build tool will do; Ninja is the one to install when neither is there.
if ! is_installed ninja-build && ! is_installed make; then
  missing+=(ninja-build)
fi

if (( ${#missing[@]} == 0 )); then
  exit 0
fi

if (( EUID != 0 )); then
  echo "install-deps.sh: missing packages: ${missing[*]}" >&2
  echo "install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh container has no package lists yet: update only when the first try fails.
if ! apt-get install -y -q "${missing[@]}" >&2; then
  apt-get update -q >&2
  apt-get install -y -q "${missing[@]}" >&2
fi
