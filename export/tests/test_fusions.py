"""fusions: the denoiser's attention as ONNX Runtime's fused Attention, the same outputs, and a
loud failure on any graph that is not the pattern."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import graphs, manifest
from export.config import from_dict
from export.errors import ExportError
from export.fusions import fuse_attention
from export.quantize import block_nodes
from export.model import DiffusionLM
from export.onnx_export import Clamping

ARCH = {"d": 8, "seq_len": 16, "hidden": 32, "layers": 2, "heads": 4, "ffn": 64, "dropout": 0.0, "self_condition": True}
BLOCKS = ["model.blocks.0", "model.blocks.1"]


@pytest.fixture(scope="module")
def unfused(tmp_path_factory):
    """A small denoiser exported as torch.onnx writes it, before any fusion."""
    cfg = from_dict({"model": ARCH})
    torch.manual_seed(0)
    model = DiffusionLM(cfg.model, 50).eval()
    spec = graphs.denoiser("fp32", ARCH["d"], ARCH["seq_len"], True)
    path = tmp_path_factory.mktemp("fusions") / spec.file
    x = torch.randn(2, ARCH["seq_len"], ARCH["d"])
    spec.export(Clamping(model, 1).eval(), (x, torch.tensor([1, 1000]), torch.randn(x.shape)), path, optimize=True)
    return onnx.load(str(path))


def _run(model, batch=3, seq=11):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((batch, seq, ARCH["d"]), dtype=np.float32),
            "t": rng.integers(0, 2000, batch).astype(np.int64),
            "x0_hat_prev": rng.standard_normal((batch, seq, ARCH["d"]), dtype=np.float32)}
    return session.run(None, feed)


def test_each_block_becomes_one_attention_node_with_the_same_outputs(unfused):
    fused = copy.deepcopy(unfused)
    assert fuse_attention(fused, BLOCKS, ARCH["heads"], ARCH["hidden"]) == 2
    onnx.checker.check_model(fused)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("Attention") == 2 and "Softmax" not in ops and "Squeeze" not in ops
    assert len(fused.graph.node) <= len(unfused.graph.node) - 2 * 15, "at least 16 nodes a block become one"
    (x0_ref, near_ref), (x0, near) = _run(unfused), _run(fused)
    assert np.abs(x0 - x0_ref).max() <= 1e-5
    assert (near == near_ref).all()


def test_a_graph_that_is_not_the_pattern_fails_loudly(unfused):
    with pytest.raises(ExportError, match="model.blocks.0: the scores are scaled by"):
        fuse_attention(copy.deepcopy(unfused), BLOCKS, 2, ARCH["hidden"])  # 2 heads: another head size
    with pytest.raises(ExportError, match="packed qkv weights"):
        fuse_attention(copy.deepcopy(unfused), BLOCKS, ARCH["heads"], 64)
    with pytest.raises(ExportError, match="model.blocks.7.qkv.bias"):
        fuse_attention(copy.deepcopy(unfused), ["model.blocks.7"], ARCH["heads"], ARCH["hidden"])
    leaky = copy.deepcopy(unfused)  # the softmax is also an output: fusing would lose it
    softmax = next(n for n in leaky.graph.node if n.op_type == "Softmax")
    leaky.graph.output.append(onnx.helper.make_tensor_value_info(softmax.output[0], onnx.TensorProto.FLOAT, None))
    with pytest.raises(ExportError, match="is read outside it"):
        fuse_attention(leaky, BLOCKS, ARCH["heads"], ARCH["hidden"])


def test_the_exported_denoisers_are_fused_and_int8_quantizes_only_the_blocks(tiny_workdir):
    m = manifest.load(tiny_workdir / "model")
    layers = m["model"]["architecture"]["layers"]
    for g in (g for g in m["graphs"] if g["role"] == "denoiser"):
        ops = [n.op_type for n in onnx.load(str(tiny_workdir / "model" / g["file"])).graph.node]
        attention = "QAttention" if g["precision"] == "int8" else "Attention"
        assert ops.count(attention) == layers and "Softmax" not in ops, g["name"]
        # int8: each block's proj and feed-forward MatMuls; the projections in and out and the clamping head stay fp32
        assert ops.count("MatMulInteger") == (3 * layers if g["precision"] == "int8" else 0), g["name"]
        assert g["inputs"][0]["dtype"] == ("float16" if g["precision"] == "fp16" else "float32")


def test_quantizing_an_unfused_graph_is_refused(unfused, tmp_path):
    # unfused, the qkv MatMul is a fourth one with a bias of the block
    with pytest.raises(ExportError, match="model.blocks.0: found 0 Attention and 4 MatMul nodes"):
        block_nodes(unfused, BLOCKS)
    fused = copy.deepcopy(unfused)
    fuse_attention(fused, BLOCKS, ARCH["heads"], ARCH["hidden"])
    assert len(block_nodes(fused, BLOCKS)) == 8
