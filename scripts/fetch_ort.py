"""Fetch the ONNX Runtime shared library the Rust runtime loads, without the Python venv.

    python3 scripts/fetch_ort.py [DIR]        # default DIR: .ort next to this script's parent
    python3 scripts/fetch_ort.py DIR --platform manylinux_2_28_aarch64   # another machine's

Downloads the pinned `onnxruntime` wheel for this machine (or --platform) from the package index pip is
configured for (`pip download`, no dependencies, ~20 MB), takes `libonnxruntime.so.*` out of it
and links `DIR/libonnxruntime.so` to it; does nothing when that link already exists. Only the
standard library and pip. `build.rs` runs it when `.ort/` is empty, so `cargo run --release --
generate` works on a fresh clone; `scripts/setup.sh` copies the same file out of the venv.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.32.0"  # the same pin as export/requirements.txt


def fetch(target, platform=None):
    target = Path(target)
    link = target / "libonnxruntime.so"
    if link.exists():
        return link
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        where = ["--platform", platform] if platform else []
        subprocess.run([sys.executable, "-m", "pip", "download", f"onnxruntime=={VERSION}", "--no-deps", *where,
                        "--only-binary=:all:", "--quiet", "--disable-pip-version-check", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("onnxruntime-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if "/capi/libonnxruntime.so." in n)
            name = Path(member).name
            (target / name).write_bytes(z.read(member))
    if link.is_symlink():
        link.unlink()
    os.symlink(name, link)
    return link


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fetch libonnxruntime from the onnxruntime wheel")
    parser.add_argument("dir", nargs="?", default=Path(__file__).resolve().parents[1] / ".ort")
    parser.add_argument("--platform", help="a wheel platform tag, e.g. manylinux_2_28_aarch64")
    args = parser.parse_args()
    print(f"fetch_ort: {fetch(args.dir, args.platform)}")
