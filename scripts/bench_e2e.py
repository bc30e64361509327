#!/usr/bin/env python3
"""Runs one bench_e2e scenario several times and prints every run's JSON line and the median
of each numeric field.

  python3 scripts/bench_e2e.py --runs 5 -- cpu --aggregation on
  python3 scripts/bench_e2e.py --runs 3 -- accuracy --aggregation off --seconds 20

Set CARGO_TARGET_DIR to reuse a build directory; builds the example first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = [x for x in a.args if x != "--"]
    subprocess.run(["cargo", "build", "--release", "--example", "bench_e2e"], cwd=ROOT,
                   check=True)
    exe = os.path.join(TARGET, "release", "examples", "bench_e2e")
    runs = []
    for _ in range(a.runs):
        out = subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout
        j = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(j), flush=True)
        runs.append(j)
    median = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            median[k] = statistics.median(r[k] for r in runs)
        else:
            median[k] = v
    median["runs"] = a.runs
    print("median " + json.dumps(median))


if __name__ == "__main__":
    main()
