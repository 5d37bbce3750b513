"""The Diffusion-LM denoiser f_theta(x_t, t) -> x0_hat and its tied rounding head."""
import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of integer timesteps, always computed in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    """Pre-LayerNorm transformer encoder block, written out so that it exports plainly."""

    def __init__(self, hidden, heads, ffn, dropout, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h):
        b, n, c = h.shape
        q, k, v = self.qkv(self.ln1(h)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(c // self.heads))
        if self.causal:  # position i attends to positions <= i only (the teacher LM)
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=h.device).triu(1), float("-inf"))
        att = torch.softmax(scores, dim=-1)
        h = h + self.drop(self.proj((att @ v).transpose(1, 2).reshape(b, n, c)))
        return h + self.drop(self.ff(self.ln2(h)))


class DiffusionLM(nn.Module):
    def __init__(self, cfg, vocab_size):
        super().__init__()
        d, hidden = cfg.d, cfg.hidden
        self.hidden, self.self_condition = hidden, cfg.self_condition
        self.word_emb = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.word_emb.weight, std=1.0)
        self.input_up = nn.Sequential(nn.Linear(2 * d if cfg.self_condition else d, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.time_embed = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.SiLU(), nn.Linear(4 * hidden, hidden))
        self.pos_emb = nn.Parameter(torch.randn(cfg.seq_len, hidden) * 0.02)
        self.ln = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(hidden, cfg.heads, cfg.ffn, cfg.dropout) for _ in range(cfg.layers))
        self.ln_out = nn.LayerNorm(hidden)
        self.output_down = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, d))

    def forward(self, x, t, x0_hat_prev=None):
        """x_t [B, L, d], t [B] int64 (and, self-conditioned, the previous x0_hat) -> x0_hat [B, L, d]."""
        if self.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x0_hat_prev is None else x0_hat_prev], dim=-1)
        temb = self.time_embed(timestep_embedding(t, self.hidden).to(x.dtype))
        h = self.input_up(x) + self.pos_emb[: x.shape[1]] + temb[:, None, :]
        h = self.drop(self.ln(h))
        for block in self.blocks:
            h = block(h)
        return self.output_down(self.ln_out(h))

    def logits(self, x):
        """Rounding head tied to the embedding: logits_v = <x, EMB(v)>."""
        return x @ self.word_emb.weight.t()


def clamp_scores(x0_hat, emb):
    """<x, EMB(v)> - ||EMB(v)||^2 / 2 per position and word: its argmax is the nearest embedding
    (L2), the clamping trick's choice, computed as the Rust sampler does (src/embeddings.rs)."""
    return x0_hat @ emb.t() - 0.5 * (emb**2).sum(-1)


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def token_nll(model, x, ids):
    """Rounding cross entropy -log p(w | x), mean over positions."""
    logits = model.logits(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none").view(ids.shape).mean(-1)
