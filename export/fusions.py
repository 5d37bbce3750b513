"""fusions: rewrites of an exported graph into ONNX Runtime's fused operators, applied at export
and checked by the same parity check as the graph they replace (verify.py).

The denoiser's self-attention exports as a packed QKV MatMul + Add, then Reshape, Transpose, three
Slice/Squeeze pairs, two MatMuls, a scale, a Softmax, Transpose and Reshape: 17 nodes a block,
which ONNX Runtime's own fusions leave alone (docs/benchmarks.md). `fuse_attention` makes each one
com.microsoft Attention (input, packed weights [C, 3C], bias [3C]; scale 1/sqrt(C / heads)): the
CPU and CUDA providers have a kernel for it; TensorRT leaves it to CUDA.

`order_gelu` writes each GELU in the operand order ONNX Runtime's own Gelu fusion matches (the same
standard ops), and `table_time_embedding` (the int8 graph's) looks the timestep's embedding up
instead of computing it: both leave the outputs as they were, to rounding.
"""
import numpy as np
import onnxruntime
from onnx import helper, numpy_helper, utils

from .errors import ExportError

MS_DOMAIN = "com.microsoft"
# the ops between the packed projection and the attention output, as torch.onnx writes them
ATTENTION_OPS = {"Reshape", "Transpose", "Slice", "Squeeze", "MatMul", "Mul", "Div", "Softmax"}
SHAPE_OPS = {"Shape", "Concat", "Constant", "Gather", "Unsqueeze", "Cast"}  # shape arithmetic beside it


