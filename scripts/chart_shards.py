#!/usr/bin/env python3
"""Draws producer CPU per record against the shard count from a shard sweep of
`scripts/bench_e2e.py --sweep ... --out FILE` as a hand-written SVG (no dependencies).

  python3 scripts/chart_shards.py bench-shards.jsonl docs/cost-per-record.svg
"""

from __future__ import annotations

import json
import math
import sys

W, H = 720, 420
L, R, T, B = 70, 200, 40, 60
COLORS = {("current", True): "#1f77b4", ("current", False): "#d62728",
          ("baseline", True): "#9ecae1", ("baseline", False): "#fcae91"}


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(src) if line.strip()]
    series: dict[tuple, list[tuple[int, float]]] = {}
    floors: dict[bool, list[tuple[int, float]]] = {}
    for r in rows:
        key = (r.get("binary", "current"), r["aggregation"])
        series.setdefault(key, []).append((int(r["shards"]), r["producer_us_per_record"]))
        if key[0] == "current" and "floor_us_per_record" in r:
            floors.setdefault(r["aggregation"], []).append((int(r["shards"]),
                                                            r["floor_us_per_record"]))
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ymax = max(y for pts in series.values() for _, y in pts) * 1.15
    lx = lambda x: L + (math.log(x) - math.log(xs[0])) / (
        math.log(xs[-1]) - math.log(xs[0]) or 1) * (W - L - R)
    ly = lambda y: H - B - y / ymax * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="14">Producer CPU per user record vs shard count '
           f'(bench_e2e cpu, 100 B, 10,000 keys)</text>']
    step = 0.5 if ymax < 5 else 1.0
    y = 0.0
    while y <= ymax:
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{ly(y):.1f}" y2="{ly(y):.1f}" '
                   f'stroke="#ddd"/><text x="{L - 8}" y="{ly(y) + 4:.1f}" '
                   f'text-anchor="end">{y:g}</text>')
        y += step
    for x in xs:
        out.append(f'<line x1="{lx(x):.1f}" x2="{lx(x):.1f}" y1="{T}" y2="{H - B}" '
                   f'stroke="#eee"/><text x="{lx(x):.1f}" y="{H - B + 18}" '
                   f'text-anchor="middle">{x:,}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 15}" text-anchor="middle">shards '
               f'(log scale)</text>')
    out.append(f'<text x="18" y="{(T + H - B) / 2}" transform="rotate(-90 18 '
               f'{(T + H - B) / 2})" text-anchor="middle">µs of producer CPU per record</text>')
    legend = []

    def line(pts, color, dash, label):
        pts = sorted(pts)
        d = " ".join(f"{lx(x):.1f},{ly(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2.5" '
                   f'stroke-dasharray="{dash}"/>')
        for x, y in pts:
            out.append(f'<circle cx="{lx(x):.1f}" cy="{ly(y):.1f}" r="3.5" fill="{color}"/>')
        legend.append((color, dash, label))

    for (binary, agg), pts in sorted(series.items(), key=lambda kv: (kv[0][0] != "current",
                                                                      not kv[0][1])):
        line(pts, COLORS[(binary, agg)], "",
             f"{'after' if binary == 'current' else 'before'}, "
             f"{'aggregated' if agg else 'plain'}")
    for agg, pts in sorted(floors.items(), reverse=True):
        line(pts, COLORS[("current", agg)], "4 4",
             f"floor, {'aggregated' if agg else 'plain'}")
    for i, (color, dash, label) in enumerate(legend):
        yy = T + 10 + i * 20
        out.append(f'<line x1="{W - R + 15}" x2="{W - R + 45}" y1="{yy}" y2="{yy}" '
                   f'stroke="{color}" stroke-width="2.5" stroke-dasharray="{dash}"/>'
                   f'<text x="{W - R + 52}" y="{yy + 4}">{label}</text>')
    out.append("</svg>")
    open(dst, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
