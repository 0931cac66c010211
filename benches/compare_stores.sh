#!/usr/bin/env bash
# compare_stores.sh BIN STORE_A STORE_B: two stores of the generated company (`igaflow generate`):
# md5 of the sorted contents of the main tables (run ids and
# validity timestamps left out) and of the newest JSON order files (run_id/generated_at left out).
# The Parquet order files differ by bytes between runs; compare them with compare_orders.py.
BIN=$1; A=$2; B=$3
# The md5 of a query's CSV output; a failing query is reported, never hashed.
sum() {
  local out
  out=$("$BIN" sql --store "$1" --format csv "$2" 2>&1) || { echo "ERROR(${out%%$'\n'*})"; return; }
  printf '%s\n' "$out" | md5sum | cut -c1-8
}
for t in person ad_account ad_group ad_member_of erp_user correlations correlation_keys assigned_roles assigned_resources assigned_scalars assigned_links classification provisioning_orders ad_member_of__history person__history; do
  cols=$("$BIN" sql --store "$A" --format csv "select * from $t limit 0" 2>/dev/null | head -1 | tr ',' '\n' | grep -v -E '^(_run_id|run_id|last_run_id|_valid_from|_valid_to|generated_at|order_id|created_at)$' | sed 's/.*/"&"/' | paste -sd,)
  n=$(echo "$cols" | tr ',' '\n' | wc -l); ord=$(seq -s, 1 $n)
  a=$(sum "$A" "select $cols from $t order by $ord")
  b=$(sum "$B" "select $cols from $t order by $ord")
  case "$a$b" in
    *ERROR*) echo "$t $a $b ERROR" ;;
    *) echo "$t $a $b $([ "$a" = "$b" ] && echo same || echo DIFF)" ;;
  esac
done
ra=$(ls -t "$A/_orders" | head -1); rb=$(ls -t "$B/_orders" | head -1)
for f in $(ls "$A/_orders/$ra"); do
  a=$(sed -E 's/"(run_id|generated_at)": *"[^"]*"//g' "$A/_orders/$ra/$f" 2>/dev/null | md5sum | cut -c1-8)
  b=$(sed -E 's/"(run_id|generated_at)": *"[^"]*"//g' "$B/_orders/$rb/$f" 2>/dev/null | md5sum | cut -c1-8)
  echo "orders/$f $a $b $([ "$a" = "$b" ] && echo same || echo DIFF)"
done
