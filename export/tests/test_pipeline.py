"""The tiny config end to end: prepare, train, export, verify; manifest and tokenizer checks."""
import json

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer

from export import data, manifest
from export.errors import ExportError, ParityError
from export.sample import sample_texts
from export.train import train
from export.verify import verify_model_dir

from .conftest import with_train


def test_export_writes_every_file_with_matching_sha256(tiny_workdir):
    model_dir = tiny_workdir / "model"
    m = manifest.load(model_dir)  # raises on any missing file or sha mismatch
    for entry in manifest.listed_files(m):
        assert manifest.sha256_of(model_dir / entry["file"]) == entry["sha256"]
    guides = {f"guide_{c}{b}.{p}" for c in ("pos", "content", "spans", "tree") for b in ("", ".b2") for p in ("fp32", "fp16")}
    assert {g["name"] for g in m["graphs"]} == {"denoiser.fp32", "denoiser.fp16", "denoiser.int8", "teacher"} | guides
    assert len(m["diffusion"]["alpha_bar"]) == m["diffusion"]["T"] == 2000
    assert m["special_tokens"] == {"pad": 0, "unk": 1, "start": 2, "end": 3}
    emb = np.fromfile(model_dir / "embeddings.bin", dtype="<f4")
    assert emb.size == m["model"]["vocab_size"] * m["model"]["d"]


def test_graphs_keep_batch_and_length_dynamic(tiny_workdir):
    m = manifest.load(tiny_workdir / "model")
    for g in (g for g in m["graphs"] if g["role"] == "denoiser"):
        graph = onnx.load(str(tiny_workdir / "model" / g["file"])).graph
        x = graph.input[0].type.tensor_type.shape.dim
        assert x[0].dim_param and x[1].dim_param and x[2].dim_value == m["model"]["d"]
        assert g["opset"] == 18 and "parity" in g


def test_verify_checks_every_graph(tiny_workdir):
    m = manifest.load(tiny_workdir / "model")
    report = verify_model_dir(tiny_workdir / "model")  # a figure past its tolerance raises ParityError
    assert set(report) == {g["name"] for g in m["graphs"]}, "a graph went unchecked"


def test_guidance_graphs_have_fixed_batch_shapes_and_their_labels(tiny_workdir):
    m = manifest.load(tiny_workdir / "model")
    for g in (g for g in m["graphs"] if g["role"] == "guidance"):
        batch = 2 if ".b2." in g["name"] else 1  # the tiny config's guide_batches
        assert g["inputs"][0]["shape"] == [batch, 64, 16] and g["outputs"][1]["shape"] == [batch, 64, 16]
    assert m["controls"]["pos"]["labels"][-3:] == ["START", "END", "PAD"]
    assert m["controls"]["content"]["input"]["shape"][1] == len(m["controls"]["content"]["labels"])
    assert m["controls"]["pos"]["graphs"] == {"fp32": ["guide_pos.fp32", "guide_pos.b2.fp32"],
                                              "fp16": ["guide_pos.fp16", "guide_pos.b2.fp16"]}


