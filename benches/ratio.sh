#!/usr/bin/env bash
# The incremental job's time against the complete job's (issue 6: ≤ 10% at 1M identities),
# measured as pairs on a noisy machine: each repeat runs the complete job (day 1) on a fresh
# store, then the incremental job (0.1% of the owners changed) on a copy of the store it left.
# Prints each pair's wall times, peak RSS and ratio, then the median ratio; the incremental
# run's tasks come from `task_runs`.
#
#   cargo build --release && benches/ratio.sh 1000000 3
#
# Environment: IGAFLOW_BIN (default target/release/igaflow or under CARGO_TARGET_DIR),
# COMPANY (a folder `igaflow generate` wrote; generated into a temporary folder otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
REPEATS=${2:-3}
source benches/company.sh
echo "igaflow incremental/complete ratio, $(nproc) cores, $(date -u +%FT%TZ), $BIN"

RATIOS=()
for i in $(seq 1 "$REPEATS"); do
  rm -rf "$WORK/store" "$WORK/store_inc"
  read -r C CM <<< "$(timed "$BIN" run "$COMPANY/pipeline" --job complete --store "$WORK/store" --as-of $AS_OF --quiet)"
  cp -r "$WORK/store" "$WORK/store_inc"
  read -r I IM <<< "$(GEN_DAY=incremental timed "$BIN" run "$COMPANY/pipeline" --job incremental --store "$WORK/store_inc" --as-of $AS_OF --quiet)"
  R=$(python3 -c "print(f'{100 * $I / $C:.1f}')")
  RATIOS+=("$R")
  TASKS=$(tasks "$WORK/store_inc")
  echo "pair $i: complete ${C} s (${CM} MiB), incremental ${I} s (${IM} MiB) = ${R}%  [${TASKS}]"
done
python3 -c "import statistics,sys; print(f'median ratio: {statistics.median(map(float, sys.argv[1:])):.1f}%')" "${RATIOS[@]}"
