"""fixtures: golden files for the Rust tests, from the PyTorch reference (seeded, deterministic).

tests/fixtures/schedule.json: the respaced schedule at several budgets (float64).
tests/fixtures/trajectory.json: a DDIM (eta = 0) trajectory with clamping from a fixed x_T.
"""
import json
from pathlib import Path

import torch

from . import manifest as manifest_mod
from .sample import decode, load_for_sampling, round_tokens, sample_latents
from .schedule import Diffusion

BUDGETS = (1, 2, 3, 20, 50, 200, 1000)
TRAJECTORY_STEPS = 10
TRAJECTORY_BATCH = 2


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


def trajectory_fixture(model_dir, seed):
    model, cfg, tok, special = load_for_sampling(model_dir)
    diff = Diffusion.respaced(cfg.diffusion.schedule, cfg.diffusion.T, TRAJECTORY_STEPS)
    x_T = torch.randn(TRAJECTORY_BATCH, cfg.model.seq_len, cfg.model.d, generator=torch.Generator().manual_seed(seed))
    trace = []
    x0 = sample_latents(model, diff, x_T, clamp=True, ddpm=False, eta=0.0, trace=trace)
    tokens = round_tokens(model, x0)
    m = manifest_mod.load(model_dir)
    return {
        "denoiser_sha256": next(g["sha256"] for g in m["graphs"] if g["name"] == "denoiser.fp32"),
        "steps": TRAJECTORY_STEPS, "sampler": "ddim", "eta": 0.0, "clamp": True, "seed": seed,
        "x_T": x_T.tolist(), "x0_hat": [x.tolist() for x in trace], "x0": x0.tolist(),
        "tokens": tokens.tolist(), "texts": [decode(tok, row.tolist(), special) for row in tokens],
    }


def write_fixtures(model_dir, out_dir, seed=0):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = manifest_mod.load(model_dir)
    sched = schedule_fixture(m["diffusion"]["schedule"], m["diffusion"]["T"])
    (out_dir / "schedule.json").write_text(json.dumps(sched) + "\n")
    (out_dir / "trajectory.json").write_text(json.dumps(trajectory_fixture(model_dir, seed)) + "\n")
    return [str(out_dir / "schedule.json"), str(out_dir / "trajectory.json")]
