#!/usr/bin/env bash
# Mutation testing of the pure core with the fast (unit) tests: cargo-mutants changes one
# operator, literal or function body at a time and checks that some test fails.
# Not part of CI (it rebuilds the library once per mutant); rerun when the core changes and
# update TESTING.md. Extra arguments go to cargo-mutants (e.g. --shard 1/4, --list).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
# Less debug info: each mutant relinks the test binary.
export CARGO_PROFILE_DEV_DEBUG=0
exec cargo mutants --package kinesis-producer --no-shuffle \
  --file src/hash_key.rs --file src/shard_map.rs --file 'src/aggregation/*.rs' \
  --file src/limiter.rs --file src/collector.rs --file src/retry.rs --file src/buffer.rs \
  --file src/congestion.rs --file src/admission.rs --file 'src/engine/*.rs' \
  --exclude '**/tests.rs' --exclude 'src/aggregation/testing.rs' \
  --output target/mutants "$@" -- --lib
