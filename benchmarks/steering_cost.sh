#!/usr/bin/env bash
# Sampling cost of each steering route against unconditional sampling, 1,000 kept crystals, one after
# another in one run (fresh folders). Prints wall seconds per route. Name routes to run only those
# (the unconditional row always runs, as the baseline of the same run).
#   CRYSTALFORGE_DATA_DIR=../shared/data bash benchmarks/steering_cost.sh runs/bench/steer-cost
#   CRYSTALFORGE_DATA_DIR=../shared/data bash benchmarks/steering_cost.sh runs/bench/steer-cost2 smc condition-w1
# The condition rows need the fine-tuned conditioned model (COND_MODEL, default runs/mp_20-dng-cond/model.pt).
set -euo pipefail
work=${1:?usage: steering_cost.sh WORK_DIR [ROUTE ...]}
shift
wanted=" $* "
cond=${COND_MODEL:-runs/mp_20-dng-cond/model.pt}
rm -rf "$work"; mkdir -p "$work"
run() {
  local name=$1 model=$2; shift 2
  if [ "$name" != unconditional ] && [ "$wanted" != "  " ] && [[ "$wanted" != *" $name "* ]]; then return; fi
  local start=$(date +%s.%N)
  crystalforge generate --model "$model" -n 1000 --out "$work/$name" "$@" > /dev/null 2>&1
  local end=$(date +%s.%N)
  printf '| %s | %.0f |\n' "$name" "$(echo "$end - $start" | bc)"
}
echo "| route | wall s (1,000 kept crystals, 50 steps) |"
echo "|---|---|"
run unconditional mp_20-dng
run importance-x4 mp_20-dng --target "band_gap=1±0.5" --route importance --oversample 4
run gradient mp_20-dng --target "band_gap=1±0.5" --route gradient
run smc mp_20-dng --target "band_gap=1±0.5" --route smc
run elements mp_20-dng --elements Li,P,S
run condition-w1 "$cond" --target "band_gap=1±0.5" --route condition --guidance 1
run condition-w2 "$cond" --target "band_gap=1±0.5" --route condition --guidance 2
