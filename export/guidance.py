"""Guidance graphs: (x [B,L,d], t [B], control) -> (loss [B], grad [B,L,d]) as plain ONNX.

torch.onnx cannot trace autograd, so the gradient is traced first with make_fx over
torch.func.grad (parameters passed as inputs), giving an aten graph with the backward written
out; that graph is then exported like any module. make_fx bakes concrete sizes into the views,
so these graphs have a fixed batch and length (recorded in the manifest); the runtime pads
and chunks to that batch.
"""
import numpy as np
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from .controls import IGNORE

# Paper's (lambda, lr) per task: POS 0.0005 / 0.05, semantic content 0.01 / 0.1, spans 0.1 / 0.15; K = 3.
# Content lr 0.2 here: the self-conditioned denoiser follows guidance less (quick setting: 72 % -> 82 %).
# Spans keep the paper's lr 0.15 with the boundary channels: 89 % at 200 steps (lr 0.3: 60 %, sentences
# broken, lm-score 28672; 0.08: 78 %); at 50 steps 72 % (lr 0.3 would give 84 %: fewer guided steps).
# Tree lambda 0.07 (models/e2e/EVAL.md, 200 steps, 142 targets): LAS 78.9 % at 0.1, 80.8 % at 0.07,
# 81.7 % at 0.05, blind broken share +1-3, +1-4 and +10 points over unconditional; lr 0.3: LAS 77.7 %.
DEFAULTS = {"pos": {"lambda": 0.0005, "lr": 0.05, "steps": 3}, "content": {"lambda": 0.01, "lr": 0.2, "steps": 3},
            "spans": {"lambda": 0.1, "lr": 0.15, "steps": 3}, "tree": {"lambda": 0.07, "lr": 0.15, "steps": 3}}


def control_spec(control, batch, seq_len, num_labels):
    if control == "pos":
        return {"name": "tags", "dtype": "int64", "shape": [batch, seq_len]}
    if control == "spans":
        return {"name": "span", "dtype": "int64", "shape": [batch, 3]}  # (first word, last word, label)
    if control == "tree":
        return {"name": "tree", "dtype": "int64", "shape": [batch, 2 * seq_len]}  # head positions, then labels
    return {"name": "wanted", "dtype": "float32", "shape": [batch, num_labels]}


def example_control(control, batch, seq_len, num_labels, gen):
    if control == "pos":
        tags = torch.randint(0, num_labels, (batch, seq_len), generator=gen)
        return torch.where(torch.rand(batch, seq_len, generator=gen) < 0.3, torch.full_like(tags, IGNORE), tags)
    if control == "spans":
        first = torch.randint(0, seq_len - 8, (batch, 1), generator=gen)
        last = first + torch.randint(0, 6, (batch, 1), generator=gen)
        return torch.cat([first, last, torch.randint(0, num_labels, (batch, 1), generator=gen)], dim=1)
    if control == "tree":
        n = int(torch.randint(4, seq_len - 2, (), generator=gen))
        heads = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
        labels = torch.full((batch, seq_len), IGNORE, dtype=torch.long)
        drawn = torch.randint(0, n + 1, (batch, n), generator=gen)
        own = torch.arange(1, n + 1)[None, :]
        heads[:, 1:n + 1] = torch.where(drawn == own, 0, drawn)  # never its own head (a masked, -1e4 arc)
        labels[:, 1:n + 1] = torch.randint(0, num_labels, (batch, n), generator=gen)
        return torch.cat([heads, labels], dim=1)
    return (torch.rand(batch, num_labels, generator=gen) < 0.05).float()


def grad_and_loss(classifier):
    """f(params..., x, t, control) -> (loss [B], d sum(loss) / d x) for make_fx."""
    names = [n for n, _ in classifier.named_parameters()]

    def fn(*args):
        params = dict(zip(names, args[: len(names)]))
        x, t, control = args[len(names):]

        def total(x):
            loss = torch.func.functional_call(classifier, params, (x, t, control), {}, strict=False)
            return loss.sum(), loss

        grad, loss = torch.func.grad(total, has_aux=True)(x)
        return loss, grad

    return fn


class _Loss(nn.Module):
    """classifier.loss as forward (so functional_call can swap its parameters), computed in fp32:
    an fp16 graph takes and returns fp16 at its boundary only; the classifier is small next to
    the denoiser, and its softmax/log-sigmoid gradients are where fp16 loses most."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x, t, control):
        return self.classifier.loss(x.float(), t, control)


class _Traced(nn.Module):
    def __init__(self, graph, params):
        super().__init__()
        self.graph = graph
        self.count = len(params)
        for i, p in enumerate(params):
            self.register_buffer(f"p{i}", p)

    def forward(self, x, t, control):
        return self.graph(*[getattr(self, f"p{i}") for i in range(self.count)], x, t, control)


def export_guidance(classifier, spec, num_labels, out_path):
    """The gradient graph of `spec` (graphs.guidance) for one classifier."""
    dtype = torch.float16 if spec.precision == "fp16" else torch.float32
    (batch, seq_len, d) = spec.inputs[0].shape
    module = _Loss(classifier).eval()
    params = [p.detach() for p in module.parameters()]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq_len, d, generator=gen).to(dtype)
    t = torch.randint(0, 2000, (batch,), generator=gen)
    control = example_control(spec.control, batch, seq_len, num_labels, gen)
    graph = make_fx(grad_and_loss(module))(*params, x, t, control)
    spec.export(_Traced(graph, params), (x, t, control), out_path)


def reference_loss_and_grad(classifier, x, t, control):
    """torch.autograd on the fp32 classifier: what the graphs are verified against."""
    x = x.detach().float().requires_grad_(True)
    loss = classifier.float().loss(x, t, control)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach().numpy(), grad.numpy()


def check_values(session, graph, classifier, num_labels, T, failures):
    """Run at random inputs (other than the export's); returns the worst relative diff per output."""
    batch, seq_len, d = graph["inputs"][0]["shape"]
    fp16 = graph["precision"] == "fp16"
    gen = torch.Generator().manual_seed(4321)
    worst = {"loss": 0.0, "grad": 0.0}
    for trial in range(3):
        x = torch.randn(batch, seq_len, d, generator=gen) * (0.5 + trial)
        if fp16:
            x = x.half().float()
        t = torch.randint(0, T, (batch,), generator=gen)
        control = example_control(graph["control"], batch, seq_len, num_labels, gen)
        ref = reference_loss_and_grad(classifier, x, t, control)
        feed = {"x": x.numpy().astype(np.float16 if fp16 else np.float32), "t": t.numpy(),
                graph["inputs"][2]["name"]: control.numpy()}
        outs = session.run(None, feed)
        for name, out, expected in zip(("loss", "grad"), outs, ref):
            diff = float(np.abs(out.astype(np.float64) - expected).max()) / max(float(np.abs(expected).max()), 1e-6)
            diff = diff if np.isfinite(out).all() else float("inf")
            worst[name] = max(worst[name], diff)
    limit = graph["tolerance"]["max_abs_diff_rel_to_scale"]
    for name, diff in worst.items():
        if not diff <= limit:
            failures.append(f"{graph['name']}: {name} differs from torch.autograd by {diff:.3g} of its scale > {limit:g}")
    return worst
