"""One weights file for several graphs of one classifier: the guidance graphs of a control at
each batch size and precision hold the same parameters (an fp16 graph computes in fp32 inside),
so their initializers move to a shared ONNX external-data file, each distinct tensor stored once.
"""
import hashlib
from pathlib import Path

ALIGN = 64  # byte alignment of each tensor in the shared file
INLINE_BELOW = 1024  # bytes: small constants stay inside their graph


def share_weights(model_dir, files, weights_file):
    """Rewrite the ONNX `files` in model_dir so that their large initializers live in
    `weights_file` (written there), and drop the exporter's per-node provenance; returns the
    number of initializer bytes the graphs no longer hold."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    model_dir = Path(model_dir)
    blob, where, moved = bytearray(), {}, 0
    for name in files:
        path = model_dir / name
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.nbytes < INLINE_BELOW:
                continue
            init.CopyFrom(numpy_helper.from_array(array, init.name))  # the data as raw little-endian bytes
            data = init.raw_data
            key = (init.data_type, tuple(init.dims), hashlib.sha256(data).hexdigest())
            if key not in where:
                blob.extend(b"\0" * (-len(blob) % ALIGN))
                where[key] = len(blob)
                blob.extend(data)
            set_external_data(init, location=weights_file, offset=where[key], length=len(data))
            init.data_location = onnx.TensorProto.EXTERNAL
            init.ClearField("raw_data")
            moved += len(data)
        for node in model.graph.node:  # the exporter's per-node provenance (stack traces): most of the file
            node.ClearField("metadata_props")
            node.ClearField("doc_string")
        onnx.save(model, str(path))
    (model_dir / weights_file).write_bytes(bytes(blob))
    return moved
