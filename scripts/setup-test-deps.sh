#!/usr/bin/env bash
# Installs what the integration tests need, into target/ (idempotent):
#   target/emulators/node_modules/{kinesalite,kinesis-local}  (npm)
#   target/pyenv  a Python venv with aws-kinesis-agg and six  (PyPI)
# Exit status is non-zero if anything could not be installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
emu="$target/emulators"
py="$target/pyenv"
status=0

mkdir -p "$emu"
if [ ! -f "$emu/node_modules/kinesalite/cli.js" ] || [ ! -f "$emu/node_modules/kinesis-local/main.js" ]; then
  echo "setup-test-deps: installing kinesalite and kinesis-local into $emu" >&2
  [ -f "$emu/package.json" ] || echo '{"name":"kinesis-producer-emulators","private":true}' > "$emu/package.json"
  (cd "$emu" && npm install --no-audit --no-fund --loglevel=error kinesalite@3.3.3 kinesis-local@0.6.2) || status=1
fi

if [ ! -x "$py/bin/python" ] || ! "$py/bin/python" -c 'import aws_kinesis_agg, six' 2>/dev/null; then
  echo "setup-test-deps: installing aws-kinesis-agg and six into $py" >&2
  { python3 -m venv "$py" && "$py/bin/pip" install --quiet --disable-pip-version-check aws-kinesis-agg six; } || status=1
fi
exit $status