def test_guidance_graphs_of_a_control_share_one_weights_file(tiny_workdir):
    m = manifest.load(tiny_workdir / "model")
    for w in m["weights"]:
        control = w["file"].split("_", 1)[1].split(".")[0]
        assert set(w["graphs"]) == {n for ns in m["controls"][control]["graphs"].values() for n in ns}
        for name in w["graphs"]:
            graph = onnx.load(str(tiny_workdir / "model" / f"{name}.onnx"), load_external_data=False).graph
            external = [i for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
            assert external and all(e.external_data[0].value == w["file"] for e in external)


def test_verify_fails_loudly_on_a_tampered_graph(tiny_workdir, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_workdir / "model", model_dir)
    path = model_dir / "denoiser.fp32.onnx"
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:  # scale every weight matrix: LayerNorm cannot undo all of it
        arr = onnx.numpy_helper.to_array(init)
        if arr.ndim == 2:
            init.CopyFrom(onnx.numpy_helper.from_array((arr * 1.5).astype(np.float32), init.name))
    onnx.save(proto, str(path))
    with pytest.raises(ExportError, match="sha256"):
        verify_model_dir(model_dir)
    m = json.loads((model_dir / "manifest.json").read_text())
    next(g for g in m["graphs"] if g["name"] == "denoiser.fp32")["sha256"] = manifest.sha256_of(path)
    (model_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ParityError, match="denoiser.fp32"):
        verify_model_dir(model_dir)


def test_tokenizer_round_trips_heldout_sentences(tiny_workdir):
    tok = Tokenizer.from_file(str(tiny_workdir / "data/tokenizer.json"))
    vocab = tok.get_vocab()
    for rec in data.load_split(tiny_workdir / "data", "heldout"):
        ids = tok.encode(rec["text"]).ids
        expected = [w if w in vocab else data.UNK for w in rec["words"]]
        assert [tok.id_to_token(i) for i in ids] == expected
        assert len(rec["pos"]) == len(rec["words"])


def test_split_is_by_mr_and_deterministic(tiny_cfg):
    records = data.read_corpus(tiny_cfg.data.files, tiny_cfg.data.max_lines)
    a = data.split_by_mr(records, 0.2, seed=0)
    b = data.split_by_mr(records, 0.2, seed=0)
    assert a == b
    assert not {r[0] for r in a[0]} & {r[0] for r in a[1]}


def test_resume_continues_and_refuses_to_overwrite(tiny_workdir, tiny_cfg, tmp_path):
    out = tmp_path / "train"
    train(with_train(tiny_cfg, steps=10, checkpoint_every=5), tiny_workdir / "data", out)
    with pytest.raises(ExportError, match="--resume"):
        train(with_train(tiny_cfg, steps=10, checkpoint_every=5), tiny_workdir / "data", out)
    with pytest.raises(ExportError, match="another config"):
        train(with_train(tiny_cfg, steps=12, lr=0.01), tiny_workdir / "data", out, resume=True)
    record = train(with_train(tiny_cfg, steps=12, checkpoint_every=6), tiny_workdir / "data", out, resume=True)
    assert record["step"] == 12


def test_reference_sampler_is_seeded(tiny_workdir):
    a = sample_texts(tiny_workdir / "model", num=2, steps=5, seed=3)
    assert a == sample_texts(tiny_workdir / "model", num=2, steps=5, seed=3)
    assert a != sample_texts(tiny_workdir / "model", num=2, steps=5, seed=4)


def test_guidance_gradients_match_finite_differences(tiny_workdir):
    import onnxruntime as ort
    import torch

    from export.guidance import example_control

    m = manifest.load(tiny_workdir / "model")
    gen = torch.Generator().manual_seed(7)
    for g in (g for g in m["graphs"] if g["role"] == "guidance" and g["precision"] == "fp32"):
        session = ort.InferenceSession(str(tiny_workdir / "model" / g["file"]))
        batch, seq_len, d = g["inputs"][0]["shape"]
        labels = len(m["controls"][g["control"]]["labels"])
        x = torch.randn(batch, seq_len, d, generator=gen).numpy()
        feed = {"t": np.full(batch, 300, dtype=np.int64),
                g["inputs"][2]["name"]: example_control(g["control"], batch, seq_len, labels, gen).numpy()}
        loss, grad = session.run(None, {"x": x, **feed})
        eps = 1e-2
        for flat in torch.randint(0, x.size, (6,), generator=gen).tolist():
            k = np.unravel_index(flat, x.shape)
            up, down = x.copy(), x.copy()
            up[k] += eps
            down[k] -= eps
            numeric = (session.run(None, {"x": up, **feed})[0].sum() - session.run(None, {"x": down, **feed})[0].sum()) / (2 * eps)
            assert abs(numeric - grad[k]) <= 1e-2 * max(1.0, np.abs(grad).max()), (g["name"], k, numeric, grad[k])


def test_dlm_runs_the_self_conditioned_tiny_model(tiny_workdir):
    import subprocess
    from pathlib import Path

    model_dir = tiny_workdir / "model"
    m = manifest.load(model_dir)
    denoisers = [g for g in m["graphs"] if g["role"] == "denoiser"]
    assert m["model"]["self_condition"] and all(g["inputs"][2]["name"] == "x0_hat_prev" for g in denoisers)
    dlm = Path(__file__).resolve().parents[2] / "target" / "release" / "dlm"
    if not dlm.is_file():
        pytest.fail(f"{dlm} not found: run `cargo build --release` first")
    for precision in ("fp32", "fp16", "int8"):
        out = subprocess.run([str(dlm), "generate", "--model", str(model_dir), "--steps", "5", "--num", "2", "--json",
                              "--precision", precision], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(lines) == 2 and all(len(r["ids"]) == m["model"]["seq_len"] for r in lines)
