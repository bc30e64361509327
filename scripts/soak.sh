#!/usr/bin/env bash
# The long reliability run (not part of the normal test run):
#   1. examples/soak.rs: 60 s of overload at 10x capacity (RSS bound checked), then a soak at
#      2x capacity with 5 % faults (RSS sampled every 10 s must not grow after the first
#      minute; every record resolved); prints a JSON summary, exits 1 on a failed check;
#   2. tests/fuzz.rs with 100,000 proptest cases per target: deaggregate, ExplicitHashKey
#      parsing, kinesis-sim request decoding.
#
# Usage: scripts/soak.sh [--minutes N] [other soak options]   (default 10 minutes)
#        PROPTEST_CASES=N scripts/soak.sh                      (default 100000)
#        SKIP_FUZZ=1 / SKIP_SOAK=1 to run one half only.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${PROPTEST_CASES:-100000}"
status=0

if [ -z "${SKIP_SOAK:-}" ]; then
  cargo build --release --example soak
  start=$SECONDS
  cargo run -q --release --example soak -- "$@" || status=1
  echo "soak: $((SECONDS - start)) s" >&2
fi

if [ -z "${SKIP_FUZZ:-}" ]; then
  cargo test --release -p kinesis-producer --test fuzz --no-run
  start=$SECONDS
  # One target at a time, so that each one's time is reported.
  for target in fuzz_deaggregate fuzz_explicit_hash_key fuzz_hash_key_display fuzz_sim_request; do
    t=$SECONDS
    PROPTEST_CASES="$CASES" cargo test --release -q -p kinesis-producer --test fuzz -- "$target" \
      || status=1
    echo "fuzz $target: $CASES cases per test, $((SECONDS - t)) s" >&2
  done
  echo "fuzz total: $((SECONDS - start)) s" >&2
fi
exit $status
