#!/usr/bin/env bash
# Every test, Python and Rust, after doing its own set-up (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release          # the evaluation tests drive the real dlm binary
.venv/bin/python -m pytest -q
cargo test --release
