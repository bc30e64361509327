#!/usr/bin/env python3
"""Peers in the same run: kinesis-producer, aiokpl (aggregation on and off) and a naive
aws-sdk-kinesis PutRecords loop, on the same simulator, records and machine.

  python3 scripts/bench_peers.py [--runs 3] [--seconds 10] [--accuracy-seconds 20] [--skip-accuracy]

1. Rate: the `kinesis-sim` binary with limits off (`--stream s:64 --no-limits --no-store`),
   100-byte records, 10,000 keys: each peer's user records/s (median of --runs runs), and our
   ratio to each.
2. Shard-limit accuracy (scenario 2 of BENCHMARKS.md): `examples/bench_sim.rs` (the same
   simulator library, limits on, 8 shards; it also reports its counters) at twice the
   stream's capacity, (a) 1 KB records, (b) 100-byte records: each peer's fraction of
   PutRecords entries throttled and per-shard utilization, from the simulator's counters over
   the window [start + warm-up, start + seconds].

Needs python3 -m venv; installs aiokpl into target/bench-venv on first use. Set
CARGO_TARGET_DIR to reuse a build directory. Prints one JSON line per run and a summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "target", "bench-venv")
VENV_PY = os.path.join(VENV, "bin", "python")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
MIB = 1048576.0


# ---- aiokpl driver (runs inside the venv) ---------------------------------------------------

AIOKPL_DRIVER = r'''
import asyncio, json, sys, time
from aiokpl import Config, Producer

endpoint, stream, agg, seconds, size, keys, rate = sys.argv[1:8]
agg = agg == "on"; seconds = float(seconds); size = int(size); keys = int(keys)
rate = float(rate)  # 0 = as fast as possible

async def main():
    cfg = Config(region="us-east-1", endpoint_url=endpoint, aws_access_key_id="AKID",
                 aws_secret_access_key="SECRET", aggregation_enabled=agg,
                 record_max_buffered_time_ms=100, record_ttl_ms=30000,
                 max_outstanding_records=100000)
    names = ["key-%05d" % i for i in range(keys)]
    data = b"\x5a" * size
    ok = failed = sent = 0
    pending = []
    async with Producer(cfg) as p:
        start = time.monotonic(); until = start + seconds; k = 0
        while True:
            now = time.monotonic()
            if now >= until:
                break
            if rate > 0:
                target = int((now - start) * rate)
                if sent >= target:
                    await asyncio.sleep(0.001)
                    continue
                burst = min(target - sent, 1000)
            else:
                burst = 1000
            for _ in range(burst):
                pending.append(await p.put_record(stream=stream, partition_key=names[k], data=data))
                k = (k + 7919) % keys
                sent += 1
            if len(pending) > 50000:
                keep = []
                for o in pending:
                    if o.is_set():
                        r = await o.wait()
                        ok += r.success; failed += not r.success
                    else:
                        keep.append(o)
                pending = keep
        await p.flush()
        for o in pending:
            r = await o.wait()
            ok += r.success; failed += not r.success
    elapsed = time.monotonic() - start
    print(json.dumps({"peer": "aiokpl", "aggregation": agg, "seconds": round(elapsed, 3),
                      "records_added": sent, "records_stored": ok, "records_failed": failed,
                      "user_records_per_sec": round(ok / elapsed)}))

asyncio.run(main())
'''


def ensure_venv() -> None:
    if os.path.exists(VENV_PY):
        r = subprocess.run([VENV_PY, "-c", "import aiokpl"], capture_output=True)
        if r.returncode == 0:
            return
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([VENV_PY, "-m", "pip", "install", "-q", "aiokpl", "anyio"], check=True)


def build() -> None:
    subprocess.run(["cargo", "build", "--release", "-p", "kinesis-sim", "--bin", "kinesis-sim"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-p", "kinesis-producer", "--example",
                    "bench_e2e", "--example", "naive_putrecords", "--example", "bench_sim"],
                   cwd=ROOT, check=True)


def exe(name: str, example: bool = True) -> str:
    return os.path.join(TARGET, "release", "examples" if example else "", name)


def last_json(out: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON line in output:\n" + out)


def run_json(cmd: list[str]) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{r.stderr[-3000:]}")
    return last_json(r.stdout)


class Sim:
    """A simulator process; `counters()` works with bench_sim only."""

    def __init__(self, cmd: list[str]):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        self.endpoint = self.p.stdout.readline().strip()

    def counters(self) -> dict:
        self.p.stdin.write("c\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def stop(self) -> None:
        try:
            if self.p.stdin:
                self.p.stdin.close()
        except OSError:
            pass
        self.p.send_signal(2)  # SIGINT: the kinesis-sim binary stops on Ctrl-C
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def peer_cmds(endpoint: str, stream: str, seconds: float, size: int, rate: float,
              scenario: str) -> dict[str, list[str]]:
    """Commands of each peer. `rate` is the offered user records/s (0: as fast as possible)."""
    s = str(seconds)
    ours = [exe("bench_e2e"), scenario, "--endpoint", endpoint, "--stream", stream,
            "--seconds", s, "--record-size", str(size)]
    if scenario == "accuracy":
        ours += ["--shards", "8", "--warmup", "0"]
    aiokpl = [VENV_PY, "-c", AIOKPL_DRIVER, endpoint, stream]
    tail = [s, str(size), "10000", str(rate)]
    return {
        "ours_agg": ours + ["--aggregation", "on"],
        "ours_noagg": ours + ["--aggregation", "off"],
        "aiokpl_agg": aiokpl + ["on"] + tail,
        "aiokpl_noagg": aiokpl + ["off"] + tail,
        "naive_putrecords": [exe("naive_putrecords"), "--endpoint", endpoint, "--stream", stream,
                             "--seconds", s, "--record-size", str(size)],
    }


def rate_comparison(runs: int, seconds: float, port: int) -> dict[str, float]:
    sim = Sim([exe("kinesis-sim", example=False), "--port", str(port), "--stream", "s:64",
               "--no-limits", "--no-store"])
    results: dict[str, list[float]] = {}
    try:
        for run in range(runs):
            for name, cmd in peer_cmds(sim.endpoint, "s", seconds, 100, 0, "cpu").items():
                j = run_json(cmd)
                j.update({"phase": "rate", "run": run, "name": name})
                print(json.dumps(j), flush=True)
                results.setdefault(name, []).append(j["user_records_per_sec"])
    finally:
        sim.stop()
    return {k: statistics.median(v) for k, v in results.items()}


def accuracy_comparison(seconds: float, warmup: float) -> dict[str, dict]:
    """Each peer at 2x capacity on a fresh 8-shard stream (limits on)."""
    out: dict[str, dict] = {}
    for label, size in (("a_1KB", 1024), ("b_100B", 100)):
        names = list(peer_cmds("x", "x", seconds, size, 0, "accuracy").keys())
        streams = [f"{label}_{n}" for n in names]
        sim = Sim([exe("bench_sim"), *sum((["--stream", f"{s}:8"] for s in streams), [])])
        try:
            key_len = len("key-00000")
            cap = 8 * MIB / (size + key_len)
            if size == 100:
                cap = min(cap, 8000.0)
            for name, stream in zip(names, streams):
                # Aggregating peers are byte-bound, plain ones record-bound at 100 bytes.
                rate = 2 * (8 * MIB / (size + key_len) if "agg" in name and "noagg" not in name
                            else cap)
                cmd = peer_cmds(sim.endpoint, stream, seconds, size, rate, "accuracy")[name]
                p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
                t0 = time.monotonic()
                time.sleep(warmup)
                c0 = sim.counters()[stream]
                time.sleep(max(0.0, seconds - warmup - (time.monotonic() - t0 - warmup)))
                c1 = sim.counters()[stream]
                window = time.monotonic() - t0 - warmup
                stdout, stderr = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"{cmd} failed:\n{stderr[-3000:]}")
                peer = last_json(stdout)
                shards = [
                    ((b[0] - a[0]) / window / 1000.0, (b[1] - a[1]) / window / MIB)
                    for a, b in zip(c0["shards"], c1["shards"])
                ]
                acc = c1["accepted_records"] - c0["accepted_records"]
                thr = c1["throttled_records"] - c0["throttled_records"]
                util = [max(r, b) for r, b in shards]
                j = {
                    "phase": "accuracy", "case": label, "name": name,
                    "offered_records_per_sec": round(rate), "window_s": round(window, 2),
                    "throttle_fraction": round(thr / max(1, acc + thr), 5),
                    "utilization_min": round(min(util), 3),
                    "utilization_mean": round(sum(util) / len(util), 3),
                    "stored_user_records_per_sec": peer.get("user_records_per_sec"),
                }
                print(json.dumps(j), flush=True)
                out[f"{label}/{name}"] = j
                time.sleep(1.5)  # let the buckets refill
        finally:
            sim.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--accuracy-seconds", type=float, default=20.0)
    ap.add_argument("--accuracy-warmup", type=float, default=3.0)
    ap.add_argument("--port", type=int, default=45671)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-build", action="store_true")
    a = ap.parse_args()
    ensure_venv()
    if not a.skip_build:
        build()
    rates = rate_comparison(a.runs, a.seconds, a.port)
    print("\n# rate: median user records/s over %d runs (kinesis-sim, limits off, 64 shards)"
          % a.runs)
    for name, v in rates.items():
        print(f"{name:18} {v:12,.0f}")
    for ours in ("ours_agg", "ours_noagg"):
        for peer in ("aiokpl_agg", "aiokpl_noagg", "naive_putrecords"):
            if rates.get(peer):
                print(f"ratio {ours}/{peer}: {rates[ours] / rates[peer]:.1f}x")
    print(json.dumps({"phase": "rate_summary", "median_user_records_per_sec": rates}))
    if not a.skip_accuracy:
        acc = accuracy_comparison(a.accuracy_seconds, a.accuracy_warmup)
        print("\n# scenario 2 at 2x capacity: throttle fraction, mean/min utilization")
        for k, j in acc.items():
            print(f"{k:28} throttled {j['throttle_fraction']:.4f}  util mean "
                  f"{j['utilization_mean']:.3f} min {j['utilization_min']:.3f}")


if __name__ == "__main__":
    main()
