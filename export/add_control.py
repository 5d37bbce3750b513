"""add-control: export the guidance graphs of classifiers trained after a model directory was
exported (e.g. the tree classifier beside the shipped pos, content and spans ones) into it, leaving
its other graphs as they are; refresh-denoiser: export its denoiser graphs again from its own
EMA weights (reference.pt) as graphs.denoiser now describes them (e.g. with the clamping head).
The whole directory is verified before it is replaced."""
import json
import shutil
from pathlib import Path

from . import manifest as manifest_mod
from .atomic import atomic_dir
from .errors import ExportError
from .onnx_export import export_controls, export_denoisers
from .train_controls import CONTROLS_FILE
from .verify import load_reference, verify_model_dir


def _copy_into(model_dir, tmp):
    for f in model_dir.iterdir():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)


def refresh_denoiser(model_dir, command):
    """Replace model_dir's denoiser graphs (fp32, fp16, int8) by a fresh export of its reference.pt."""
    model_dir = Path(model_dir)
    m = manifest_mod.load(model_dir)
    with atomic_dir(model_dir) as tmp:
        _copy_into(model_dir, tmp)
        cfg = load_reference(tmp, m)[1]
        entries, nodes = export_denoisers(lambda: load_reference(tmp, m)[0], cfg, tmp)
        names = {g["name"] for g in entries}
        m["graphs"] = entries + [g for g in m["graphs"] if g["name"] not in names]
        m["export"]["refreshed_denoiser"] = {"command": command}
        manifest_mod.write(tmp, m)
        report = verify_model_dir(tmp)
        for g in entries:
            g["parity"] = report[g["name"]]
        manifest_mod.write(tmp, m)
    print(json.dumps({g["name"]: {**g["parity"], "nodes": nodes[g["name"]]} for g in entries}, indent=2))
    return model_dir


def add_controls(model_dir, controls_dir, guide_batches, only, command):
    """Add (or replace) the controls `only` of controls_dir's controls.pt in model_dir; the other
    classifiers in that controls.pt must equal the model's own (their graphs are kept)."""
    model_dir, controls_pt = Path(model_dir), Path(controls_dir) / CONTROLS_FILE
    if not controls_pt.is_file():
        raise ExportError(f"{controls_pt}: not found; run `python -m export controls --only tree` first")
    m = manifest_mod.load(model_dir)
    with atomic_dir(model_dir) as tmp:
        _copy_into(model_dir, tmp)
        for name in only:
            for old in tmp.glob(f"guide_{name}.*"):
                old.unlink()
        shutil.copy(controls_pt, tmp / CONTROLS_FILE)
        entries = []
        controls, weights = export_controls(tmp, entries, guide_batches, only=set(only))
        missing = set(only) - set(controls)
        if missing:
            raise ExportError(f"{controls_pt} has no classifier for {sorted(missing)}")
        m["graphs"] = [g for g in m["graphs"] if g.get("control") not in only] + entries
        m["controls"] = {**{k: v for k, v in m["controls"].items() if k not in only}, **controls}
        added = {w["file"] for w in weights}
        m["weights"] = [w for w in m["weights"] if w["file"] not in added] + weights
        m["controls_reference"] = {**manifest_mod.file_entry(tmp, CONTROLS_FILE),
                                   "what": "classifier weights for PyTorch (guidance parity checks)"}
        m["export"]["added_controls"] = {"controls": sorted(only), "command": command}
        manifest_mod.write(tmp, m)
        report = verify_model_dir(tmp)  # every graph, the kept ones included, before model_dir changes
        for g in entries:
            g["parity"] = report[g["name"]]
        manifest_mod.write(tmp, m)
    print(json.dumps({name: report[name] for name in (g["name"] for g in entries)}, indent=2))
    return model_dir
