#!/usr/bin/env bash
# Every test, Python and Rust, after doing its own set-up (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release          # the evaluation tests drive the real dlm binary
# the package test's tools (tests/package.rs)
command -v cargo-deb >/dev/null || cargo install --quiet --locked cargo-deb@3.8.0
if ! command -v lintian >/dev/null; then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get install -y -q lintian >/dev/null || { $sudo apt-get update -q && $sudo apt-get install -y -q lintian >/dev/null; }
fi
logs=$(mktemp -d)
.venv/bin/python -m pytest -q 2>&1 | tee "$logs/pytest"
cargo test --release 2>&1 | tee "$logs/cargo"
python_passed=$(grep -Eo '^[0-9]+ passed' "$logs/pytest" | tail -n 1 | cut -d' ' -f1)
rust_passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' "$logs/cargo" | awk '{s += $4} END {print s + 0}')
echo "total: $((python_passed + rust_passed)) passed, 0 failed"
