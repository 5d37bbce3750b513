"""export: write a model directory (ONNX graphs fp32 + fp16, embeddings, tokenizer, manifest)."""
import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
import torch
from tokenizers import Tokenizer

from . import data, manifest as manifest_mod
from .errors import ExportError
from .schedule import alpha_bar
from .atomic import atomic_dir
from .guidance import DEFAULTS, GUIDANCE, control_spec, export_guidance
from .guidance import OPSET as GUIDANCE_OPSET
from .teacher import TEACHER_FILE, export_teacher, load_teacher
from .train_controls import CONTROLS_FILE, load_controls
from .train import CHECKPOINT, load_ema
from .verify import verify_model_dir

OPSET = 18
KEEP = ("README.md", "samples.txt", "EVAL.md")  # hand-written or separately made files of a model directory
MAX_BATCH = 4096


@dataclass(frozen=True)
class GraphSpec:
    """Declarative description of one exported graph; written verbatim into the manifest."""

    name: str
    role: str
    precision: str
    tolerance: dict

    @property
    def file(self):
        return f"{self.name}.onnx"

    @property
    def float_dtype(self):
        return {"fp32": "float32", "fp16": "float16"}[self.precision]

    def io(self, d):
        x = {"name": "x", "dtype": self.float_dtype, "shape": ["batch", "seq", d]}
        t = {"name": "t", "dtype": "int64", "shape": ["batch"]}
        out = {"name": "x0_hat", "dtype": self.float_dtype, "shape": ["batch", "seq", d]}
        return [x, t], [out]


DENOISERS = (
    GraphSpec("denoiser.fp32", "denoiser", "fp32", {"max_abs_diff": 1e-4}),
    GraphSpec("denoiser.fp16", "denoiser", "fp16", {"max_abs_diff_rel_to_scale": 2e-2}),
)


def torch_dtype(precision):
    return {"fp32": torch.float32, "fp16": torch.float16}[precision]


def export_denoiser(model, spec, seq_len, out_path):
    """torch.onnx (dynamo) export with batch and sequence length dynamic."""
    model = model.to(torch_dtype(spec.precision)).eval()
    x = torch.randn(2, seq_len, model.word_emb.embedding_dim, dtype=torch_dtype(spec.precision))
    t = torch.tensor([1, 1000], dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=1, max=seq_len)
    torch.onnx.export(
        model, (x, t), str(out_path), input_names=["x", "t"], output_names=["x0_hat"],
        dynamic_shapes={"x": {0: batch, 1: seq}, "t": {0: batch}},
        dynamo=True, opset_version=OPSET, optimize=True, external_data=False, verbose=False,
    )
    onnx.checker.check_model(str(out_path))


def export_model(data_dir, train_dir, out_dir, command, controls_dir=None, teacher_dir=None):
    """Export the EMA weights of train_dir's checkpoint into out_dir (atomically), with the
    guidance graphs of controls_dir's classifiers when they have been trained."""
    ckpt = Path(train_dir) / CHECKPOINT
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no checkpoint; run `python -m export train` first")
    tok_path = Path(data_dir) / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    model, cfg, state = load_ema(ckpt, tok.get_vocab_size())
    with atomic_dir(out_dir, keep=KEEP) as tmp:
        shutil.copy(tok_path, tmp / "tokenizer.json")
        emb = model.word_emb.weight.detach().numpy().astype("<f4")
        (tmp / "embeddings.bin").write_bytes(emb.tobytes())
        torch.save({"config": cfg.to_dict(), "vocab_size": tok.get_vocab_size(), "ema": model.state_dict()},
                   tmp / "reference.pt")
        graphs = []
        for spec in DENOISERS:
            # a fresh copy per precision: export_denoiser casts the module in place
            export_denoiser(load_ema(ckpt, tok.get_vocab_size())[0], spec, cfg.model.seq_len, tmp / spec.file)
            inputs, outputs = spec.io(cfg.model.d)
            graphs.append({
                "name": spec.name, "role": spec.role, **manifest_mod.file_entry(tmp, spec.file),
                "precision": spec.precision, "opset": OPSET, "inputs": inputs, "outputs": outputs,
                "dynamic_axes": {"batch": {"min": 1, "max": MAX_BATCH}, "seq": {"min": 1, "max": cfg.model.seq_len}},
                "tolerance": spec.tolerance,
            })
        controls = {}
        controls_pt = Path(controls_dir) / CONTROLS_FILE if controls_dir else None
        if controls_pt and controls_pt.is_file():
            shutil.copy(controls_pt, tmp / CONTROLS_FILE)
            controls = export_controls(tmp, graphs)
        teacher_pt = Path(teacher_dir) / TEACHER_FILE if teacher_dir else None
        if teacher_pt and teacher_pt.is_file():
            shutil.copy(teacher_pt, tmp / TEACHER_FILE)
            export_teacher(load_teacher(teacher_pt), cfg.model.seq_len, tmp / "teacher.onnx")
            graphs.append({
                "name": "teacher", "role": "teacher", **manifest_mod.file_entry(tmp, "teacher.onnx"),
                "precision": "fp32", "opset": OPSET,
                "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", tok.get_vocab_size()]}],
                "dynamic_axes": {"batch": {"min": 1, "max": MAX_BATCH}, "seq": {"min": 2, "max": cfg.model.seq_len}},
                "tolerance": {"max_abs_diff": 1e-3},
            })
        manifest = build_manifest(cfg, tok, tmp, graphs, data_dir, train_dir, state, command)
        if teacher_pt and teacher_pt.is_file():
            manifest["teacher_reference"] = {**manifest_mod.file_entry(tmp, TEACHER_FILE),
                                             "what": "teacher LM weights for PyTorch (lm-score parity checks)"}
        if controls:
            manifest["controls"] = controls
            manifest["controls_reference"] = {**manifest_mod.file_entry(tmp, CONTROLS_FILE),
                                              "what": "classifier weights for PyTorch (guidance parity checks)"}
        manifest_mod.write(tmp, manifest)
        report = verify_model_dir(tmp)  # fails loudly before anything replaces out_dir
        for g in graphs:
            g["parity"] = report[g["name"]]
        manifest_mod.write(tmp, manifest)
    return out_dir


