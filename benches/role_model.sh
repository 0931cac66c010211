#!/usr/bin/env bash
# Role model + orders benchmark (issue 3): the complete job (sync, correlation keys, role model,
# classification, orders) on a generated company of N identities.
#
#   cargo build --release && benches/role_model.sh 100000
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
BIN="${IGAFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/igaflow}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 benches/gen_company.py --identities "$N" --out "$WORK"
echo "igaflow role-model benchmark, N=$N identities, $(nproc) cores, $(date -u +%F)"
wc -l "$WORK"/exports/hr/persons.csv "$WORK"/exports/ad/*.csv | sed 's|'"$WORK"'/||'
/usr/bin/time -f "wall=%es peak_rss=%MKiB" "$BIN" run "$WORK/pipeline" --job complete --store "$WORK/store"