def fuse_attention(model, prefixes, heads, hidden):
    """Rewrite the attention of each block named in `prefixes` (e.g. "model.blocks.0", the prefix
    of its qkv and proj parameters; `heads` heads over `hidden` wide) into one Attention node, in
    place; returns how many. Raises ExportError when a block's nodes are not the pattern above."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs_of_graph = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = readers(graph)
    fused, dropped = {}, set()
    for prefix in prefixes:
        qkv_add = _add_of(graph, f"{prefix}.qkv.bias", prefix)
        proj_add = _add_of(graph, f"{prefix}.proj.bias", prefix)
        qkv_mm = producer.get(_other(qkv_add, f"{prefix}.qkv.bias"))
        proj_mm = producer.get(_other(proj_add, f"{prefix}.proj.bias"))
        if qkv_mm is None or qkv_mm.op_type != "MatMul" or qkv_mm.input[1] not in inits:
            raise ExportError(f"{prefix}: the qkv bias is not added to a MatMul by constant weights")
        if list(inits[qkv_mm.input[1]].dims) != [hidden, 3 * hidden]:
            raise ExportError(f"{prefix}: packed qkv weights {list(inits[qkv_mm.input[1]].dims)}, "
                              f"expected {[hidden, 3 * hidden]}")
        if proj_mm is None or proj_mm.op_type != "MatMul":
            raise ExportError(f"{prefix}: the proj bias is not added to a MatMul")
        inner = _between(qkv_add.output[0], proj_mm.input[0], producer, inits, prefix)
        ops = [n.op_type for n in inner]
        if not set(ops) <= ATTENTION_OPS or ops.count("Softmax") != 1 or ops.count("MatMul") != 2:
            raise ExportError(f"{prefix}: attention nodes {sorted(ops)} are not a softmax attention")
        _check_scale(graph, inits, inner, (hidden / heads) ** -0.5, prefix)
        outputs = {o for n in inner for o in n.output} | set(qkv_add.output)
        inside = {id(n) for n in inner} | {id(qkv_add)}
        for name in outputs - {proj_mm.input[0]}:
            if any(id(c) not in inside for c in consumers.get(name, [])) or name in outputs_of_graph:
                raise ExportError(f"{prefix}: {name}, inside the attention, is read outside it")
        fused[id(qkv_mm)] = helper.make_node(
            "Attention", [qkv_mm.input[0], qkv_mm.input[1], f"{prefix}.qkv.bias"], [proj_mm.input[0]],
            name=f"{prefix}.attention", domain=MS_DOMAIN, num_heads=heads)
        dropped |= inside
    nodes = [fused.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(_live(nodes, outputs_of_graph))
    _drop_unused_initializers(graph)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)


def readers(graph):
    """The nodes that read each value, by its name."""
    out = {}
    for n in graph.node:
        for name in n.input:
            out.setdefault(name, []).append(n)
    return out


def _add_of(graph, bias, prefix):
    adds = [n for n in graph.node if n.op_type == "Add" and bias in n.input]
    if len(adds) != 1:
        raise ExportError(f"{prefix}: {len(adds)} Add nodes read {bias}, expected one")
    return adds[0]


def _other(add, name):
    return next(i for i in add.input if i != name)


def _between(start, end, producer, consts, prefix):
    """The nodes on the paths from value `start` to value `end`, in graph order; values they read
    that do not depend on `start` must be constants or shape arithmetic."""
    seen, order, todo = set(), [], [end]
    while todo:
        name = todo.pop()
        if name == start or name in consts or name == "":
            continue
        node = producer.get(name)
        if node is None:
            raise ExportError(f"{prefix}: {name} reaches the attention output from outside the block")
        if id(node) in seen:
            continue
        if node.op_type in SHAPE_OPS and not _depends_on(node, start, producer):
            continue
        seen.add(id(node))
        order.append(node)
        todo.extend(node.input)
    return order


def _depends_on(node, value, producer, seen=None):
    seen = set() if seen is None else seen
    for name in node.input:
        if name == value:
            return True
        up = producer.get(name)
        if up is not None and id(up) not in seen:
            seen.add(id(up))
            if _depends_on(up, value, producer, seen):
                return True
    return False


def _check_scale(graph, inits, inner, expected, prefix):
    """Attention scales the scores by 1/sqrt(head size); the exported graph's Mul (or Div) must too."""
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    scales = [n for n in inner if n.op_type in ("Mul", "Div")]
    if len(scales) != 1:
        raise ExportError(f"{prefix}: {len(scales)} Mul/Div nodes in the attention, expected the one scale")
    value = _scalar(scales[0], inits, consts)
    if value is None:
        raise ExportError(f"{prefix}: {scales[0].name} in the attention does not scale by a constant")
    scale = value if scales[0].op_type == "Mul" else 1.0 / value
    if abs(scale - expected) > 1e-3 * expected:  # an fp16 constant holds it to 2^-11
        raise ExportError(f"{prefix}: the scores are scaled by {scale:g}, not 1/sqrt(head size) = {expected:g}")


def _scalar(node, inits, consts):
    for name in node.input:
        tensor = inits.get(name)
        if tensor is None and name in consts:
            tensor = next((a.t for a in consts[name].attribute if a.name == "value"), None)
        if tensor is not None:
            array = numpy_helper.to_array(tensor)
            if array.size == 1:
                return float(array.reshape(()))
    return None


def _drop_unused_initializers(graph):
    used = {name for n in graph.node for name in n.input}
    live = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)