def export_controls(model_dir, graphs):
    """Guidance graphs for every trained classifier; appends to `graphs`, returns the manifest's controls."""
    classifiers, ccfg = load_controls(Path(model_dir) / CONTROLS_FILE)
    batch, seq_len, d = ccfg.controls.guide_batch, ccfg.model.seq_len, ccfg.model.d
    controls = {}
    for name, (classifier, labels) in classifiers.items():
        control_input = control_spec(name, batch, seq_len, len(labels))
        controls[name] = {"labels": labels, "input": control_input, "defaults": DEFAULTS[name], "graphs": {}}
        for spec in (s for s in GUIDANCE if s.control == name):
            export_guidance(copy.deepcopy(classifier), spec, batch, seq_len, d, len(labels), Path(model_dir) / spec.file)
            x_dtype = "float16" if spec.precision == "fp16" else "float32"
            graphs.append({
                "name": spec.name, "role": "guidance", "control": name, **manifest_mod.file_entry(model_dir, spec.file),
                "precision": spec.precision, "opset": GUIDANCE_OPSET,
                "inputs": [{"name": "x", "dtype": x_dtype, "shape": [batch, seq_len, d]},
                           {"name": "t", "dtype": "int64", "shape": [batch]},
                           {k: control_input[k] for k in ("name", "dtype", "shape")}],
                "outputs": [{"name": "loss", "dtype": "float32", "shape": [batch]},
                            {"name": "grad", "dtype": x_dtype, "shape": [batch, seq_len, d]}],
                "dynamic_axes": {}, "tolerance": spec.tolerance,
            })
            controls[name]["graphs"][spec.precision] = spec.name
    return controls


def _final_record(train_dir):
    log = Path(train_dir) / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    steps = [r for r in records if "step" in r]
    return steps[-1] if steps else {}


def build_manifest(cfg, tok, model_dir, graphs, data_dir, train_dir, state, command):
    vocab = tok.get_vocab()
    stats = json.loads((Path(data_dir) / "stats.json").read_text())
    final = _final_record(train_dir)
    return {
        "schema_version": manifest_mod.SCHEMA_VERSION,
        "model": {"d": cfg.model.d, "seq_len": cfg.model.seq_len, "vocab_size": tok.get_vocab_size(),
                  "prediction": "x0", "architecture": cfg.to_dict()["model"]},
        "diffusion": {
            "schedule": cfg.diffusion.schedule, "schedule_param": {"offset": 1e-4, "max_beta": 0.999},
            "T": cfg.diffusion.T, "model_variance": "fixed_large",
            "alpha_bar": [float(a) for a in alpha_bar(cfg.diffusion.schedule, cfg.diffusion.T)],
        },
        "tokenizer": manifest_mod.file_entry(model_dir, "tokenizer.json"),
        "special_tokens": {name.strip("[]").lower(): vocab[name] for name in data.SPECIAL_TOKENS},
        "embeddings": {**manifest_mod.file_entry(model_dir, "embeddings.bin"), "dtype": "float32",
                       "byte_order": "little", "shape": [tok.get_vocab_size(), cfg.model.d]},
        "reference": {**manifest_mod.file_entry(model_dir, "reference.pt"),
                      "what": "EMA weights for PyTorch (parity checks and the reference sampler)"},
        "graphs": graphs,
        "training": {
            "data_files": stats["files"], "sentences": stats["sentences"], "split_seed": stats["split_seed"],
            "steps": state["step"], "seed": cfg.train.seed, "final_loss": final.get("loss_ema"),
            "train_seconds": round(state.get("elapsed_s", 0.0)), "config": cfg.to_dict(),
        },
        "export": {"command": command, "torch": torch.__version__, "onnx": onnx.__version__,
                   "onnxruntime": onnxruntime.__version__},
    }
