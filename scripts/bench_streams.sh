#!/usr/bin/env bash
# Issue 15's figure: one producer writing to 8 streams of 8 shards against one producer writing
# to one stream of 64 shards, alternated in one session (`bench_e2e cpu`, limits off, 100-byte
# records, 10,000 keys), aggregated and plain. One JSON line per run to docs/bench-streams.jsonl;
# the ratio of producer CPU per record (8 streams over 1) is printed per pair.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example bench_e2e
bin=target/release/examples/bench_e2e
out=docs/bench-streams.jsonl
: > "$out"
for agg in on off; do
  for run in 1 2; do
    one=$("$bin" cpu --seconds "${SECONDS_PER_RUN:-8}" --aggregation "$agg" --shards 64 2>/dev/null | tail -1)
    eight=$("$bin" cpu --seconds "${SECONDS_PER_RUN:-8}" --aggregation "$agg" --streams 8 --shards 8 2>/dev/null | tail -1)
    echo "$one" >> "$out"
    echo "$eight" >> "$out"
    python3 - "$one" "$eight" <<'PY'
import json, sys
one, eight = (json.loads(a) for a in sys.argv[1:3])
print(f"aggregation {one['aggregation']}: 1x64 {one['producer_us_per_record']} us/record "
      f"({one['user_records_per_sec']:.0f} rec/s), 8x8 {eight['producer_us_per_record']} us/record "
      f"({eight['user_records_per_sec']:.0f} rec/s): ratio "
      f"{eight['producer_us_per_record'] / one['producer_us_per_record']:.3f}")
PY
  done
done
