"""One engine of the benchmark, in a process of its own (so cold start and peak RSS are its own):

    python -m export.bench_worker {torch,ort,ort-bare} --model DIR --steps S --batch B --warmup W --repeat R [--precision P]

torch: the PyTorch reference sampler (export/sample.py). ort: the same sampler as a plain Python
loop over the denoiser ONNX file with onnxruntime and numpy (clamping, posterior step,
rounding). ort-bare: only the denoiser calls, on random input (what batching can reach).
`--precision` (fp32, int8; default fp32) names the denoiser graph of the onnxruntime engines.
Prints one JSON line: per-step latencies of the measured runs and the first sentence.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def torch_engine(model_dir, steps, batch, seed):
    import torch

    from .sample import decode, load_for_sampling, round_tokens, sample_latents
    from .schedule import Diffusion

    model, cfg, tok, special = load_for_sampling(model_dir)
    diff = Diffusion.respaced(cfg.diffusion.schedule, cfg.diffusion.T, steps)

    def run():
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn(batch, cfg.model.seq_len, cfg.model.d, generator=gen)
        x0 = sample_latents(model, diff, x_T, lambda: torch.randn(x_T.shape, generator=gen))
        return decode(tok, round_tokens(model, x0)[0].tolist(), special)

    return run


def cpu_session(ort, model):
    """An ONNX Runtime CPU session (`model`: a path or the bytes of one) with one intra-op thread
    per core, as dlm runs it, none pinned: by default the session pins its workers to cores 1..n-1
    and leaves the calling thread free, which runs 1.5x slower whenever the OS puts that thread on
    a worker's core (measured at batch 1: 0.59 ms a call, 0.93 ms with the caller on core 1).
    dlm's shared pool pins none."""
    cores = len(os.sched_getaffinity(0))
    options = ort.SessionOptions()
    options.intra_op_num_threads = cores
    if cores > 1:  # ONNX Runtime numbers processors from 1; one entry per worker
        every = ",".join(str(k) for k in range(1, cores + 1))
        options.add_session_config_entry("session.intra_op_thread_affinities", ";".join([every] * (cores - 1)))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_engine(model_dir, steps, batch, seed, bare=False, precision="fp32"):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from . import manifest as manifest_mod
    from .schedule import Diffusion

    m = manifest_mod.load(model_dir)
    graph = next(g for g in m["graphs"] if g["name"] == f"denoiser.{precision}")
    session = cpu_session(ort, str(Path(model_dir) / graph["file"]))
    e = m["embeddings"]
    emb = np.fromfile(Path(model_dir) / e["file"], dtype="<f4").reshape(e["shape"])
    emb_sq = (emb**2).sum(-1)
    tok = Tokenizer.from_file(str(Path(model_dir) / m["tokenizer"]["file"]))
    special = {m["special_tokens"][k] for k in ("pad", "start", "end")}
    L, d = m["model"]["seq_len"], m["model"]["d"]
    diff = Diffusion.respaced(m["diffusion"]["schedule"], m["diffusion"]["T"], steps)

    self_condition = m["model"].get("self_condition", False)

    def run():
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, L, d), dtype=np.float32)
        x0_hat = np.zeros_like(x)
        for i in reversed(range(diff.num_steps)):
            t = np.full((batch,), diff.timestep_map[i], dtype=np.int64)
            feed = {"x": x, "t": t, "x0_hat_prev": x0_hat} if self_condition else {"x": x, "t": t}
            x0_hat, *nearest = session.run(None, feed)
            if self_condition and not bare:
                x0_hat_raw = x0_hat.copy()
            if bare:
                continue
            if nearest:  # clamping: nearest embedding, found by the graph's clamping head
                x0_hat = emb[nearest[0][..., 0]]
            else:
                x0_hat = emb[(emb_sq[None, None, :] - 2.0 * x0_hat @ emb.T).argmin(-1)]
            mean = diff.posterior_mean_coef1[i] * x0_hat + diff.posterior_mean_coef2[i] * x
            noise = rng.standard_normal(x.shape, dtype=np.float32) if i > 0 else 0.0
            x = (mean + np.sqrt(diff.model_variance[i]) * noise).astype(np.float32)
            if self_condition:
                x0_hat = x0_hat_raw  # the next step reads the raw prediction
        ids = (x[0] @ emb.T).argmax(-1)
        return " ".join(tok.id_to_token(int(i)) for i in ids if int(i) not in special)

    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=["torch", "ort", "ort-bare"])
    p.add_argument("--model", default="models/e2e")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    a = p.parse_args()
    start = time.perf_counter()
    if a.engine == "torch":
        run = torch_engine(a.model, a.steps, a.batch, a.seed)
    else:
        run = ort_engine(a.model, a.steps, a.batch, a.seed, bare=a.engine == "ort-bare", precision=a.precision)
    load_s = time.perf_counter() - start
    text = None
    for _ in range(a.warmup):
        text = run()
    per_step = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        text = run()
        per_step.append((time.perf_counter() - t0) * 1e3 / a.steps)
    print(json.dumps({"engine": a.engine, "steps": a.steps, "batch": a.batch, "load_s": load_s,
                      "per_step_ms": per_step, "text": text}))


if __name__ == "__main__":
    main()
