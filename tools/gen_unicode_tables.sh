#!/usr/bin/env bash
# Generates models/tokenizer/unicode_tables.cpp: the code point ranges that Llama-3's
# pre-tokenizer pattern treats as letters (\p{L}), numbers (\p{N}) or whitespace (\s, the
# White_Space property). Everything outside the ranges is "other".
#
# Input: a directory holding two text files of the Unicode Character Database (UCD):
# UnicodeData.txt for the general category and PropList.txt for White_Space. The version
# must be the one of HF `tokenizers` (its regex engine's tables), which is Unicode 16.0.0.
# Debian's `unicode-data` package has no 16.0 (bookworm 15.0, trixie 15.1, sid 17.0 when this
# was written), so the committed tables come from the UCD 16.0.0 files that Perl 5.42.3's
# source keeps unchanged in lib/unicore/ (Debian source package perl 5.42.3-1), fetched with apt:
#   (a deb-src line for sid in the apt sources, then)
#   apt-get source --download-only perl=5.42.3-1
#   tar xJf perl_5.42.3.orig.tar.xz perl-5.42.3/lib/unicore/UnicodeData.txt perl-5.42.3/lib/unicore/PropList.txt
#   tools/gen_unicode_tables.sh perl-5.42.3/lib/unicore
# Their sha256 sums (the `case` below knows them and the output's header repeats them):
#   UnicodeData.txt  ff58e5823bd095166564a006e47d111130813dcf8bf234ef79fa51a870edb48f
#   PropList.txt     53d614508e2a0b2305a8aa21cd60d993de9326cdf65993660dfcce4503548583
# PropList.txt's first line names PropList-16.0.0.txt; UnicodeData.txt, which names no
# version, is byte for byte icu/source/data/unidata/UnicodeData.txt of ICU 76.1 (Unicode 16.0,
# Debian source package icu 76.1-4). The tables made from them also agree, code point by code
# point, with the general categories of PyPI's unicodedata2 16.0.0.
#
# The output is committed; the build never runs this script. To check that the committed
# file is what the script makes:
#   tools/gen_unicode_tables.sh UCD_DIR && git diff --exit-code models/tokenizer/unicode_tables.cpp
#
# usage: tools/gen_unicode_tables.sh UCD_DIR [OUTPUT]
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# No default directory: the system's /usr/share/unicode is whatever version the distribution
# ships, and silently regenerating from it would change the tokenizer.
if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: tools/gen_unicode_tables.sh UCD_DIR [OUTPUT] (see the script's header for UCD 16.0.0)" >&2
  exit 2
fi
ucd_dir="$1"
output="${2:-$repo_root/models/tokenizer/unicode_tables.cpp}"

for file in UnicodeData.txt PropList.txt; do
  if [[ ! -f "$ucd_dir/$file" ]]; then
    echo "gen_unicode_tables.sh: $ucd_dir/$file not found (the script's header says where to get it)" >&2
    exit 1
  fi
done

unicode_data_sha256="$(sha256sum < "$ucd_dir/UnicodeData.txt" | cut -d ' ' -f 1)"
prop_list_sha256="$(sha256sum < "$ucd_dir/PropList.txt" | cut -d ' ' -f 1)"
# Where the inputs with these checksums come from, for the output's header: files of another
# origin still work (a later Unicode version, say), and the header then says so.
case "$unicode_data_sha256 $prop_list_sha256" in
  "ff58e5823bd095166564a006e47d111130813dcf8bf234ef79fa51a870edb48f 53d614508e2a0b2305a8aa21cd60d993de9326cdf65993660dfcce4503548583")
    origin="lib/unicore/ of Perl 5.42.3's source, Debian source package perl 5.42.3-1" ;;
  *)
    origin="files not recorded in tools/gen_unicode_tables.sh"
    echo "gen_unicode_tables.sh: warning: inputs of unrecorded origin (add their checksums to the script)" >&2 ;;
esac

