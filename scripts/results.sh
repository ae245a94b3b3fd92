#!/usr/bin/env bash
# Regenerate every table and plot of docs/results.md (about an hour on 2 CPU cores the
# first time; the dense Gaussian projection at k = 4096 and 8192 is the slowest part).
# Each command caches its work under runs/eval and resumes after an interruption; rerun
# this script to finish an interrupted run. Tables are printed and kept in
# runs/eval/<experiment>/results.md; plots go to docs/img.
#
#   bash scripts/results.sh                 # everything
#   bash scripts/results.sh lds-table       # one experiment (any name below)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RUN=("$PY" experiments/paper.py --threads "${THREADS:-2}")

declare -A CMD=(
  [lds-table]="lds-table"
  [fashion]="lds-table --dataset fashion_mnist --ks 4096 --kinds influence"
  [mislabel]="mislabel"
  [removal]="removal --damping 0.3 --exact --exact-damping 10"
  [stability]="stability"
  [lora]="lora"
  [sequence]="sequence"
)
ORDER=(lds-table fashion mislabel removal stability lora sequence)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  [ -n "${CMD[$name]+x}" ] || { echo "unknown experiment '$name' (one of: ${!CMD[*]})" >&2; exit 2; }
  echo "== $name: ${RUN[*]} ${CMD[$name]}"
  # shellcheck disable=SC2086
  "${RUN[@]}" ${CMD[$name]}
done
