#!/usr/bin/env python3
"""Helpers of benches/e2e.sh, each printing lines of benches/results/e2e.csv.

    e2e_lines.py tasks SIZE JOB < task_runs.csv      igaflow's tasks of one run
    e2e_lines.py peer SIZE < peer.jsonl               the DuckDB peer's stages
    e2e_lines.py same-orders DIR_A DIR_B              exit 1 unless the order ids are equal
"""
import csv
import json
import os
import sys
from datetime import datetime


def stamp(t):
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


def order_ids(folder):
    return sorted(o["order_id"] for f in sorted(os.listdir(folder)) if f.endswith(".json")
                  for o in json.load(open(os.path.join(folder, f)))["orders"])


cmd = sys.argv[1]
if cmd == "tasks":
    size, job = sys.argv[2], sys.argv[3]
    runs = list(csv.DictReader(sys.stdin))
    # Start and end of each task in seconds from the run's first start: a stage's wall time
    # (its tasks overlap on the cores) is its last end less its first start.
    t0 = min((stamp(r["started_at"]) for r in runs), default=None)
    for r in runs:
        a, b = stamp(r["started_at"]), stamp(r["ended_at"])
        s = (b - a).total_seconds()
        print(f"{size},{job},{r['task']},{s:.3f},{r['rows_read']},{r['changes']},,"
              f"{(a - t0).total_seconds():.3f},{(b - t0).total_seconds():.3f}")
elif cmd == "peer":
    size = sys.argv[2]
    for line in sys.stdin:
        r = json.loads(line)
        if "stage" in r:
            print(f"{size},peer,{r['stage']},{r['seconds']},,,,,")
            if "load_seconds" in r:
                print(f"{size},peer,{r['stage']}_load_only,{r['load_seconds']},,,,,")
elif cmd == "same-orders":
    a, b = order_ids(sys.argv[2]), order_ids(sys.argv[3])
    print(f"  orders under the memory limit identical: {a == b} ({len(a)} orders)")
    sys.exit(0 if a == b else 1)
