#!/usr/bin/env bash
# One-time set-up, idempotent: the Python venv (.venv) for export/ and the ONNX Runtime
# shared library the Rust runtime loads (.ort/, taken from the pinned PyPI wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! cmp -s export/requirements.txt .venv/.requirements; then
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r export/requirements.txt
  cp export/requirements.txt .venv/.requirements
fi
capi=$(.venv/bin/python -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
lib=$(ls "$capi"/libonnxruntime.so.* | head -n 1)
mkdir -p .ort
cp -f "$lib" .ort/
ln -sf "$(basename "$lib")" .ort/libonnxruntime.so
echo "setup: venv in .venv, ONNX Runtime library in .ort/$(basename "$lib")"
