#!/usr/bin/env bash
# Every test, Python and Rust, after doing its own set-up (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q
cargo test --release
