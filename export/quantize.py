"""quantize: the int8 denoiser, the CPU's fast path. ONNX Runtime's dynamic quantization of the
fused fp32 graph's transformer blocks: the weights of each block's Attention (QAttention) and of
its proj and feed-forward MatMuls int8 per tensor, the activations quantized per call. Inputs
and outputs stay fp32; the input and output projections (16 wide), the time embedding and the
clamping head stay fp32, so the clamping trick's scores are the host's. The time embedding is then
a table lookup (fusions.table_time_embedding): at batch 1 its ten small nodes cost more than a Gather.

Quality was measured before it shipped (models/e2e/EVAL.md): same targets and seeds as fp32.
"""
import logging

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from .errors import ExportError
from .fusions import readers, table_time_embedding


def block_nodes(model, prefixes):
    """Names of the nodes to quantize: each block's Attention and the MatMuls whose result gets a
    bias of that block (proj, ff.0, ff.2); four per block."""
    consumers = readers(model.graph)
    names = []
    for prefix in prefixes:
        attention = [n.name for n in model.graph.node if n.op_type == "Attention" and n.name == f"{prefix}.attention"]
        matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and any(
            c.op_type == "Add" and any(i.startswith(f"{prefix}.") for i in c.input) for c in consumers.get(n.output[0], []))]
        if len(attention) != 1 or len(matmuls) != 3:
            raise ExportError(f"{prefix}: found {len(attention)} Attention and {len(matmuls)} MatMul nodes to quantize, "
                              "expected 1 and 3 (is the graph fused? export/fusions.py)")
        names += attention + matmuls
    return names


def quantize_denoiser(fp32_path, out_path, prefixes, T):
    """Write the int8 denoiser of the fused fp32 graph at fp32_path, its time embedding a table of
    T timesteps; returns the node counts (quantized, replaced by the table, in the end)."""
    names = block_nodes(onnx.load(str(fp32_path)), prefixes)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic advises its pre-processing pass: not needed on this graph
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Attention"], nodes_to_quantize=names,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    model = onnx.load(str(out_path))
    tabled = table_time_embedding(model, T)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return {"quantized": len(names), "time_embedding_tabled": tabled, "nodes": len(model.graph.node)}
