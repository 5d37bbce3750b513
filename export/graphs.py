"""graphs: one declarative description per exported graph (optimum's export configs): its name,
role, precision, inputs, outputs, dynamic axes, opset and parity tolerance. The exporters take
their input/output names and shapes from here, and `manifest_entry` writes the manifest's entry,
so the ONNX file, the manifest and the Rust runtime's check read one description.
"""
from dataclasses import dataclass, field

from . import manifest as manifest_mod

OPSET = 18
MAX_BATCH = 4096  # upper bound of the dynamic batch axis


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # "float32", "float16", "int64"
    shape: tuple  # ints, or names of dynamic axes

    def entry(self):
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    role: str  # "denoiser", "guidance", "teacher"
    precision: str  # "fp32", "fp16", "int8" (denoiser only: fp32 inputs and outputs)
    inputs: tuple
    outputs: tuple
    tolerance: dict  # parity against PyTorch: {"max_abs_diff": x} or {"max_abs_diff_rel_to_scale": x}
    dynamic_axes: dict = field(default_factory=dict)  # axis name -> {"min", "max"}
    control: str = None  # guidance graphs: the control whose gradient they compute
    opset: int = OPSET

    @property
    def file(self):
        return f"{self.name}.onnx"

    @property
    def input_names(self):
        return [t.name for t in self.inputs]

    @property
    def output_names(self):
        return [t.name for t in self.outputs]

    def dynamic_shapes(self):
        """torch.export's dynamic_shapes: one Dim per named axis, shared by every input that has it."""
        import torch

        dims = {name: torch.export.Dim(name, min=r["min"], max=r["max"]) for name, r in self.dynamic_axes.items()}
        return {t.name: {i: dims[s] for i, s in enumerate(t.shape) if isinstance(s, str)} for t in self.inputs}

    def export(self, module, example, out_path, **kwargs):
        """torch.onnx (dynamo) export of `module` at `example` inputs as this graph, then the ONNX checker."""
        import onnx
        import torch

        shapes = self.dynamic_shapes() if self.dynamic_axes else None
        torch.onnx.export(module, example, str(out_path), input_names=self.input_names, output_names=self.output_names,
                          dynamic_shapes=shapes, dynamo=True, opset_version=self.opset, external_data=False,
                          verbose=False, **kwargs)
        onnx.checker.check_model(str(out_path))

    def manifest_entry(self, model_dir):
        """The manifest's description of this graph, with the sha256 of its file in model_dir."""
        entry = {"name": self.name, "role": self.role, **manifest_mod.file_entry(model_dir, self.file),
                 "precision": self.precision, "opset": self.opset,
                 "inputs": [t.entry() for t in self.inputs], "outputs": [t.entry() for t in self.outputs],
                 "dynamic_axes": self.dynamic_axes, "tolerance": self.tolerance}
        if self.control is not None:
            entry["control"] = self.control
        return entry


def float_dtype(precision):
    """The dtype of a graph's float inputs and outputs (an int8 graph quantizes inside, quantize.py)."""
    return {"fp32": "float32", "fp16": "float16", "int8": "float32"}[precision]


# int8: the quantization error of 16 MatMuls over 4 blocks, against the fp32 reference
DENOISER_TOLERANCE = {"fp32": {"max_abs_diff": 1e-4}, "fp16": {"max_abs_diff_rel_to_scale": 2e-2},
                      "int8": {"max_abs_diff_rel_to_scale": 1e-1}}
GUIDANCE_TOLERANCE = {"fp32": {"max_abs_diff_rel_to_scale": 1e-4}, "fp16": {"max_abs_diff_rel_to_scale": 1e-2}}


# Word ids per position the clamping head gives, best first: the runtime takes the first its
# rules allow (no special token inside a fixed length, no repeat) and scores the row's words
# itself only when they ban them all. One: an ArgMax; a TopK of 8 cost 9 % of the denoiser
# call at batch 16 on the CPU (the ArgMax 4 %, about what the host's clamping cost).
NEAREST = 1


def denoiser(precision, d, seq_len, self_condition=False, nearest=NEAREST):
    """(x [B, L, d], t [B]) -> (x0_hat [B, L, d], nearest [B, L, K]), batch and length dynamic; a
    self-conditioned denoiser also takes its previous x0_hat [B, L, d] (zeros at the first step).
    `nearest` are the ids of x0_hat's K nearest word embeddings, nearest first (the clamping
    trick on the engine: only ids come back for it)."""
    f = float_dtype(precision)
    inputs = (Tensor("x", f, ("batch", "seq", d)), Tensor("t", "int64", ("batch",)))
    if self_condition:
        inputs += (Tensor("x0_hat_prev", f, ("batch", "seq", d)),)
    return GraphSpec(
        f"denoiser.{precision}", "denoiser", precision, inputs=inputs,
        outputs=(Tensor("x0_hat", f, ("batch", "seq", d)), Tensor("nearest", "int64", ("batch", "seq", nearest))),
        tolerance=DENOISER_TOLERANCE[precision],
        dynamic_axes={"batch": {"min": 1, "max": MAX_BATCH}, "seq": {"min": 1, "max": seq_len}})


def guidance(control, precision, batch, seq_len, d, control_input, bucket=False):
    """(x [B, L, d], t [B], control) -> (loss [B], grad [B, L, d]) at a fixed batch and length;
    a `bucket` (a batch size beyond the first) has the batch in its name."""
    f = float_dtype(precision)
    return GraphSpec(
        f"guide_{control}.b{batch}.{precision}" if bucket else f"guide_{control}.{precision}", "guidance", precision,
        inputs=(Tensor("x", f, (batch, seq_len, d)), Tensor("t", "int64", (batch,)),
                Tensor(control_input["name"], control_input["dtype"], tuple(control_input["shape"]))),
        outputs=(Tensor("loss", "float32", (batch,)), Tensor("grad", f, (batch, seq_len, d))),
        tolerance=GUIDANCE_TOLERANCE[precision], control=control)


def teacher(vocab_size, seq_len):
    """ids [B, L] -> next-token logits [B, L, V] of the autoregressive teacher LM (lm-score)."""
    return GraphSpec(
        "teacher", "teacher", "fp32",
        inputs=(Tensor("ids", "int64", ("batch", "seq")),),
        outputs=(Tensor("logits", "float32", ("batch", "seq", vocab_size)),),
        tolerance={"max_abs_diff": 1e-3},
        dynamic_axes={"batch": {"min": 1, "max": MAX_BATCH}, "seq": {"min": 2, "max": seq_len}})
