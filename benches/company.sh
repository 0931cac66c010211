# Sourced by the benchmarks that run jobs on a generated company (ratio.sh, nightly.sh):
# sets BIN, WORK (a temporary folder removed on exit), AS_OF and COMPANY (generated into WORK
# with N identities, seed 7, unless the caller names a folder `igaflow generate` wrote), and
# defines `timed` and `tasks`. Expects N to be set and the repository as working directory.
BIN="${IGAFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/igaflow}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
AS_OF=2026-11-25
COMPANY=${COMPANY:-}
if [ -z "$COMPANY" ]; then
  COMPANY="$WORK/company"
  "$BIN" generate --identities "$N" --seed 7 "$COMPANY" > /dev/null
fi

timed() { # command… → "wall peak_mib"
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$@" > "$WORK/out" 2>&1 || { cat "$WORK/out"; return 1; }
  awk '{printf "%s %d", $1, $2 / 1024}' "$WORK/time"
}

# Seconds from the microsecond timestamps: DataFusion 55's `extract(epoch from ended_at -
# started_at)` drops the fraction of an interval of a second or more (3.51 s gives 3.0).
tasks() { # store [columns] → the last run's tasks with the columns (default: task) and seconds
  "$BIN" sql --store "$1" --format csv \
    "select ${2:-task}, round((cast(ended_at as bigint) - cast(started_at as bigint)) / 1e6, 2) as s from task_runs where run_id = (select run_id from runs order by started_at desc limit 1) order by started_at" \
    | tail -n +2 | tr '\n' ' '
}
