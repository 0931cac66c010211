#!/usr/bin/env python3
"""Markdown tables from benches/results/e2e.csv: per size, igaflow's tasks and totals, and
the DuckDB peer's stages with the ratio peer / igaflow per stage."""
import csv
import sys
from collections import defaultdict

STAGES = {
    "sync": ["sync_hr", "sync_ad", "sync_erp"],
    "correlation": ["correlation_keys"],
    "role_model": ["role_model", "classification"],
    "orders": ["orders"],
}

def summed_and_wall(c, tasks):
    """igaflow's tasks of a stage: their seconds summed, and the stage's wall time (first
    start to last end: the three synchronizations overlap on the cores)."""
    ts = [c[t] for t in tasks if t in c]
    spans = [(float(t["start_s"]), float(t["end_s"])) for t in ts if t.get("start_s")]
    wall = max(e for _, e in spans) - min(s for s, _ in spans) if spans else None
    return sum(float(t["seconds"]) for t in ts), wall


rows = list(csv.DictReader(open(sys.argv[1])))
by = defaultdict(dict)
for r in rows:
    by[(int(r["size"]), r["job"])][r["task"]] = r
for size in sorted({k[0] for k in by}):
    c = by.get((size, "complete"), {})
    i = by.get((size, "incremental"), {})
    p = by.get((size, "peer"), {})
    print(f"\n### {size:,} identities\n")
    print("| task | complete (s) | incremental (s) |\n| --- | ---: | ---: |")
    for t in [t for t in c if t != "_total"] + [t for t in i if t not in c and t != "_total"]:
        print(f"| {t} | {c.get(t, {}).get('seconds', '')} | {i.get(t, {}).get('seconds', '')} |")
    if c:
        tot = c["_total"]
        rate = int(tot["rows_read"]) / float(tot["seconds"])
        inc = i.get("_total", {})
        print(f"| **total wall** | **{tot['seconds']}** ({rate:,.0f} rows/s, {tot['peak_rss_mib']} MiB) | "
              f"**{inc.get('seconds', '')}** ({inc.get('peak_rss_mib', '')} MiB) |")
    lim = by.get((size, "complete_limited"), {}).get("_total")
    if lim:
        print(f"\nUnder `--memory-limit`: {lim['seconds']} s, peak RSS {lim['peak_rss_mib']} MiB.")
    if p:
        # igaflow's tasks of a stage summed, and the stage's wall time (first start to last
        # end: the three synchronizations overlap on the cores), each against the peer.
        print("\n| stage | igaflow, tasks summed (s) | igaflow, stage wall (s) | DuckDB peer (s) "
              "| peer / igaflow summed | peer / igaflow wall |\n| --- | ---: | ---: | ---: | ---: | ---: |")
        ratio = lambda a, b: f"{a / b:.2f}" if b else ""

        def line(label, tasks, pe):
            ig, wall = summed_and_wall(c, tasks)
            print(f"| {label} | {ig:.2f} | {'' if wall is None else f'{wall:.2f}'} | {pe:.2f} | "
                  f"{ratio(pe, ig)} | {ratio(pe, wall) if wall is not None else ''} |")

        for stage, tasks in STAGES.items():
            line(stage, tasks, float(p.get(stage, {}).get("seconds", "nan")))
        # The peer's synchronization without its validation, history and recently_modified
        # (its whole "sync" stage until the forty-fourth pass), for comparison with older runs.
        if "sync_load_only" in p:
            line("sync (peer: load only)", STAGES["sync"], float(p["sync_load_only"]["seconds"]))
        # The stages after the synchronization together: the peer and igaflow cut them
        # differently (the peer computes the desired scalars in its orders stage, igaflow in
        # its role model; igaflow's role model also correlates), so their sum compares the
        # same work where the single stages may not.
        after = ("correlation", "role_model", "orders")
        line(" + ".join(after), [t for stage in after for t in STAGES[stage]],
             sum(float(p.get(stage, {}).get("seconds", "nan")) for stage in after))
        tot, ptot = float(c['_total']['seconds']), float(p['_total']['seconds'])
        print(f"| whole process | {tot} | {tot} | {ptot} | {ratio(ptot, tot)} | {ratio(ptot, tot)} |")
