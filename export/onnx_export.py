"""export: write a model directory (ONNX graphs fp32 + fp16, embeddings, tokenizer, manifest)."""
import copy
import json
import shutil
from pathlib import Path

import onnx
import onnxruntime
import torch
from tokenizers import Tokenizer
from torch import nn

from . import data, graphs, manifest as manifest_mod, progress
from .errors import ExportError
from .fusions import fuse_attention, order_gelu
from .quantize import quantize_denoiser
from .schedule import SCHEDULE_PARAM, alpha_bar
from .atomic import atomic_dir
from .guidance import DEFAULTS, control_spec, export_guidance
from .weights import share_weights
from .teacher import TEACHER_FILE, export_teacher, load_teacher
from .train_controls import CONTROLS_FILE, load_controls
from .train import CHECKPOINT, load_ema
from .verify import verify_model_dir

KEEP = ("README.md", "samples.txt", "EVAL.md")  # hand-written or separately made files of a model directory


class Clamping(nn.Module):
    """The denoiser with the clamping trick's search on the engine: x0_hat, and the ids of its K
    nearest word embeddings per position (scores in fp32 at either precision, as the host's).
    The scores are one MatMul, [x0_hat, 1] @ [EMB^T; -||EMB||^2 / 2] (clamp_scores); K = 1 is an
    ArgMax, cheaper on the CPU than a TopK."""

    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, k
        emb = model.word_emb.weight.detach().float()
        self.register_buffer("score_weight", torch.cat([emb.t(), -0.5 * (emb**2).sum(-1)[None]], 0).contiguous())

    def forward(self, x, t, x0_hat_prev=None):
        x0_hat = self.model(x, t, x0_hat_prev)
        x1 = torch.cat([x0_hat.float(), torch.ones_like(x0_hat[..., :1], dtype=torch.float32)], -1)
        scores = x1 @ self.score_weight
        nearest = scores.argmax(-1, keepdim=True) if self.k == 1 else scores.topk(self.k, dim=-1).indices
        return x0_hat, nearest


def export_denoiser(model, spec, out_path):
    """The denoiser at the precision of `spec`, batch and sequence length dynamic, its attention
    fused and its GELUs in the order ONNX Runtime fuses (fusions.py); returns the node counts as
    exported and after the fusion, and the GELUs reordered."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[spec.precision]
    clamping = Clamping(model, spec.outputs[1].shape[2])  # the fp32 embeddings, as the host's
    model = model.to(dtype).eval()
    seq_len = spec.dynamic_axes["seq"]["max"]
    x = torch.randn(2, seq_len, model.word_emb.embedding_dim, dtype=dtype)
    t = torch.tensor([1, 1000], dtype=torch.long)
    example = (x, t, torch.randn(x.shape, dtype=dtype)) if model.self_condition else (x, t)
    spec.export(clamping.eval(), example, out_path, optimize=True)
    graph = onnx.load(str(out_path))
    before = len(graph.graph.node)
    fuse_attention(graph, block_prefixes(len(model.blocks)), model.blocks[0].heads, model.hidden)
    gelus = order_gelu(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out_path))
    return {"exported": before, "fused": len(graph.graph.node), "gelus_ordered": gelus}


def block_prefixes(layers):
    """The names the exported graph gives each transformer block's parameters (Clamping wraps the model)."""
    return [f"model.blocks.{i}" for i in range(layers)]


DENOISER_PRECISIONS = ("fp32", "fp16", "int8")  # int8 is quantized from the fp32 graph (quantize.py)