# PropList.txt starts with "# PropList-16.0.0.txt": the only place the version is written.
version="$(head -n 1 "$ucd_dir/PropList.txt" | sed -n 's/^# PropList-\([0-9.]*\)\.txt.*$/\1/p')"
if [[ -z "$version" ]]; then
  echo "gen_unicode_tables.sh: cannot read the Unicode version from $ucd_dir/PropList.txt" >&2
  exit 1
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT

# Pass 1 reads White_Space from PropList.txt; pass 2 walks UnicodeData.txt (sorted by code
# point) and merges consecutive code points of the same class into ranges. Big blocks appear
# as a "<..., First>" line followed by a "<..., Last>" line. Written for any POSIX awk (mawk
# has no strtonum, hence hex()).
awk -F ';' -v version="$version" -v origin="$origin" \
    -v unicode_data_sha256="$unicode_data_sha256" -v prop_list_sha256="$prop_list_sha256" '
function hex(text,    i, digit, value) {
  value = 0
  text = toupper(text)
  for (i = 1; i <= length(text); i++) {
    digit = index("0123456789ABCDEF", substr(text, i, 1)) - 1
    if (digit < 0) { print "bad hex: " text > "/dev/stderr"; exit 1 }
    value = value * 16 + digit
  }
  return value
}
function class_of(cp, category) {
  if (cp in white_space) return "W"
  if (category ~ /^L[ultmo]$/) return "L"
  if (category ~ /^N[dlo]$/) return "N"
  return "O"
}
function add(first, last, cls) {
  if (cls == "O") return  # "other" is what lies outside every range
  if (count > 0 && cls == range_class[count] && first == range_last[count] + 1) {
    range_last[count] = last
    return
  }
  count++
  range_first[count] = first; range_last[count] = last; range_class[count] = cls
}
FNR == NR {
  sub(/#.*/, "")
  if ($0 !~ /White_Space/ || $0 ~ /Pattern_White_Space/) next
  gsub(/ /, "", $1)
  n = split($1, bounds, /\.\./)
  first = hex(bounds[1]); last = (n == 2) ? hex(bounds[2]) : first
  for (cp = first; cp <= last; cp++) white_space[cp] = 1
  next
}
{
  cp = hex($1)
  if ($2 ~ /, First>$/) { block_first = cp; next }
  if ($2 ~ /, Last>$/) { add(block_first, cp, class_of(block_first, $3)); next }
  add(cp, cp, class_of(cp, $3))
}
END {
  names["L"] = "letter"; names["N"] = "number"; names["W"] = "whitespace"
  print "// Generated by tools/gen_unicode_tables.sh from the Unicode Character Database " version
  print "// (" origin "):"
  print "//   UnicodeData.txt (general categories) sha256 " unicode_data_sha256
  print "//   PropList.txt (White_Space)           sha256 " prop_list_sha256
  print "// Do not edit: rerun the script."
  print "//"
  print "// Sorted, disjoint ranges of letters (Lu Ll Lt Lm Lo), numbers (Nd Nl No) and White_Space"
  print "// code points; every code point outside them is \"other\"."
  print "#include \"models/tokenizer/unicode.h\""
  print ""
  print "namespace lamina::tokenizer {"
  print ""
  print "const char* const kUnicodeVersion = \"" version "\";"
  print ""
  print "const CharRange kCharRanges[] = {"
  for (i = 1; i <= count; i++) {
    printf "    {0x%06X, 0x%06X, CharClass::%s},\n", range_first[i], range_last[i], names[range_class[i]]
  }
  print "};"
  print ""
  print "const size_t kCharRangeCount = sizeof(kCharRanges) / sizeof(kCharRanges[0]);"
  print ""
  print "}  // namespace lamina::tokenizer"
}
' "$ucd_dir/PropList.txt" "$ucd_dir/UnicodeData.txt" > "$tmp"

cat "$tmp" > "$output"  # not mv: keep the output file's ordinary permissions
echo "gen_unicode_tables.sh: wrote $output (Unicode $version, $(grep -c '^    {0x' "$output") ranges)" >&2
