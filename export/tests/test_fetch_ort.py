"""scripts/fetch_ort.py: the ONNX Runtime library without the venv, as build.rs fetches it."""
import importlib.util
import os
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch_ort.py"


def load():
    spec = importlib.util.spec_from_file_location("fetch_ort", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_puts_the_pinned_library_behind_a_link_and_is_idempotent(tmp_path):
    fetch_ort = load()
    link = fetch_ort.fetch(tmp_path / "ort")
    assert link.is_symlink() and os.readlink(link) == f"libonnxruntime.so.{fetch_ort.VERSION}"
    assert link.read_bytes()[:4] == b"\x7fELF"
    requirements = (SCRIPT.parents[1] / "export" / "requirements.txt").read_text()
    assert f"onnxruntime=={fetch_ort.VERSION}" in requirements, "the same pin as the venv"
    before = link.stat().st_mtime_ns
    assert fetch_ort.fetch(tmp_path / "ort") == link and link.stat().st_mtime_ns == before