def export_denoisers(load, cfg, out_dir, bar=None):
    """The denoiser graphs of every precision into out_dir, from the module `load()` gives (called
    once per exported precision: the export casts it in place); returns their manifest entries
    and node counts."""
    entries, nodes, files = [], {}, {}
    for precision in DENOISER_PRECISIONS:
        spec = graphs.denoiser(precision, cfg.model.d, cfg.model.seq_len, cfg.model.self_condition)
        files[precision] = out_dir / spec.file
        if bar is not None:
            bar.set_postfix_str(spec.name)
        if precision == "int8":  # from the fp32 graph, written before it
            nodes[spec.name] = quantize_denoiser(files["fp32"], files["int8"], block_prefixes(cfg.model.layers),
                                                 cfg.diffusion.T)
        else:
            nodes[spec.name] = export_denoiser(load(), spec, out_dir / spec.file)
        entries.append(spec.manifest_entry(out_dir))
        if bar is not None:
            bar.update(1)
    return entries, nodes


def export_model(data_dir, train_dir, out_dir, command, controls_dir=None, teacher_dir=None, guide_batches=(1, 4, 16)):
    """Export the EMA weights of train_dir's checkpoint into out_dir (atomically), with the
    guidance graphs of controls_dir's classifiers, at each of `guide_batches`, when they have
    been trained."""
    ckpt = Path(train_dir) / CHECKPOINT
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no checkpoint; run `python -m export train` first")
    tok_path = Path(data_dir) / "tokenizer.json"
    tok = Tokenizer.from_file(str(tok_path))
    model, cfg, state = load_ema(ckpt, tok.get_vocab_size())
    controls_pt = Path(controls_dir) / CONTROLS_FILE if controls_dir else None
    teacher_pt = Path(teacher_dir) / TEACHER_FILE if teacher_dir else None
    has_teacher = bool(teacher_pt and teacher_pt.is_file())
    # the guidance graphs are counted in once the classifiers are loaded
    bar = progress.bar(total=len(DENOISER_PRECISIONS) + has_teacher, desc="export", unit="graph")
    with bar, atomic_dir(out_dir, keep=KEEP) as tmp:
        shutil.copy(tok_path, tmp / "tokenizer.json")
        emb = model.word_emb.weight.detach().numpy().astype("<f4")
        (tmp / "embeddings.bin").write_bytes(emb.tobytes())
        torch.save({"config": cfg.to_dict(), "vocab_size": tok.get_vocab_size(), "ema": model.state_dict()},
                   tmp / "reference.pt")
        entries, _ = export_denoisers(lambda: load_ema(ckpt, tok.get_vocab_size())[0], cfg, tmp, bar)
        controls, weights = {}, []
        if controls_pt and controls_pt.is_file():
            shutil.copy(controls_pt, tmp / CONTROLS_FILE)
            controls, weights = export_controls(tmp, entries, guide_batches, bar)
        if has_teacher:
            shutil.copy(teacher_pt, tmp / TEACHER_FILE)
            spec = graphs.teacher(tok.get_vocab_size(), cfg.model.seq_len)
            bar.set_postfix_str(spec.name)
            export_teacher(load_teacher(teacher_pt), spec, tmp / spec.file)
            entries.append(spec.manifest_entry(tmp))
            bar.update(1)
        bar.close()  # verify has a bar of its own
        manifest = build_manifest(cfg, tok, tmp, entries, data_dir, train_dir, state, command)
        if has_teacher:
            manifest["teacher_reference"] = {**manifest_mod.file_entry(tmp, TEACHER_FILE),
                                             "what": "teacher LM weights for PyTorch (lm-score parity checks)"}
        if controls:
            manifest["controls"] = controls
            manifest["weights"] = weights
            manifest["controls_reference"] = {**manifest_mod.file_entry(tmp, CONTROLS_FILE),
                                              "what": "classifier weights for PyTorch (guidance parity checks)"}
        manifest_mod.write(tmp, manifest)
        report = verify_model_dir(tmp)  # fails loudly before anything replaces out_dir
        for g in entries:
            g["parity"] = report[g["name"]]
        manifest_mod.write(tmp, manifest)
    return out_dir


