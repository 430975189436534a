#!/usr/bin/env bash
# The ingest benchmark against a real broker (tansu, installed by scripts/test.sh if missing).
#   CAMPO_BENCH_EVENTS=2000000 CAMPO_BENCH_SOAK_SECS=300 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CAMPO_CACHE:-$HOME/.cache/campo}"
export CAMPO_TANSU="${CAMPO_TANSU:-$CACHE/tansu-0.6.0/bin/tansu}"
if [ ! -x "$CAMPO_TANSU" ]; then
  cargo install tansu --version 0.6.0 --locked --no-default-features --features dynostore --root "$CACHE/tansu-0.6.0"
fi
exec cargo bench --bench ingest --locked
