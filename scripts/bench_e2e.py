#!/usr/bin/env python3
"""Runs one bench_e2e scenario several times and prints every run's JSON line and the median
of each numeric field.

  python3 scripts/bench_e2e.py --runs 5 -- cpu --aggregation on
  python3 scripts/bench_e2e.py --runs 3 -- accuracy --aggregation off --seconds 20

Shard sweep of the cpu scenario (aggregated and plain at each shard count), optionally
interleaved with a baseline binary so that both are measured in the same session, one JSON
line per run (with "binary" and "runs" added) on stdout or in --out:

  python3 scripts/bench_e2e.py --sweep 64,1024,4096,10000 --baseline /path/to/old/bench_e2e \
      --out bench-shards.jsonl -- --seconds 6

Builds the example first and finds it in cargo's target directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir() -> str:
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(meta)["target_directory"]


def run(exe: str, args: list[str]) -> dict:
    out = subprocess.run([exe, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    median = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            median[k] = statistics.median(r[k] for r in runs)
        else:
            median[k] = v
    median["runs"] = len(runs)
    return median


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sweep", help="comma-separated shard counts for the cpu scenario")
    ap.add_argument("--baseline", help="another bench_e2e binary, run interleaved")
    ap.add_argument("--out", help="append the JSON lines to this file")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    args = [x for x in a.args if x != "--"]
    subprocess.run(["cargo", "build", "--release", "--example", "bench_e2e"], cwd=ROOT,
                   check=True)
    exe = os.path.join(target_dir(), "release", "examples", "bench_e2e")
    out = open(a.out, "a") if a.out else None

    def emit(j: dict) -> None:
        line = json.dumps(j)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    if not a.sweep:
        runs = [run(exe, args) for _ in range(a.runs)]
        for j in runs:
            print(json.dumps(j), flush=True)
        print("median " + json.dumps(median_of(runs)))
        return
    binaries = [("current", exe)] + ([("baseline", a.baseline)] if a.baseline else [])
    for shards in [int(s) for s in a.sweep.split(",")]:
        for agg in ["on", "off"]:
            results: dict[str, list[dict]] = {name: [] for name, _ in binaries}
            for _ in range(a.runs):
                for name, path in binaries:
                    results[name].append(run(path, ["cpu", "--shards", str(shards),
                                                    "--aggregation", agg, *args]))
            for name, runs in results.items():
                j = median_of(runs)
                j["binary"] = name
                emit(j)


if __name__ == "__main__":
    main()
