"""sample: the PyTorch reference sampler the Rust runtime is checked against.

Respaced DDPM (fixed-large variance) or DDIM(eta), the clamping trick (nearest word
embedding by L2 per position), rounding through the tied embedding head.
"""
from pathlib import Path

import torch
from tokenizers import Tokenizer

from . import manifest as manifest_mod
from .schedule import Diffusion
from .verify import load_reference


def clamp_to_embeddings(x0_hat, emb):
    """Clamping trick: replace each position by its nearest word embedding (L2)."""
    dist = (x0_hat**2).sum(-1, keepdim=True) - 2 * x0_hat @ emb.t() + (emb**2).sum(-1)
    return emb[dist.argmin(-1)]


def p_sample(diff, i, x, x0_hat, noise):
    """x_{i-1} ~ q(x_{i-1} | x_i, x0_hat) with the model variance (no noise at i = 0)."""
    mean = diff.posterior_mean_coef1[i] * x0_hat + diff.posterior_mean_coef2[i] * x
    return mean + (i > 0) * float(diff.model_variance[i]) ** 0.5 * noise


def ddim_sample(diff, i, x, x0_hat, noise, eta):
    """DDIM update; eta = 0 is deterministic, eta = 1 matches DDPM's posterior variance."""
    ab, ab_prev = diff.alpha_bar[i], diff.alpha_bar_prev[i]
    eps = (x / ab**0.5 - x0_hat) / (1.0 / ab - 1.0) ** 0.5
    sigma = eta * ((1 - ab_prev) / (1 - ab)) ** 0.5 * (1 - ab / ab_prev) ** 0.5
    mean = x0_hat * ab_prev**0.5 + (1 - ab_prev - sigma**2) ** 0.5 * eps
    return mean + (i > 0) * sigma * noise


@torch.no_grad()
def sample_latents(model, diff, x_T, clamp=True, ddpm=True, eta=0.0, generator=None, trace=None):
    """Run the reverse process from x_T; returns x_0. `trace` collects the model's x0_hat per step."""
    emb = model.word_emb.weight
    x = x_T
    for i in reversed(range(diff.num_steps)):
        t = torch.full((x.shape[0],), int(diff.timestep_map[i]), dtype=torch.long)
        x0_hat = model(x, t)
        if trace is not None:
            trace.append(x0_hat.clone())
        if clamp:
            x0_hat = clamp_to_embeddings(x0_hat, emb)
        noise = torch.randn(x.shape, generator=generator) if (ddpm or eta > 0) else torch.zeros_like(x)
        x = p_sample(diff, i, x, x0_hat, noise) if ddpm else ddim_sample(diff, i, x, x0_hat, noise, eta)
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
    x0 = sample_latents(model, diff, x_T, clamp=clamp, ddpm=ddpm, eta=eta, generator=gen)
    return [decode(tok, row.tolist(), special) for row in round_tokens(model, x0)]

