"""fixtures: golden files for the Rust tests, from the PyTorch reference sampler (seeded, deterministic).

tests/fixtures/schedule.json: the respaced schedule at several budgets (float64).
tests/fixtures/trajectory_{ddim,ddpm,guided}.json: 10-step trajectories with clamping from a fixed
x_T: DDIM (eta = 0); DDPM with every step's noise z stored; DDPM with content guidance. Inputs
(x_T, z) are rounded to 6 decimals before the reference runs on them, so that both sides read
exactly the same numbers from the file; x0_hat per step is stored to 6 decimals.
"""
import json
from pathlib import Path

import numpy as np
import torch

from . import manifest as manifest_mod
from .sample import Guidance, decode, load_for_sampling, round_tokens, sample_latents
from .schedule import Diffusion
from .train_controls import load_controls

BUDGETS = (1, 2, 3, 20, 50, 200, 1000)
TRAJECTORY_STEPS = 10
TRAJECTORY_BATCH = 2
GUIDED_CONTENT = "food=Italian"  # the content target of the guided trajectory
KINDS = ("ddim", "ddpm", "guided")


def schedule_fixture(name, T):
    out = {}
    for steps in BUDGETS:
        d = Diffusion.respaced(name, T, steps)
        out[str(steps)] = {
            "timestep_map": d.timestep_map.tolist(), "betas": d.betas.tolist(), "alpha_bar": d.alpha_bar.tolist(),
            "posterior_mean_coef1": d.posterior_mean_coef1.tolist(),
            "posterior_mean_coef2": d.posterior_mean_coef2.tolist(), "model_variance": d.model_variance.tolist(),
        }
    return {"schedule": name, "T": T, "budgets": out}


def _rounded(x):
    """x rounded to 6 decimals (in float64, then float32): what the file stores and both sides read."""
    return torch.from_numpy(np.round(x.double().numpy(), 6)).float()


def _listed(x):
    return np.round(x.double().numpy(), 6).tolist()


def _content_guidance(model_dir, manifest):
    controls, _ = load_controls(Path(model_dir) / manifest["controls_reference"]["file"])
    classifier, labels = controls["content"]
    wanted = torch.tensor([[float(label == GUIDED_CONTENT) for label in labels]])
    defaults = manifest["controls"]["content"]["defaults"]
    loss = lambda x, t: classifier.loss(x, t, wanted.expand(x.shape[0], -1))  # noqa: E731
    guidance = Guidance([(1.0, loss)], steps=defaults["steps"], lam=defaults["lambda"], lr=defaults["lr"])
    record = {"control": "content", "target": GUIDED_CONTENT, "steps": guidance.steps, "lambda": guidance.lam,
              "lr": guidance.lr, "weight": 1.0}
    return guidance, record


def trajectory_fixture(model_dir, kind, seed):
    model, cfg, tok, special = load_for_sampling(model_dir)
    m = manifest_mod.load(model_dir)
    diff = Diffusion.respaced(cfg.diffusion.schedule, cfg.diffusion.T, TRAJECTORY_STEPS)
    gen = torch.Generator().manual_seed(seed)
    x_T = _rounded(torch.randn(TRAJECTORY_BATCH, cfg.model.seq_len, cfg.model.d, generator=gen))
    drawn = []

    def noise():
        drawn.append(_rounded(torch.randn(x_T.shape, generator=gen)))
        return drawn[-1]

    guidance, guidance_record = _content_guidance(model_dir, m) if kind == "guided" else (None, None)
    trace = []
    x0 = sample_latents(model, diff, x_T, noise, clamp=True, ddpm=kind != "ddim", eta=0.0, guidance=guidance,
                        trace=trace)
    tokens = round_tokens(model, x0)
    return {
        "denoiser_sha256": next(g["sha256"] for g in m["graphs"] if g["name"] == "denoiser.fp32"),
        "steps": TRAJECTORY_STEPS, "sampler": "ddim" if kind == "ddim" else "ddpm", "eta": 0.0 if kind == "ddim" else None, "clamp": True,
        "seed": seed, "guidance": guidance_record, "x_T": _listed(x_T), "noise": [_listed(z) for z in drawn],
        "x0_hat": [_listed(x) for x in trace], "tokens": tokens.tolist(),
        "texts": [decode(tok, row.tolist(), special) for row in tokens],
    }


def write_fixtures(model_dir, out_dir, seed=0):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = manifest_mod.load(model_dir)
    sched = schedule_fixture(m["diffusion"]["schedule"], m["diffusion"]["T"])
    written = [out_dir / "schedule.json"]
    written[0].write_text(json.dumps(sched) + "\n")
    for kind in KINDS:
        path = out_dir / f"trajectory_{kind}.json"
        path.write_text(json.dumps(trajectory_fixture(model_dir, kind, seed)) + "\n")
        written.append(path)
    return [str(p) for p in written]
