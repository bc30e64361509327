#!/usr/bin/env python3
"""Draws each producer's accepted rate and the throttled fraction over time from the
per-second series of `bench_e2e fleet --series FILE` as a hand-written SVG (no dependencies).

  python3 scripts/chart_fleet.py docs/fleet-series.jsonl docs/fleet-n8.svg
"""

from __future__ import annotations

import json
import sys

W, H = 760, 470
L, R, T, B = 70, 150, 40, 50
SPLIT = 0.68  # share of the plot height for the rates; the rest shows the throttled fraction
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    rows = [json.loads(line) for line in open(src) if line.strip()]
    n = max(len(r["rates"]) for r in rows)
    tmax = max(r["t"] for r in rows)
    rmax = max((x for r in rows for x in r["rates"] if x is not None), default=1) * 1.1
    fmax = max(0.05, max(r["throttle_fraction"] for r in rows) * 1.1)
    top_h = (H - T - B) * SPLIT
    bottom_top = T + top_h + 30
    bottom_h = H - B - bottom_top
    x = lambda t: L + t / tmax * (W - L - R)
    y_rate = lambda v: T + top_h - v / rmax * top_h
    y_thr = lambda v: bottom_top + bottom_h - min(v, fmax) / fmax * bottom_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="22" font-size="14">{n} producers sharing 8 shards at 2x capacity: '
           f'accepted user records/s each, and throttled fraction</text>']
    # axes and grid
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        v = rmax * frac
        yy = y_rate(v)
        out.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{W - R}" y2="{yy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    for frac in (0, 0.5, 1.0):
        v = fmax * frac
        yy = y_thr(v)
        out.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{W - R}" y2="{yy:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:.1%}</text>')
    step = 5 if tmax <= 60 else 10
    for t in range(0, int(tmax) + 1, step):
        out.append(f'<text x="{x(t):.1f}" y="{H - B + 18}" text-anchor="middle">{t}</text>')
        out.append(f'<line x1="{x(t):.1f}" y1="{T}" x2="{x(t):.1f}" y2="{H - B}" '
                   f'stroke="#f4f4f4"/>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">seconds</text>')
    out.append(f'<line x1="{L}" y1="{T + top_h}" x2="{W - R}" y2="{T + top_h}" stroke="#333"/>')
    out.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#333"/>')
    # one line per producer
    for i in range(n):
        pts = [(r["t"], r["rates"][i]) for r in rows
               if i < len(r["rates"]) and r["rates"][i] is not None]
        if not pts:
            continue
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{x(t):.1f},{y_rate(v):.1f}" for t, v in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="1.4"/>')
        ly = T + 14 + i * 16
        out.append(f'<line x1="{W - R + 12}" y1="{ly - 4}" x2="{W - R + 30}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{W - R + 36}" y="{ly}">producer {i + 1}</text>')
    path = " ".join(f"{x(r['t']):.1f},{y_thr(r['throttle_fraction']):.1f}" for r in rows)
    out.append(f'<polyline points="{path}" fill="none" stroke="#000" stroke-width="1.4"/>')
    out.append(f'<text x="{W - R + 12}" y="{bottom_top + 12}">throttled</text>')
    out.append(f'<text x="{W - R + 12}" y="{bottom_top + 26}">fraction of</text>')
    out.append(f'<text x="{W - R + 12}" y="{bottom_top + 40}">entries (1 s)</text>')
    out.append('</svg>')
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
