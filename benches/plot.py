#!/usr/bin/env python3
"""SVG plot (no dependencies) of benches/results/e2e.csv: wall time and peak RSS of the
complete and incremental jobs (and the DuckDB peer) against the number of identities,
log-log."""
import csv
import math
import sys

rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["task"] == "_total"]
series = {}
for r in rows:
    series.setdefault(r["job"], []).append((int(r["size"]), float(r["seconds"]),
                                            float(r["peak_rss_mib"] or "nan")))
COLORS = {"complete": "#1f77b4", "incremental": "#2ca02c", "peer": "#d62728",
          "complete_limited": "#9467bd"}
W, H, M = 420, 300, 50


def panel(x0, title, idx, unit):
    vals = [p[idx] for ser in series.values() for p in ser if not math.isnan(p[idx]) and p[idx] > 0]
    sizes = [p[0] for ser in series.values() for p in ser]
    if not vals:
        return ""
    lx = (math.log10(min(sizes)) - 0.2, math.log10(max(sizes)) + 0.2)
    ly = (math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals))) + 0.01)
    X = lambda s: x0 + M + (math.log10(s) - lx[0]) / (lx[1] - lx[0]) * (W - 2 * M)
    Y = lambda v: H - M - (math.log10(v) - ly[0]) / (ly[1] - ly[0]) * (H - 2 * M)
    out = [f'<text x="{x0 + W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<rect x="{x0 + M}" y="{M}" width="{W - 2 * M}" height="{H - 2 * M}" fill="none" stroke="#999"/>']
    for e in range(int(ly[0]), int(math.ceil(ly[1]))):
        out.append(f'<text x="{x0 + M - 5}" y="{Y(10 ** e) + 4}" text-anchor="end" font-size="10">{10 ** e:g} {unit}</text>')
        out.append(f'<line x1="{x0 + M}" x2="{x0 + W - M}" y1="{Y(10 ** e)}" y2="{Y(10 ** e)}" stroke="#eee"/>')
    for s in sorted(set(sizes)):
        out.append(f'<text x="{X(s)}" y="{H - M + 15}" text-anchor="middle" font-size="10">{s:,}</text>')
    for job, ser in series.items():
        ser = sorted(p for p in ser if not math.isnan(p[idx]) and p[idx] > 0)
        c = COLORS.get(job, "#333")
        out.append('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>'.format(
            c, " ".join(f"{X(p[0]):.1f},{Y(p[idx]):.1f}" for p in ser)))
        for p in ser:
            out.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[idx]):.1f}" r="3" fill="{c}"/>')
    return "\n".join(out)


legend = "\n".join(
    f'<rect x="{M + 120 * i}" y="{H + 5}" width="10" height="10" fill="{COLORS.get(j, "#333")}"/>'
    f'<text x="{M + 120 * i + 14}" y="{H + 14}" font-size="11">{j}</text>'
    for i, j in enumerate(series))
svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H + 30}" font-family="sans-serif">'
       f'<rect width="100%" height="100%" fill="white"/>'
       f'{panel(0, "Wall time vs identities", 1, "s")}{panel(W, "Peak RSS vs identities", 2, "MiB")}{legend}</svg>')
open(sys.argv[2], "w").write(svg)
print(f"wrote {sys.argv[2]}")
