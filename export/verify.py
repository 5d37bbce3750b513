"""verify: optimum-style parity of ONNX Runtime (CPU) against PyTorch for a model directory.

Order of checks: output names, dtypes, dynamic axes, shapes, then values (max diff per
output). Every failure is collected, then raised together as a ParityError.
"""
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from . import manifest as manifest_mod, progress
from .errors import ParityError
from .model import DiffusionLM, clamp_scores
from .config import from_dict
from .guidance import check_values as check_guidance
from .teacher import load_teacher
from .train_controls import load_controls

# (batch, seq) pairs, all different from the export example (2, seq_len)
CHECK_SHAPES = ((1, 64), (3, 40), (5, 17))
ORT_DTYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int64": "tensor(int64)"}
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


def load_reference(model_dir, manifest):
    state = torch.load(Path(model_dir) / manifest["reference"]["file"], weights_only=False)
    cfg = from_dict(state["config"])
    model = DiffusionLM(cfg.model, state["vocab_size"])
    model.load_state_dict(state["ema"])
    return model.eval(), cfg


def _check_signature(graph, session, failures):
    name = graph["name"]
    for kind, declared, actual in (("input", graph["inputs"], session.get_inputs()),
                                   ("output", graph["outputs"], session.get_outputs())):
        if [d["name"] for d in declared] != [a.name for a in actual]:
            failures.append(f"{name}: {kind} names {[a.name for a in actual]} != manifest {[d['name'] for d in declared]}")
            continue
        for d, a in zip(declared, actual):
            if ORT_DTYPES[d["dtype"]] != a.type:
                failures.append(f"{name}: {kind} {a.name} has type {a.type}, manifest says {d['dtype']}")
            dynamic = [isinstance(s, str) for s in d["shape"]]
            if [isinstance(s, str) for s in a.shape] != dynamic:
                failures.append(f"{name}: {kind} {a.name} shape {a.shape} does not keep the axes {d['shape']} dynamic")


def _check_values(graph, session, reference, T, d, failures):
    np_dtype = NP_DTYPES[graph["inputs"][0]["dtype"]]
    tol = graph["tolerance"]
    gen = torch.Generator().manual_seed(1234)
    worst = 0.0
    for batch, seq in CHECK_SHAPES:
        x = torch.randn(batch, seq, d, generator=gen)
        t = torch.randint(0, T, (batch,), generator=gen)
        t[0] = T - 1
        if np_dtype == np.float16:
            x = x.half().float()  # both engines see the same (fp16-representable) input
        feed = {"x": x.numpy().astype(np_dtype), "t": t.numpy()}
        prev = None
        if len(graph["inputs"]) == 3:  # self-conditioned: the previous x0_hat
            prev = torch.randn(batch, seq, d, generator=gen)
            prev = prev.half().float() if np_dtype == np.float16 else prev
            feed["x0_hat_prev"] = prev.numpy().astype(np_dtype)
        with torch.no_grad():
            ref = reference(x, t, prev).numpy()
        out, *rest = session.run(None, feed)
        if rest:
            _check_nearest(graph, out, rest[0], reference.word_emb.weight.detach(), failures)
        if out.shape != ref.shape:
            failures.append(f"{graph['name']}: x0_hat shape {out.shape} != PyTorch {ref.shape} at (B={batch}, L={seq})")
            continue
        diff = float(np.abs(out.astype(np.float64) - ref).max())
        if not np.isfinite(out).all():
            diff = float("inf")
        if "max_abs_diff_rel_to_scale" in tol:
            diff /= float(np.abs(ref).max())
            limit = tol["max_abs_diff_rel_to_scale"]
        else:
            limit = tol["max_abs_diff"]
        worst = max(worst, diff)
        if not diff <= limit:
            failures.append(f"{graph['name']}: x0_hat differs by {diff:.3g} > {limit:g} at (B={batch}, L={seq})")
    return worst


# Of the scores' scale: the graph's fp32 scores against float64 ones of its x0_hat output. An fp16
# graph on the CPU may score x0_hat before its final cast to fp16 (ONNX Runtime drops the cast
# pair), so there the output's rounding (2^-11 of each value) is allowed for.
NEAREST_TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3, "int8": 1e-5}  # int8 keeps the clamping head in fp32


