"""fusions: the denoiser's attention as ONNX Runtime's fused Attention, its GELUs in the order ONNX
Runtime fuses, the int8 graph's time embedding a table: the same outputs, and a loud failure on
any graph that is not the pattern."""
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import graphs, manifest
from export.config import from_dict
from export.errors import ExportError
from export.fusions import fuse_attention, order_gelu, table_time_embedding
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


def _run(model, batch=3, seq=11, t=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((batch, seq, ARCH["d"]), dtype=np.float32),
            "t": rng.integers(0, 2000, batch).astype(np.int64) if t is None else np.asarray(t, dtype=np.int64),
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
        # int8 looks its time embedding up; fp32 and fp16 compute it
        assert ("Sin" in ops) == (g["precision"] != "int8") and ("Gather" in ops) == (g["precision"] == "int8"), g["name"]
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


def _ops_after_onnx_runtime(model, tmp_path):
    """The op types of the graph ONNX Runtime runs, after its own fusions at session start."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_gelus_in_the_order_onnx_runtime_fuses_give_the_same_outputs(unfused, tmp_path):
    fused = copy.deepcopy(unfused)
    fuse_attention(fused, BLOCKS, ARCH["heads"], ARCH["hidden"])
    ordered = copy.deepcopy(fused)
    assert order_gelu(ordered) == 2
    onnx.checker.check_model(ordered)
    assert [n.op_type for n in ordered.graph.node] == [n.op_type for n in fused.graph.node], "the same nodes"
    ops = _ops_after_onnx_runtime(ordered, tmp_path)
    assert "Erf" not in ops and ops.count("Gelu") + ops.count("BiasGelu") == 2, ops
    for batch in (1, 3):
        (x0_ref, near_ref), (x0, near) = _run(fused, batch), _run(ordered, batch)
        assert np.abs(x0 - x0_ref).max() <= 1e-5
        assert (near == near_ref).all()


def test_an_erf_that_is_not_a_gelu_is_refused(unfused):
    fused = copy.deepcopy(unfused)
    fuse_attention(fused, BLOCKS, ARCH["heads"], ARCH["hidden"])
    half = next(n for n in fused.graph.node if n.op_type == "Erf")
    add = next(n for n in fused.graph.node if half.output[0] in n.input)
    scale = next(n for n in fused.graph.node if add.output[0] in n.input)
    wrong = onnx.numpy_helper.from_array(np.array(0.25, dtype=np.float32), "quarter")
    fused.graph.initializer.append(wrong)
    scale.input[:] = [i if i == add.output[0] else "quarter" for i in scale.input]
    with pytest.raises(ExportError, match="expected 0.5 \\(a GELU\\)"):
        order_gelu(fused)


def test_the_time_embedding_as_a_table_gives_the_same_outputs(unfused):
    tabled = copy.deepcopy(unfused)
    replaced = table_time_embedding(tabled, 2000)
    onnx.checker.check_model(tabled)
    ops = [n.op_type for n in tabled.graph.node]
    assert replaced >= 10 and len(ops) == len(unfused.graph.node) - replaced + 1
    assert "Sin" not in ops and "Cos" not in ops and "Sigmoid" not in ops and ops.count("Gather") >= 1
    for t in ([0], [1999], [5, 700, 1999]):
        (x0_ref, near_ref), (x0, near) = _run(unfused, len(t), t=t), _run(tabled, len(t), t=t)
        assert np.abs(x0 - x0_ref).max() <= 1e-6, t
        assert (near == near_ref).all()
    with pytest.raises(Exception, match="out of bounds|indices"):  # the Gather's own error, not garbage
        _run(tabled, 1, t=[2000])


def test_a_timestep_read_through_two_tensors_is_refused(unfused):
    leaky = copy.deepcopy(unfused)  # the sinusoid is also an output: tabling would lose it
    sin = next(n for n in leaky.graph.node if n.op_type == "Sin")
    leaky.graph.output.append(onnx.helper.make_tensor_value_info(sin.output[0], onnx.TensorProto.FLOAT, None))
    with pytest.raises(ExportError, match="the timestep reaches the rest of the graph through"):
        table_time_embedding(leaky, 2000)
