#!/usr/bin/env bash
# Sampling cost of each steering route against unconditional sampling, 1,000 crystals of mp_20-dng,
# one after another in one run (fresh folders). Prints wall seconds per route.
#   CRYSTALFORGE_DATA_DIR=../shared/data bash benchmarks/steering_cost.sh runs/bench/steer-cost
set -euo pipefail
work=${1:?usage: steering_cost.sh WORK_DIR}
rm -rf "$work"; mkdir -p "$work"
run() {
  local name=$1; shift
  local start=$(date +%s.%N)
  crystalforge generate --model mp_20-dng -n 1000 --out "$work/$name" "$@" > /dev/null 2>&1
  local end=$(date +%s.%N)
  printf '| %s | %.0f |\n' "$name" "$(echo "$end - $start" | bc)"
}
echo "| route | wall s (1,000 kept crystals, 50 steps) |"
echo "|---|---|"
run unconditional
run importance-x4 --target "band_gap=1±0.5" --route importance --oversample 4
run gradient --target "band_gap=1±0.5" --route gradient
run elements --elements Li,P,S
