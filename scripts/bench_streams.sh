#!/usr/bin/env bash
# Issue 15's figure: one producer writing to 8 streams of 8 shards against one producer writing
# to one stream of 64 shards, alternated in one session (`bench_e2e cpu`, limits off, 100-byte
# records, 10,000 keys), aggregated and plain. One JSON line per run to docs/bench-streams.jsonl;
# the ratio of producer CPU per record (8 streams over 1) is printed per pair, then per mode the
# median of the pairs' ratios and the ratio of the medians (this machine is shared: a single
# pair varies by ±15 %, so PAIRS pairs are run per mode).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example bench_e2e
bin=target/release/examples/bench_e2e
out=docs/bench-streams.jsonl
: > "$out"
for agg in on off; do
  for _ in $(seq "${PAIRS:-6}"); do
    "$bin" cpu --seconds "${SECONDS_PER_RUN:-8}" --aggregation "$agg" --shards 64 2>/dev/null | tail -1 >> "$out"
    "$bin" cpu --seconds "${SECONDS_PER_RUN:-8}" --aggregation "$agg" --streams 8 --shards 8 2>/dev/null | tail -1 >> "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
for agg in (True, False):
    rs = [r for r in runs if r["aggregation"] == agg]
    one = [r for r in rs if r["streams"] == 1]
    eight = [r for r in rs if r["streams"] == 8]
    ratios = []
    for a, b in zip(one, eight):
        ratio = b["producer_us_per_record"] / a["producer_us_per_record"]
        ratios.append(ratio)
        print(f"aggregation {agg}: 1x64 {a['producer_us_per_record']} us/record "
              f"({a['records_put'] // a['requests']} records/request), 8x8 "
              f"{b['producer_us_per_record']} us/record "
              f"({b['records_put'] // b['requests']} records/request): ratio {ratio:.3f}")
    med = lambda xs: statistics.median(x["producer_us_per_record"] for x in xs)
    print(f"aggregation {agg}: median of {len(ratios)} ratios {statistics.median(ratios):.3f}, "
          f"ratio of medians {med(eight) / med(one):.3f} ({med(eight):.3f} / {med(one):.3f} us)")
PY
