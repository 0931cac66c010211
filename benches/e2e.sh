#!/usr/bin/env bash
# End-to-end benchmark (issue 6): for each size, `igaflow generate`, the complete job (day 1),
# the incremental job (0.1% of the owners changed), the DuckDB peer on the same exports with
# its orders checked equal to igaflow's, and optionally the complete job under a memory limit.
# Writes benches/results/e2e.csv (one line per size, job and task) and benches/results/e2e.svg.
#
#   cargo build --release && benches/e2e.sh 10000 100000 1000000
#
# Environment: IGAFLOW_BIN (default target/release/igaflow or under CARGO_TARGET_DIR),
# MEMORY_LIMIT (e.g. 1GiB: also run the complete job with --memory-limit and compare orders),
# PEER=0 to skip the DuckDB peer (needs `pip install duckdb`).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("${@:-10000 100000 1000000}")
BIN="${IGAFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/igaflow}"
OUT=benches/results
mkdir -p "$OUT"
CSV="$OUT/e2e.csv"
echo "size,job,task,seconds,rows_read,changes,peak_rss_mib,start_s,end_s" > "$CSV"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
AS_OF=2026-11-25
echo "igaflow end-to-end benchmark, $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(date -u +%F)"

timed() { # label, command… → runs it, records wall and peak RSS
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/out" 2>"$WORK/err" || { cat "$WORK/out" "$WORK/err"; return 1; }
  read -r WALL RSS < "$WORK/time"
  RSS_MIB=$((RSS / 1024))
  echo "  $label: ${WALL}s, peak RSS ${RSS_MIB} MiB"
}

tasks() { # size, job, store → per-task lines of the last run into the CSV; prints the run id
  local run
  run=$("$BIN" sql --store "$3" --format csv "select run_id from runs order by started_at desc limit 1" | tail -1)
  "$BIN" sql --store "$3" --format csv \
    "select task, started_at, ended_at, rows_read, changes from task_runs where run_id = '$run' order by started_at" \
    | python3 benches/e2e_lines.py tasks "$1" "$2" >> "$CSV"
  echo "$run"
}

for N in ${SIZES[@]}; do
  D="$WORK/gen$N"
  echo "== N=$N"
  timed generate "$BIN" generate --identities "$N" --seed 7 "$D"
  ROWS=$(cat "$D"/day1/*/*.csv | wc -l)
  echo "  input rows (day 1, all files): $ROWS"
  timed complete "$BIN" run "$D/pipeline" --job complete --store "$D/store" --as-of $AS_OF --quiet
  echo "$N,complete,_total,$WALL,$ROWS,,$RSS_MIB,," >> "$CSV"
  RUN=$(tasks "$N" complete "$D/store")
  cp -r "$D/store/_orders/$RUN" "$D/orders_complete"
  GEN_DAY=incremental timed incremental "$BIN" run "$D/pipeline" --job incremental --store "$D/store" --as-of $AS_OF --quiet
  echo "$N,incremental,_total,$WALL,,,$RSS_MIB,," >> "$CSV"
  tasks "$N" incremental "$D/store" > /dev/null
  if [ -n "${MEMORY_LIMIT:-}" ]; then
    timed "complete --memory-limit $MEMORY_LIMIT" "$BIN" run "$D/pipeline" --job complete --store "$D/store_limited" --as-of $AS_OF --quiet --memory-limit "$MEMORY_LIMIT"
    echo "$N,complete_limited,_total,$WALL,$ROWS,,$RSS_MIB,," >> "$CSV"
    LRUN=$("$BIN" sql --store "$D/store_limited" --format csv "select run_id from runs order by started_at desc limit 1" | tail -1)
    python3 benches/e2e_lines.py same-orders "$D/orders_complete" "$D/store_limited/_orders/$LRUN"
  fi
  if [ "${PEER:-1}" != 0 ]; then
    /usr/bin/time -f "%e %M" -o "$WORK/time" python3 benches/peer/duckdb_peer.py "$D" --db "$WORK/peer.duckdb" --as-of $AS_OF --compare "$D/orders_complete" > "$WORK/peer" || { cat "$WORK/peer"; exit 1; }
    read -r WALL RSS < "$WORK/time"
    echo "  duckdb peer: ${WALL}s, peak RSS $((RSS / 1024)) MiB; $(tail -1 "$WORK/peer")"
    echo "$N,peer,_total,$WALL,$ROWS,,$((RSS / 1024)),," >> "$CSV"
    python3 benches/e2e_lines.py peer "$N" < "$WORK/peer" >> "$CSV"
  fi
  rm -rf "$D"
done
python3 benches/plot.py "$CSV" "$OUT/e2e.svg"
python3 benches/report.py "$CSV"
