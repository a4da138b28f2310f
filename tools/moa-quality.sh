#!/usr/bin/env bash
# MoA against the uniform StreamingLLM baseline on a real model: profiles the model on calibration
# data, searches a MoA plan at a density, and prints the perplexity of dense attention, the MoA
# plan and a uniform sink + window plan of the MoA plan's own density at each evaluation length.
#
#   tools/moa-quality.sh MODEL CALIBRATION.jsonl EVAL.jsonl [DENSITY] [PROFILE_LENGTH] [EVAL_LENGTHS] [TOKENS]
#
# Defaults: density 0.5, profile length 2048 (8 items), evaluation at 2048 and 4096 on the first
# 16384 tokens of EVAL.jsonl ({"text"} lines), windows without overlap. Calibration lines may be
# {"text"} or {"prompt", "completion"} (the loss on the completion, as MoA profiles). Work files
# go to $MOA_WORK (default: a temporary folder). CPU: SmolLM2-135M at 2K takes about a minute per
# profiled item and half a minute per evaluated window on two cores.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
model=$1 calibration=$2 evaluation=$3
density=${4:-0.5} profile_length=${5:-2048} eval_lengths=${6:-2048,4096} tokens=${7:-16384}
lamina=${LAMINA:-build/lamina}
work=${MOA_WORK:-$(mktemp -d)}
mkdir -p "$work"
[[ -x $lamina ]] || { echo "moa-quality.sh: no lamina binary at $lamina (build it, or set LAMINA)" >&2; exit 1; }

"$lamina" sparse profile --model "$model" --data "$calibration" --lengths "$profile_length" --items 8 \
  --out "$work/profile.json" >&2
"$lamina" sparse plan --profile "$work/profile.json" --density "$density" --out "$work/moa.json" >&2

perplexity() {  # length, extra flags -> the eval's JSON line
  "$lamina" eval ppl --model "$model" --data "$evaluation" --max-tokens "$tokens" --seq-len "$1" --stride "$1" \
    "${@:2}" 2>/dev/null | tail -1
}
field() { grep -o "\"$1\":[^,}]*" | cut -d: -f2; }

printf '| length | dense | MoA (density) | uniform (density) |\n|---|---|---|---|\n'
for length in ${eval_lengths//,/ }; do
  dense=$(perplexity "$length" | field perplexity)
  moa_line=$(perplexity "$length" --attention-plan "$work/moa.json")
  moa_density=$(field attention_density <<< "$moa_line")
  "$lamina" sparse uniform --model "$model" --density "$moa_density" --length "$length" \
    --out "$work/uniform_$length.json" > /dev/null
  uniform_line=$(perplexity "$length" --attention-plan "$work/uniform_$length.json")
  printf '| %s | %.4f | %.4f (%.3f) | %.4f (%.3f) |\n' "$length" "$dense" "$(field perplexity <<< "$moa_line")" \
    "$moa_density" "$(field perplexity <<< "$uniform_line")" "$(field attention_density <<< "$uniform_line")"
done
echo "work files in $work" >&2