def _live(nodes, outputs):
    """The nodes that the graph's outputs depend on, in their order."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    return keep[::-1]


def order_gelu(model):
    """Rewrite each exact GELU, exported as x * (0.5 * (1 + erf(x / sqrt 2))), into the order ONNX
    Runtime's Gelu fusion matches, (x * (1 + erf(x / sqrt 2))) * 0.5, in place; returns how many.
    The same standard ops (TensorRT parses them as before), one Gelu kernel a block at session start
    instead of five (ONNX Runtime registers that fusion for the CPU and CUDA providers; measured on
    the CPU). Raises ExportError on an Erf that is not a GELU's."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = readers(graph)

    def only_consumer(node, op):
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != op:
            raise ExportError(f"{node.name}: read by {[u.op_type for u in users]}, expected one {op} (a GELU)")
        return users[0]

    def constant_of(node, expected):
        value = _scalar(node, inits, consts)
        if value is None or abs(value - expected) > 1e-3 * expected:
            raise ExportError(f"{node.name}: {node.op_type} by {value}, expected {expected:g} (a GELU)")

    count = 0
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div":
            raise ExportError(f"{erf.name}: its input is not x / sqrt 2 (a GELU)")
        constant_of(div, 2**0.5)
        x = div.input[0]
        add = only_consumer(erf, "Add")
        constant_of(add, 1.0)
        half = only_consumer(add, "Mul")
        constant_of(half, 0.5)
        outer = only_consumer(half, "Mul")
        if x not in outer.input:
            raise ExportError(f"{outer.name}: does not multiply by the GELU's input {x}")
        half_const = next(i for i in half.input if i != add.output[0])
        # x * (1 + erf) first, then * 0.5: the outer node keeps its output, so readers are unchanged
        half.input[:] = [x, add.output[0]]
        outer.input[:] = [half.output[0], half_const]
        count += 1
    return count  # each node still follows its inputs' producers: the graph stays sorted


def table_time_embedding(model, T, t_input="t"):
    """Replace the nodes that depend on the timestep alone (the sinusoid, the time MLP, the
    broadcast) by one Gather from a table of their output for each t in [0, T), computed by ONNX
    Runtime on those same nodes one timestep a call, the values the graph gave at batch 1; in
    place; returns how many nodes it replaced. A t outside [0, T) is then the Gather's error, not
    an embedding nobody trained. Raises ExportError when the timestep's nodes reach the rest of the
    graph through anything but one tensor of batch-major rows."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    nodes = list(graph.node)  # held, so that each node's id() stays its own
    of_t, inside = {t_input}, set()
    for node in nodes:  # in graph order: a node of t alone reads t, constants and nodes of t alone
        inputs = [i for i in node.input if i]
        # (a Shape of t is the batch size, shape arithmetic the graph keeps)
        if node.op_type != "Shape" and any(i in of_t for i in inputs) and all(i in of_t or i in constant for i in inputs):
            of_t.update(node.output)
            inside.add(id(node))
    outside = [n for n in nodes if id(n) not in inside]
    read = {i for n in outside for i in n.input} | {o.name for o in graph.output}
    frontier = sorted(read & of_t - {t_input})  # t itself stays an input, for its Shape
    if len(frontier) != 1:
        raise ExportError(f"the timestep reaches the rest of the graph through {frontier}, expected one "
                          "tensor made of it")
    embedding = frontier[0]
    sub = utils.Extractor(model).extract_model([t_input], [embedding])
    session = onnxruntime.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = [session.run(None, {t_input: np.array([t], dtype=np.int64)})[0] for t in range(T)]
    if rows[0].shape[0] != 1:
        raise ExportError(f"{embedding}: shape {list(rows[0].shape)} for one timestep, expected batch-major rows")
    table = np.concatenate(rows)
    batched = session.run(None, {t_input: np.arange(T, dtype=np.int64)})[0]
    if batched.shape != table.shape or not np.allclose(batched, table, rtol=1e-5, atol=1e-6):
        raise ExportError(f"{embedding}: all timesteps in one call differ from one at a time "
                          f"(shape {list(batched.shape)} against {list(table.shape)}): not a row per timestep")
    name = f"{embedding}_table"
    graph.initializer.append(numpy_helper.from_array(table, name))
    gather = helper.make_node("Gather", [name, t_input], [embedding], name="time_embedding_table", axis=0)
    at = next((i for i, n in enumerate(outside) if embedding in n.input), len(outside))
    kept = _live(outside[:at] + [gather] + outside[at:], {o.name for o in graph.output})
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    return len(inside)
