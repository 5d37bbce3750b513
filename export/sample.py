"""sample: the PyTorch reference sampler the Rust runtime is checked against.

Respaced DDPM (fixed-large variance) or DDIM(eta), the clamping trick (nearest word embedding
by L2 per position), classifier guidance, rounding through the tied embedding head. The step
functions carry the names of the Rust sampler (src/sampler/step.rs): `x` is x_i, `noise` is
z ~ N(0, I) given by the caller, and each returns (x_{i-1}, the mean of p(x_{i-1} | x_i)).
Held positions (length, infill) are the Rust runtime's alone.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from . import manifest as manifest_mod
from .schedule import Diffusion
from .verify import load_reference

GUIDE_SKIP_LAST = 0.1  # no guidance in this last fraction of the steps


def clamp_to_embeddings(x0_hat, emb):
    """Clamping trick: replace each position by its nearest word embedding (L2)."""
    dist = (x0_hat**2).sum(-1, keepdim=True) - 2 * x0_hat @ emb.t() + (emb**2).sum(-1)
    return emb[dist.argmin(-1)]


def q_posterior_mean(diff, i, x, x0_hat):
    """Mean of q(x_{i-1} | x_i, x_0 = x0_hat): coef1 x0_hat + coef2 x_i (Ho et al. 2020, Eq. 7)."""
    return float(diff.posterior_mean_coef1[i]) * x0_hat + float(diff.posterior_mean_coef2[i]) * x


def sigma(diff, i, ddpm, eta=0.0):
    """The noise scale of step i: 0 at i = 0; DDPM's fixed-large sqrt(model variance); DDIM's eta-scaled one."""
    if i == 0:
        return 0.0
    if ddpm:
        return math.sqrt(diff.model_variance[i])
    ab, ab_prev = diff.alpha_bar[i], diff.alpha_bar_prev[i]
    return eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)


def _add_noise(mean, scale, noise):
    return mean + scale * noise if noise is not None and scale > 0 else mean


def p_sample(diff, i, x, x0_hat, noise):
    """DDPM: x_{i-1} = q_posterior_mean + sigma z, sigma^2 = the fixed-large model variance."""
    mean = q_posterior_mean(diff, i, x, x0_hat)
    return _add_noise(mean, sigma(diff, i, True), noise), mean


def ddim_sample(diff, i, x, x0_hat, noise, eta):
    """DDIM (Song et al. 2021, Eq. 12) with eps recovered from the x0 prediction:
    eps = (x_i - sqrt(abar) x0_hat) / sqrt(1 - abar),
    x_{i-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z."""
    ab, ab_prev = diff.alpha_bar[i], diff.alpha_bar_prev[i]
    s = sigma(diff, i, False, eta)
    eps = (x - math.sqrt(ab) * x0_hat) * (1.0 / math.sqrt(1 - ab))
    mean = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - s**2, 0.0)) * eps
    return _add_noise(mean, s, noise), mean


@dataclass
class Guidance:
    """Classifier guidance (Diffusion-LM section 5.2): `losses` are (weight, f(x, t) -> loss [B])."""

    losses: list
    steps: int
    lam: float
    lr: float
    skip_last: float = GUIDE_SKIP_LAST


def guide(x, mean, variance, t, g):
    """K steps on x_{i-1} against sum(control losses) + lambda ||x - mu||^2 / sigma^2; each update
    is lr * g / |g| per coordinate, what an Adagrad re-created every step does first."""
    fluency = 2 * g.lam / max(variance, 1e-12)
    for _ in range(g.steps):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            total = sum(w * fn(xg, t).sum() for w, fn in g.losses)
            (grad,) = torch.autograd.grad(total, xg)
        step = grad + fluency * (x - mean)
        x = x - g.lr * step / (step.abs() + 1e-10)
    return x


@torch.no_grad()
def sample_latents(model, diff, x_T, noise, clamp=True, ddpm=True, eta=0.0, guidance=None, trace=None):
    """Run the reverse process from x_T; returns x_0. `noise()` gives z ~ N(0, I) of x's shape and is
    called once per step that needs it (i > 0, sigma > 0), as in the Rust sampler. A self-conditioned
    model reads its previous raw x0_hat (zeros at the first step). `trace` collects x0_hat per step."""
    emb = model.word_emb.weight
    x, x0_hat_prev = x_T, (torch.zeros_like(x_T) if model.self_condition else None)
    n = diff.num_steps
    last_unguided = math.floor(n * (guidance.skip_last if guidance else GUIDE_SKIP_LAST))
    for i in reversed(range(n)):
        t = torch.full((x.shape[0],), int(diff.timestep_map[i]), dtype=torch.long)
        x0_hat = model(x, t, x0_hat_prev)
        if model.self_condition:
            x0_hat_prev = x0_hat  # the raw prediction, as in training
        if trace is not None:
            trace.append(x0_hat.clone())
        if clamp:
            x0_hat = clamp_to_embeddings(x0_hat, emb)
        z = noise() if i > 0 and sigma(diff, i, ddpm, eta) > 0 else None
        x, mean = p_sample(diff, i, x, x0_hat, z) if ddpm else ddim_sample(diff, i, x, x0_hat, z, eta)
        if guidance is not None and guidance.steps > 0 and i > last_unguided:
            t_prev = torch.full((x.shape[0],), int(diff.timestep_map[i - 1]), dtype=torch.long)
            x = guide(x, mean, float(diff.model_variance[i]), t_prev, guidance)
    return x


def round_tokens(model, x):
    """Rounding through the tied head: argmax_v <x_i, EMB(v)>."""
    return model.logits(x).argmax(-1)


def decode(tok, ids, special_ids):
    return " ".join(tok.id_to_token(i) for i in ids if i not in special_ids)


def load_for_sampling(model_dir):
    manifest = manifest_mod.load(model_dir)
    model, cfg = load_reference(model_dir, manifest)
    tok = Tokenizer.from_file(str(Path(model_dir) / manifest["tokenizer"]["file"]))
    special = {manifest["special_tokens"][k] for k in ("pad", "start", "end")}
    return model, cfg, tok, special


def sample_texts(model_dir, num, steps, seed, eta=0.0, ddpm=True, clamp=True):
    model, cfg, tok, special = load_for_sampling(model_dir)
    diff = Diffusion.respaced(cfg.diffusion.schedule, cfg.diffusion.T, steps)
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(num, cfg.model.seq_len, cfg.model.d, generator=gen)
    noise = lambda: torch.randn(x_T.shape, generator=gen)  # noqa: E731
    x0 = sample_latents(model, diff, x_T, noise, clamp=clamp, ddpm=ddpm, eta=eta)
    return [decode(tok, row.tolist(), special) for row in round_tokens(model, x0)]
