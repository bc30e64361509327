#!/usr/bin/env bash
# The whole test suite: installs the emulators and the reference decoder when missing
# (scripts/setup-test-deps.sh), then runs every test of the workspace, doc tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-deps.sh || {
  echo "test.sh: could not install the test dependencies (npm/PyPI)" >&2
  [ "${CI:-}" = "true" ] && exit 1
}
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  cargo test --workspace --all-targets --no-fail-fast "$@"
fi
cargo test --workspace --doc
