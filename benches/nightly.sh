#!/usr/bin/env bash
# The nightly case (issue 6): the complete job on a store that already holds the results of the
# day before, which is how a scheduled complete job runs in production (the end-to-end
# benchmark always starts from an empty store). Each repeat runs the complete job on day 1's
# exports into a fresh store, then on a copy of that store the complete job again: once on the
# same exports (every task finds no change) and once on day 2's HR export (1% joiners, movers
# and leavers). Prints each run's wall time and peak RSS, and the tasks of the day-2 run.
#
#   cargo build --release && benches/nightly.sh 1000000 2
#
# Environment: IGAFLOW_BIN (default target/release/igaflow or under CARGO_TARGET_DIR),
# COMPANY (a folder `igaflow generate` wrote; generated into a temporary folder otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
REPEATS=${2:-1}
source benches/company.sh
echo "igaflow nightly complete job, $(nproc) cores, $(date -u +%FT%TZ), $BIN"

for i in $(seq 1 "$REPEATS"); do
  rm -rf "$WORK/store" "$WORK/again" "$WORK/day2"
  read -r C CM <<< "$(timed "$BIN" run "$COMPANY/pipeline" --job complete --store "$WORK/store" --as-of $AS_OF --quiet)"
  cp -r "$WORK/store" "$WORK/again"
  cp -r "$WORK/store" "$WORK/day2"
  read -r A AM <<< "$(timed "$BIN" run "$COMPANY/pipeline" --job complete --store "$WORK/again" --as-of $AS_OF --quiet)"
  read -r D DM <<< "$(GEN_DAY=day2 timed "$BIN" run "$COMPANY/pipeline" --job complete --store "$WORK/day2" --as-of 2026-11-26 --quiet)"
  echo "repeat $i: empty store ${C} s (${CM} MiB); same exports again ${A} s (${AM} MiB); day 2 ${D} s (${DM} MiB)"
  echo "  day 2 tasks: $(tasks "$WORK/day2" "task, status")"
done
