"""Control classifiers on noisy latents p(c | x_t, t): they see the latent and t, never words.

- pos: a per-position UPOS tagger; positions carry START, the words' tags, END, then PAD, so a
  tag sequence also pins the length.
- content: which `field=value` pairs of the MR the sentence expresses (multi-label).
- spans: whether words i..j form a phrase of a label (NP, PP as defined in spans.py).
Each guidance loss is summed per sequence; its gradient w.r.t. x is what the runtime follows.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .model import Block, timestep_embedding

POS_SPECIAL = ["START", "END", "PAD"]
IGNORE = -100  # pos label of a position the control leaves free


class LatentEncoder(nn.Module):
    """x_t [B, L, d], t [B] -> h [B, L, H]: a small transformer over the noisy latent."""

    def __init__(self, d, seq_len, hidden, layers, heads):
        super().__init__()
        self.hidden = hidden
        self.up = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
        self.time_embed = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.pos_emb = nn.Parameter(torch.randn(seq_len, hidden) * 0.02)
        self.blocks = nn.ModuleList(Block(hidden, heads, 2 * hidden, 0.0) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden)

    def forward(self, x, t):
        temb = self.time_embed(timestep_embedding(t, self.hidden).to(x.dtype))
        h = self.up(x) + self.pos_emb[: x.shape[1]] + temb[:, None, :]
        for block in self.blocks:
            h = block(h)
        return self.ln(h)


class _LinearHead(nn.Module):
    """A LatentEncoder with one linear head of `num_labels` outputs."""

    def __init__(self, d, seq_len, num_labels, hidden=64, layers=2, heads=4):
        super().__init__()
        self.encoder = LatentEncoder(d, seq_len, hidden, layers, heads)
        self.head = nn.Linear(hidden, num_labels)


class PosClassifier(_LinearHead):
    def forward(self, x, t):
        return self.head(self.encoder(x, t))

    def loss(self, x, t, tags):
        """Sum over constrained positions of -log p(tag_i | x_t): [B]."""
        logits = self(x, t).float()
        nll = F.cross_entropy(logits.transpose(1, 2), tags, ignore_index=IGNORE, reduction="none")
        return nll.sum(-1)


class ContentClassifier(_LinearHead):
    def forward(self, x, t):
        return self.head(self.encoder(x, t).mean(1))

    def loss(self, x, t, wanted):
        """-sum_v wanted_v log p(v expressed | x_t): [B]; `wanted` is a 0/1 mask [B, V]."""
        logits = self(x, t).float()
        return -(wanted * F.logsigmoid(logits)).sum(-1)

    def train_loss(self, x, t, present):
        logits = self(x, t).float()
        return F.binary_cross_entropy_with_logits(logits, present, reduction="none").sum(-1)


class SpanClassifier(nn.Module):
    """p(words i..j form a phrase of label | x_t): from the encoder states at both ends and
    their mean over the span (word k sits at latent position k + 1, after START)."""

    def __init__(self, d, seq_len, num_labels, hidden=64, layers=2, heads=4):
        super().__init__()
        self.encoder = LatentEncoder(d, seq_len, hidden, layers, heads)
        self.head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_labels))

    def forward(self, x, t, span):
        h = self.encoder(x, t)
        pos = torch.arange(h.shape[1], device=h.device)[None, :]
        first, last = span[:, 0:1] + 1, span[:, 1:2] + 1
        inside = ((pos >= first) & (pos <= last)).to(h.dtype)[:, :, None]
        mean = (h * inside).sum(1) / inside.sum(1).clamp(min=1.0)
        at = lambda k: torch.gather(h, 1, k[:, :, None].expand(-1, 1, h.shape[2]))[:, 0]
        return self.head(torch.cat([at(first), at(last), mean], dim=-1))

    def loss(self, x, t, span):
        """-log p(span (i, j) has label | x_t) for span = [B, 3] (i, j, label): [B]."""
        logits = self(x, t, span).float()
        return -F.logsigmoid(torch.gather(logits, 1, span[:, 2:3]))[:, 0]

    def train_loss(self, x, t, span, target):
        logits = torch.gather(self(x, t, span).float(), 1, span[:, 2:3])[:, 0]
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def span_examples(records, labels, seq_len, gen):
    """One (i, j, label) per sentence, half of them its real phrases (target 1), half random
    spans (target 1 only if it happens to be a phrase)."""
    index = {label: k for k, label in enumerate(labels)}
    rows, targets = [], []
    for r in records:
        n = min(len(r["words"]), seq_len - 2)
        real = {(i, j, index[label]) for i, j, label in r["spans"] if j < n}
        if real and torch.rand((), generator=gen) < 0.5:
            spans = sorted(real)
            span = spans[int(torch.randint(0, len(spans), (), generator=gen))]
        else:
            i = int(torch.randint(0, n, (), generator=gen))
            j = min(n - 1, i + int(torch.randint(0, 6, (), generator=gen)))
            span = (i, j, int(torch.randint(0, len(labels), (), generator=gen)))
        rows.append(list(span))
        targets.append(float(span in real))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(targets)


def pos_labels(records, tag_vocab, seq_len):
    """[N, L] tag ids: START, word tags (truncated to L-2), END, PAD..."""
    index = {tag: i for i, tag in enumerate(tag_vocab)}
    rows = []
    for r in records:
        tags = ["START"] + r["pos"][: seq_len - 2] + ["END"]
        rows.append([index[tag] for tag in tags + ["PAD"] * (seq_len - len(tags))])
    return torch.tensor(rows, dtype=torch.long)


def content_labels(records, values):
    index = {v: i for i, v in enumerate(values)}
    out = torch.zeros(len(records), len(values))
    for row, r in enumerate(records):
        for field, value in r["fields"]:
            key = f"{field}={value}"
            if key in index:
                out[row, index[key]] = 1.0
    return out