def _check_nearest(graph, x0_hat, nearest, emb, failures):
    """The clamping head: for the graph's own x0_hat, its ids must be the K best words by the
    clamping score, best first (ties in any order): their scores equal the K largest."""
    k = graph["outputs"][1]["shape"][2]
    b, seq, _ = x0_hat.shape
    where = f"{graph['name']}: nearest at (B={b}, L={seq})"
    if nearest.shape != (b, seq, k):
        failures.append(f"{where}: shape {nearest.shape} != {(b, seq, k)}")
        return
    if nearest.min() < 0 or nearest.max() >= emb.shape[0]:
        failures.append(f"{where}: ids outside 0..{emb.shape[0] - 1}")
        return
    scores = clamp_scores(torch.from_numpy(x0_hat.astype(np.float64)), emb.double())
    chosen = scores.gather(-1, torch.from_numpy(nearest))
    diff = float((chosen - scores.topk(k, dim=-1).values).abs().max()) / float(scores.abs().max())
    limit = NEAREST_TOLERANCE[graph["precision"]]
    if not diff <= limit:
        failures.append(f"{where}: not the {k} nearest embeddings in order ({diff:.3g} of the scores' scale "
                        f"> {limit:g})")


def _load_controls(model_dir, manifest):
    """{control: (classifier, labels)} from the controls reference, or {} without controls."""
    if "controls_reference" not in manifest:
        return {}
    return load_controls(Path(model_dir) / manifest["controls_reference"]["file"])[0]


def _check_teacher(session, graph, reference_path, failures):
    """Teacher logits, ONNX Runtime vs PyTorch, at shapes other than the export's (2, 17)."""
    teacher = load_teacher(reference_path)
    vocab = graph["outputs"][0]["shape"][2]
    gen = torch.Generator().manual_seed(99)
    worst = 0.0
    for batch, seq in ((1, 64), (3, 9)):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        with torch.no_grad():
            ref = teacher(ids).numpy()
        (out,) = session.run(None, {"ids": ids.numpy()})
        worst = max(worst, float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf"))
    limit = graph["tolerance"]["max_abs_diff"]
    if not worst <= limit:
        failures.append(f"{graph['name']}: logits differ by {worst:.3g} > {limit:g}")
    return {"max_abs_diff": worst}


def verify_model_dir(model_dir):
    """Check every graph of a model directory; returns {graph: {...figures}}, raises ParityError."""
    manifest = manifest_mod.load(model_dir)
    reference, cfg = load_reference(model_dir, manifest)
    failures, report = [], {}
    emb = np.fromfile(Path(model_dir) / manifest["embeddings"]["file"], dtype="<f4")
    if emb.size != np.prod(manifest["embeddings"]["shape"]) or not np.array_equal(
            emb.reshape(manifest["embeddings"]["shape"]), reference.word_emb.weight.detach().numpy()):
        failures.append("embeddings.bin does not equal the reference model's embedding matrix")
    controls = _load_controls(model_dir, manifest)
    checking = progress.bar(manifest["graphs"], desc="verify", unit="graph")
    for graph in checking:
        checking.set_postfix_str(graph["name"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(Path(model_dir) / graph["file"]), options, providers=["CPUExecutionProvider"])
        before = len(failures)
        _check_signature(graph, session, failures)
        if len(failures) > before:
            continue
        if graph["role"] == "teacher":
            report[graph["name"]] = _check_teacher(session, graph, Path(model_dir) / manifest["teacher_reference"]["file"],
                                                   failures)
        elif graph["role"] == "guidance":
            classifier, labels = controls[graph["control"]]
            report[graph["name"]] = check_guidance(session, graph, classifier, len(labels), cfg.diffusion.T, failures)
        else:
            worst = _check_values(graph, session, reference, cfg.diffusion.T, cfg.model.d, failures)
            metric = "max_abs_diff_rel_to_scale" if "max_abs_diff_rel_to_scale" in graph["tolerance"] else "max_abs_diff"
            report[graph["name"]] = {metric: worst, "shapes": [list(s) for s in CHECK_SHAPES]}
    if failures:
        raise ParityError(failures)
    return report
