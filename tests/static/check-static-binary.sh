#!/usr/bin/env bash
# The ctest "static_binary" of a -DLAMINA_STATIC=ON build (registered in CMakeLists.txt): fails
# when the lamina executable needs a shared library beyond the C library's own (libc, libm, the
# dynamic loader), which the issue allows, or when the static binary does not run.
#
#   tests/static/check-static-binary.sh LAMINA_BINARY [ASSETS_DIR] [MODELS_DIR]
#
# It checks, in order:
#   1. the ELF dynamic section (readelf -d): every NEEDED library is libc, libm or ld-linux;
#   2. `lamina info` agrees: its link line says static, or lists only those libraries;
#   3. the binary generates: greedy ids of the stories260k test model equal the golden sequence
#      (skipped, with a message, when ASSETS_DIR has no stories260k/), and when MODELS_DIR holds
#      SmolLM2-135M-Instruct.Q4_1.gguf, 8 tokens of text from it (skipped with a message otherwise).
set -euo pipefail

binary="${1:?usage: check-static-binary.sh LAMINA_BINARY [ASSETS_DIR] [MODELS_DIR]}"
assets_dir="${2:-}"
models_dir="${3:-}"
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# The libraries the issue allows: the C library's (glibc splits libm and the loader out of libc).
allowed_library() {
  case "$1" in
    libc.so.* | libm.so.* | ld-linux*.so.* | ld64.so.*) return 0 ;;
    *) return 1 ;;
  esac
}

if [[ ! -x "$binary" ]]; then
  echo "FAIL: $binary is not an executable file" >&2
  exit 1
fi

# 1. What the ELF file asks the dynamic loader for. A fully static binary has no dynamic section.
if ! dynamic_section="$(readelf --dynamic --wide "$binary" 2>&1)"; then
  echo "FAIL: readelf cannot read $binary as an ELF file: $dynamic_section" >&2
  exit 1
fi
needed=()
while read -r library; do
  [[ -n "$library" ]] && needed+=("$library")
done < <(sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p' <<<"$dynamic_section")
for library in "${needed[@]}"; do
  allowed_library "$library" || fail "$binary needs the shared library $library (only libc, libm and the loader are allowed)"
done
if (( ${#needed[@]} == 0 )); then
  echo "ok: $binary needs no shared library (readelf: $(grep -m 1 . <<<"$dynamic_section"))"
else
  echo "NEEDED by $binary: ${needed[*]}"
fi

# 2. What the binary says about itself, read from the loader at run time.
info="$("$binary" info)" || fail "'lamina info' exited with an error"
link_line="$(grep -E '^ *link:' <<<"$info" || true)"
echo "lamina info: $(sed 's/^ *link: *//' <<<"$link_line")"
if [[ -z "$link_line" ]]; then
  fail "'lamina info' printed no 'link:' line"
elif ! grep -q 'link: *static' <<<"$link_line"; then
  # A dynamic line is accepted when every library it lists is allowed.
  listed="$(sed -n 's/.*dynamic (\(.*\)).*/\1/p' <<<"$link_line" | tr ',' ' ')"
  [[ -n "$listed" ]] || fail "'lamina info' link line is neither static nor dynamic (libraries): $link_line"
  for library in $listed; do
    allowed_library "$library" || fail "'lamina info' reports the shared library $library loaded"
  done
fi

# 3. The static binary runs a model: the golden greedy sequence of the tiny stories260k model.
stories="$assets_dir/stories260k"
if [[ -n "$assets_dir" && -f "$stories/greedy_from_bos.txt" ]]; then
  expected="$(tr -s ' \n' ' ' <"$stories/greedy_from_bos.txt" | sed 's/ *$//')"
  got="$("$binary" generate --model "$stories" --prompt-ids 1 --max-new-tokens 40 --output ids | tr -s ' \n' ' ' | sed 's/ *$//')" \
    || fail "'lamina generate' on $stories exited with an error"
  if [[ "$got" == "$expected" ]]; then
    echo "ok: greedy generation from stories260k equals greedy_from_bos.txt"
  else
    fail "greedy generation from stories260k differs from greedy_from_bos.txt:"$'\n'"  expected: $expected"$'\n'"  got:      $got"
  fi
else
  echo "skipped: no test assets at '${assets_dir}' (stories260k/), the golden generation is not checked"
fi

smollm="$models_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -n "$models_dir" && -f "$smollm" ]]; then
  if text="$("$binary" generate --model "$smollm" --prompt hi --max-new-tokens 8)"; then
    if [[ -n "${text//[[:space:]]/}" ]]; then
      echo "ok: SmolLM2 Q4_1 GGUF generated: ${text//$'\n'/ }"
    else
      fail "'lamina generate' on $smollm printed no text"
    fi
  else
    fail "'lamina generate' on $smollm exited with an error"
  fi
else
  echo "skipped: no $smollm (tools/fetch-models.sh fetches it)"
fi

if (( failures > 0 )); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "static binary checks passed"
