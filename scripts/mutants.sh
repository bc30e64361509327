#!/usr/bin/env bash
# Mutation testing of the pure core with the fast (unit) tests: cargo-mutants changes one
# operator, literal or function body at a time and checks that some test fails.
# Not part of CI (it rebuilds the library's unit-test binary once per mutant: about 5 s a
# mutant, 1,100 mutants, 45-60 minutes on 2 cores with two jobs); rerun when the core changes
# and update TESTING.md. Extra arguments go to cargo-mutants (e.g. --shard 1/4, --list).
#
# Do not set CARGO_TARGET_DIR for this: with --jobs, every job must build in its own copy of
# the tree, or the jobs overwrite each other's test binaries and test the wrong mutant.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
unset CARGO_TARGET_DIR
# Less debug info: each mutant relinks the test binary.
export CARGO_PROFILE_DEV_DEBUG=0
exec cargo mutants --package kinesis-producer --no-shuffle --jobs "${MUTANTS_JOBS:-2}" \
  --file src/hash_key.rs --file src/shard_map.rs --file 'src/aggregation/*.rs' \
  --file 'src/limiter/*.rs' --file src/collector.rs --file src/retry.rs --file src/buffer.rs \
  --file src/congestion.rs --file src/admission.rs --file src/stream_settings.rs \
  --file 'src/engine/*.rs' --file src/kinesis/results.rs \
  --exclude '**/tests.rs' --exclude 'src/limiter/fleet_tests.rs' \
  --exclude 'src/aggregation/testing.rs' --exclude 'src/engine/tests/*.rs' \
  --timeout 15 --output target/mutants --cargo-arg=--lib "$@"
