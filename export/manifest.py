"""manifest.json: the one description of a model directory, shared with the Rust runtime."""
import hashlib
import json
from pathlib import Path

from .errors import ExportError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(model_dir, name):
    return {"file": name, "sha256": sha256_of(Path(model_dir) / name)}


def write(model_dir, manifest):
    path = Path(model_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load(model_dir):
    """Read and check a manifest: schema version, every listed file present with its sha256."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{path}: manifest not found (is {model_dir} a model directory?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e})") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ExportError(f"{path}: schema_version {version!r}, this pipeline reads {SCHEMA_VERSION}")
    problems = []
    for entry in listed_files(manifest):
        f = Path(model_dir) / entry["file"]
        if not f.is_file():
            problems.append(f"{f}: listed in the manifest but missing")
        elif sha256_of(f) != entry["sha256"]:
            problems.append(f"{f}: sha256 {sha256_of(f)} does not match the manifest's {entry['sha256']}")
    if problems:
        raise ExportError("; ".join(problems))
    return manifest


def listed_files(manifest):
    yield manifest["tokenizer"]
    yield manifest["embeddings"]
    yield manifest["reference"]
    for optional in ("controls_reference", "teacher_reference"):
        if optional in manifest:
            yield manifest[optional]
    yield from manifest.get("weights", [])  # weights shared by several graphs (external data)
    yield from manifest["graphs"]
