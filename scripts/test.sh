#!/usr/bin/env bash
# The whole test suite, installing what it needs first (idempotent, cached outside the clone):
#   - tansu 0.6, an Apache-Kafka-compatible broker, for the end-to-end and crash tests;
#   - a Python venv with deltalake, polars and duckdb (+ its delta extension) for interop tests;
#   - promtool (Debian's prometheus package) to check and unit-test the alerting rules;
#   - Debian's chromium and playwright-core (npm) for the dashboard's browser test, and
#     schemathesis (in the venv) for the API's OpenAPI document.
#   - matplotlib, nbclient and ipykernel (in the venv) to run the notebooks headless.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${CAMPO_CACHE:-$HOME/.cache/campo}"
mkdir -p "$CACHE"

# --- tansu (about 10 minutes the first time on 2 cores, then cached) ---
TANSU_VERSION=0.6.0
TANSU_ROOT="$CACHE/tansu-$TANSU_VERSION"
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  echo "==> installing tansu $TANSU_VERSION into $TANSU_ROOT (once per machine)"
  cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features --features dynostore \
    --root "$TANSU_ROOT.partial"
  rm -rf "$TANSU_ROOT" && mv "$TANSU_ROOT.partial" "$TANSU_ROOT"
fi
export CAMPO_TANSU="$TANSU_ROOT/bin/tansu"

# --- promtool (Debian's prometheus package), for the alerting rules' tests ---
if ! command -v promtool >/dev/null 2>&1; then
  echo "==> installing promtool (Debian package prometheus, once per machine)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
fi
export CAMPO_PROMTOOL="$(command -v promtool)"

# --- Chromium (Debian's), for the dashboard's browser test ---
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium (Debian package, once per machine)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi
export CAMPO_CHROMIUM=/usr/bin/chromium
# playwright-core (npm; it drives the browser and downloads none) for the same test.
NODE_DIR="$CACHE/node-playwright-core-1.64.1"
if [ ! -f "$NODE_DIR/.complete" ]; then
  echo "==> installing playwright-core into $NODE_DIR (once per machine)"
  mkdir -p "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent playwright-core@1.64.1
  touch "$NODE_DIR/.complete"
fi
export CAMPO_NODE_PATH="$NODE_DIR/node_modules"

# --- Python readers (and schemathesis) ---
REQ=tests/python/requirements.txt
VENV="$CACHE/venv-$(sha256sum "$REQ" | cut -c1-12)"
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.complete" ]; then
  echo "==> creating the Python venv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  touch "$VENV/.complete"
fi
export CAMPO_PYTHON="$VENV/bin/python"

# The benchmarks are run by hand (`cargo bench`), not here; compiling them (in the test profile,
# which shares the tests' build) keeps a change from breaking them unnoticed.
echo "==> compiling the benchmarks"
cargo test --workspace --benches --no-run --locked

echo "==> cargo test (tansu: $CAMPO_TANSU, python: $CAMPO_PYTHON)"
cargo test --workspace --locked "$@"
