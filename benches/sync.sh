#!/usr/bin/env bash
# Synchronization benchmark (issue 2): a complete sync of N generated persons, then a second
# export with 1% of the rows changed. Prints wall time, rows/s and peak RSS of each run.
#
#   cargo build --release && benches/sync.sh 1000000
#
# IGAFLOW_BIN overrides the binary (default target/release/igaflow, or under CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
BIN="${IGAFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/igaflow}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$WORK/day1/hr" "$WORK/day2/hr" "$WORK/pipeline"
python3 benches/gen_persons.py --rows "$N" --out "$WORK/day1/hr/persons.csv"
python3 benches/gen_persons.py --rows "$N" --out "$WORK/day2/hr/persons.csv" --change 0.01
cat > "$WORK/pipeline/pipeline.toml" <<TOML
name = "bench"
[connector.hr]
exports = "../\${BENCH_DAY:-day1}/hr"
[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "employee_id"
[entity.columns]
employee_id = "string"
first_name = "string"
last_name = "string"
email = "string"
department = "string"
title = "string"
manager_id = "string"
status = "string"
start_date = "date"
end_date = "date"
location = "string"
[entity.computed]
display_name = "first_name || ' ' || last_name"
[[job]]
name = "complete"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
TOML

run() {
  local day="$1" rows
  rows=$(($(wc -l < "$WORK/$day/hr/persons.csv") - 1))
  BENCH_DAY="$day" /usr/bin/time -f "%e %M" -o "$WORK/time" \
    "$BIN" run "$WORK/pipeline" --job complete --store "$WORK/store" --quiet
  read -r secs kib < "$WORK/time"
  awk -v d="$day" -v r="$rows" -v s="$secs" -v k="$kib" 'BEGIN {
    printf "%-5s rows=%d wall=%.2fs rows/s=%.0f peak_rss=%.0f MiB\n", d, r, s, r / s, k / 1024 }'
}
echo "igaflow sync benchmark, N=$N, $(nproc) cores, $(date -u +%F)"
run day1
run day2
"$BIN" sql --store "$WORK/store" "select count(*) as persons from person"
"$BIN" sql --store "$WORK/store" "select _change, count(*) as n from person__history where _valid_from = (select max(_valid_from) from person__history) group by _change order by _change"
