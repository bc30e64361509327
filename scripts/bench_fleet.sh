#!/bin/sh
# Fleet figures of issue 14: N = 2, 8, 32 producers on 8 shards at 2x capacity, aggregated and
# plain, under both throttle models of kinesis-sim; join/leave; one producer (accuracy).
# Appends one JSON line per run to docs/bench-fleet.jsonl and writes the per-second series of
# N = 8 (aggregated, token bucket) to docs/fleet-series.jsonl for scripts/chart_fleet.py.
# A subset: PRODUCERS="2 8" MODELS=bucket JOIN_LEAVE=0 sh scripts/bench_fleet.sh
set -e
B=${BENCH_E2E:-target/release/examples/bench_e2e}
OUT=${OUT:-docs/bench-fleet.jsonl}
S=${SECONDS_PER_RUN:-40}
: > "$OUT"
for model in ${MODELS:-bucket window}; do
  for agg in on off; do
    for n in ${PRODUCERS:-2 8 32}; do
      series=""
      if [ "$model" = bucket ] && [ "$agg" = on ] && [ "$n" = 8 ]; then
        series="--series docs/fleet-series.jsonl"
      fi
      echo "fleet n=$n agg=$agg model=$model" >&2
      $B fleet --producers $n --aggregation $agg --seconds "$S" --throttle-model $model $series | tail -1 >> "$OUT"
    done
  done
done
for agg in on off; do
  if [ "${JOIN_LEAVE:-1}" = 1 ]; then
    echo "join-leave agg=$agg" >&2
    $B fleet --producers 8 --aggregation $agg --seconds 60 --join-leave | tail -1 >> "$OUT"
  fi
  echo "accuracy agg=$agg" >&2
  $B accuracy --aggregation $agg | tail -1 >> "$OUT"
done