def export_controls(model_dir, entries, guide_batches, bar=None, only=None):
    """Guidance graphs for every trained classifier, at each batch size of `guide_batches`
    (the export config's controls.guide_batches) and both precisions, sharing one weights file per classifier; appends the graphs to
    `entries`, returns the manifest's controls and the weights files' entries. `bar`: a progress
    bar to count the graphs on."""
    classifiers, ccfg = load_controls(Path(model_dir) / CONTROLS_FILE)
    batches, seq_len, d = guide_batches, ccfg.model.seq_len, ccfg.model.d
    bar = bar if bar is not None else progress.bar(total=0, hide=True)
    chosen = [name for name in classifiers if only is None or name in only]
    bar.total += 2 * len(chosen) * len(batches)
    bar.refresh()
    controls, weights = {}, []
    for name, (classifier, labels) in classifiers.items():
        if only is not None and name not in only:
            continue
        control_input = control_spec(name, batches[0], seq_len, len(labels))
        controls[name] = {"labels": labels, "input": control_input, "defaults": DEFAULTS[name],
                          "graphs": {"fp32": [], "fp16": []}}
        specs = []
        for precision in ("fp32", "fp16"):
            for batch in batches:
                spec = graphs.guidance(name, precision, batch, seq_len, d, control_spec(name, batch, seq_len, len(labels)),
                                       bucket=batch != batches[0])
                bar.set_postfix_str(spec.name)
                export_guidance(copy.deepcopy(classifier), spec, len(labels), Path(model_dir) / spec.file)
                bar.update(1)
                controls[name]["graphs"][precision].append(spec.name)
                specs.append(spec)
        shared = f"guide_{name}.weights"
        share_weights(model_dir, [spec.file for spec in specs], shared)
        entries.extend(spec.manifest_entry(model_dir) for spec in specs)
        weights.append({**manifest_mod.file_entry(model_dir, shared), "graphs": [spec.name for spec in specs]})
    return controls, weights


def _final_record(train_dir):
    log = Path(train_dir) / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    steps = [r for r in records if "step" in r]
    return steps[-1] if steps else {}


def build_manifest(cfg, tok, model_dir, entries, data_dir, train_dir, state, command):
    vocab = tok.get_vocab()
    stats = json.loads((Path(data_dir) / "stats.json").read_text())
    final = _final_record(train_dir)
    return {
        "schema_version": manifest_mod.SCHEMA_VERSION,
        "model": {"d": cfg.model.d, "seq_len": cfg.model.seq_len, "vocab_size": tok.get_vocab_size(),
                  "prediction": "x0", "self_condition": cfg.model.self_condition,
                  "architecture": cfg.to_dict()["model"]},
        "diffusion": {
            "schedule": cfg.diffusion.schedule, "schedule_param": dict(SCHEDULE_PARAM),
            "T": cfg.diffusion.T, "model_variance": "fixed_large",
            "alpha_bar": [float(a) for a in alpha_bar(cfg.diffusion.schedule, cfg.diffusion.T)],
        },
        "tokenizer": manifest_mod.file_entry(model_dir, "tokenizer.json"),
        "special_tokens": {name.strip("[]").lower(): vocab[name] for name in data.SPECIAL_TOKENS},
        "embeddings": {**manifest_mod.file_entry(model_dir, "embeddings.bin"), "dtype": "float32",
                       "byte_order": "little", "shape": [tok.get_vocab_size(), cfg.model.d]},
        "reference": {**manifest_mod.file_entry(model_dir, "reference.pt"),
                      "what": "EMA weights for PyTorch (parity checks and the reference sampler)"},
        "graphs": entries,
        "training": {
            "data_files": stats["files"], "sentences": stats["sentences"], "split_seed": stats["split_seed"],
            "steps": state["step"], "seed": cfg.train.seed, "final_loss": final.get("loss_ema"),
            "train_seconds": round(state.get("elapsed_s", 0.0)), "config": cfg.to_dict(),
        },
        "export": {"command": command, "torch": torch.__version__, "onnx": onnx.__version__,
                   "onnxruntime": onnxruntime.__version__},
    }
