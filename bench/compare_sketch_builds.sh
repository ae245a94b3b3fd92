#!/usr/bin/env bash
# Dense SJLT of two builds of bench_sketch, run back to back in rounds (old, new at the
# level chosen for this CPU, new at each forced level), each run's SJLT time paired with
# the copy probe of the same run (bench_common.h). Prints every run and the medians.
#   bench/compare_sketch_builds.sh OLD/bench_sketch NEW/bench_sketch [rounds] [levels...]
# Example (docs/portability.md): the -march=native build of the previous commit against
# the dispatching build, levels "auto baseline avx2".
set -euo pipefail
old=$1 new=$2 rounds=${3:-7}
shift $(( $# < 3 ? $# : 3 ))
levels=${*:-auto baseline}
args=(--ks 4096 --sparsity 0 --reps 21 --no-fjlt)
out=$(mktemp -d)
row() { grep -E '^\| 4096 ' "$1" | awk -F'|' '{gsub(/ /,""); print $3, $5, $6}'; }  # ms, /copy, best
for r in $(seq "$rounds"); do
  "$old" "${args[@]}" > "$out/old.$r"
  echo "round $r old: $(row "$out/old.$r")"
  for l in $levels; do
    if [ "$l" = auto ]; then "$new" "${args[@]}" > "$out/$l.$r"
    else GRASS_CPU_CAPABILITY=$l "$new" "${args[@]}" > "$out/$l.$r"; fi
    echo "round $r new $l: $(row "$out/$l.$r")"
  done
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "medians over $rounds rounds (SJLT dense, p = 131072, B = 128, k = 4096, float32, ${OMP_NUM_THREADS:-all} threads): ms, kernel/copy (median of pairs), best (fastest kernel / fastest copy)"
for name in old $levels; do
  ms=$(for r in $(seq "$rounds"); do row "$out/$name.$r"; done | awk '{print $1}' | median)
  ratio=$(for r in $(seq "$rounds"); do row "$out/$name.$r"; done | awk '{print $2}' | median)
  best=$(for r in $(seq "$rounds"); do row "$out/$name.$r"; done | awk '{print $3}' | median)
  echo "$name: $ms ms, /copy $ratio, best $best"
done
rm -rf "$out"
