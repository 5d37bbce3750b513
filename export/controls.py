"""Control classifiers on noisy latents p(c | x_t, t): they see the latent and t, never words.

- pos: a per-position UPOS tagger; positions carry START, the words' tags, END, then PAD, so a
  tag sequence also pins the length.
- content: which `field=value` pairs the sentence expresses in its own words, tagged per
  position (the MR alone often names fields a sentence leaves out).
- spans: whether words i..j form a phrase of a label (NP, PP as defined in spans.py), trained
  on real phrases against boundary-shifted, relabelled and random spans, and per position on
  where phrases start, end and run.
Each guidance loss is summed per sequence; its gradient w.r.t. x is what the runtime follows.
"""
import re

import torch
from torch import nn
from torch.nn import functional as F

from .model import Block, timestep_embedding

POS_SPECIAL = ["START", "END", "PAD"]
IGNORE = -100  # pos label of a position the control leaves free
SPAN_TAGS = ("starts", "ends", "inside")  # the span classifier's boundary channels per label


def log_sigmoid(x):
    """log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)), written out: exported as is it stays
    accurate where the logits saturate (the exporter's own form of F.logsigmoid loses up to 7 %
    of the gradient there, on a confident classifier near t = 0)."""
    return torch.clamp(x, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(x)))


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
    """Per-position tagger of content values: logit[b, i, v] says that position i carries (a word
    of) the value of label v; p(v expressed) = 1 - prod_i (1 - sigmoid(logit[b, i, v])), so the
    value may sit anywhere (a noisy-or over positions)."""

    def forward(self, x, t):
        return self.head(self.encoder(x, t))

    def log_p_expressed(self, x, t):
        """log p(v expressed | x_t) = log(1 - exp(s)), s = sum_i log(1 - p_i) [B, V]. Above -ln 2,
        where 1 - exp(s) would cancel, as log(-s) + log((exp(s) - 1) / s) with the series of the
        second factor (to s^8: its gradient within 4e-7 of float64 in float32)."""
        s = log_sigmoid(-self(x, t).float()).sum(1)
        series = 1 + s * (1 / 2 + s * (1 / 6 + s * (1 / 24 + s * (1 / 120 + s * (1 / 720 + s * (
            1 / 5040 + s * (1 / 40320 + s / 362880)))))))
        near_zero = torch.log((-s).clamp(min=1e-12)) + torch.log(series)
        far = torch.log((1.0 - torch.exp(s)).clamp(min=1e-12))
        return torch.where(s > -0.6931, near_zero, far)

    def loss(self, x, t, wanted):
        """-sum_v wanted_v log p(v expressed | x_t): [B]; `wanted` is a 0/1 mask [B, V]."""
        return -(wanted * self.log_p_expressed(x, t)).sum(-1)

    def train_loss(self, x, t, tags):
        """Per-position binary cross entropy against tags [B, L, V] (1 where a value's word sits)."""
        logits = self(x, t).float()
        return F.binary_cross_entropy_with_logits(logits, tags, reduction="none").sum((1, 2)) / logits.shape[1]


class SpanClassifier(nn.Module):
    """p(words i..j form a phrase of label | x_t) from two heads over one encoder (word k sits at
    latent position k + 1, after START):
    - pair: the encoder states at both ends and their mean over the span -> logit per label;
    - tags: per position and label, three boundary channels (a phrase starts here, ends here,
      this word is inside one), so the guidance gradient lands on the words that make the phrase,
      the way a POS template's does."""

    def __init__(self, d, seq_len, num_labels, hidden=64, layers=2, heads=4):
        super().__init__()
        self.encoder = LatentEncoder(d, seq_len, hidden, layers, heads)
        self.head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_labels))
        self.tags = nn.Linear(hidden, len(SPAN_TAGS) * num_labels)

    def _pair(self, h, span):
        pos = torch.arange(h.shape[1], device=h.device)[None, None, :]
        first, last = span[:, :, 0:1] + 1, span[:, :, 1:2] + 1
        inside = ((pos >= first) & (pos <= last)).to(h.dtype)
        mean = (inside @ h) / inside.sum(-1, keepdim=True).clamp(min=1.0)
        at = lambda k: torch.gather(h, 1, k.expand(-1, -1, h.shape[2]))  # noqa: E731
        return self.head(torch.cat([at(first), at(last), mean], dim=-1))

    def _tags(self, h):
        """[B, L, labels, 3] logits of (starts, ends, inside)."""
        return self.tags(h).unflatten(-1, (-1, len(SPAN_TAGS)))

    def forward(self, x, t, span):
        """Pair logits [B, labels] for span [B, 3] (i, j, label), or [B, S, labels] for S spans [B, S, 3]."""
        single = span.dim() == 2
        logits = self._pair(self.encoder(x, t), span[:, None] if single else span)
        return logits[:, 0] if single else logits

    def loss(self, x, t, span):
        """-log p(span (i, j) has label | x_t) for span = [B, 3] (i, j, label): [B]; the pair
        head's term plus the tags': a phrase starts at i and ends at j, every word of i..j is
        inside one, and none starts after i or ends before j."""
        h = self.encoder(x, t)
        pair = torch.gather(self._pair(h, span[:, None])[:, 0].float(), 1, span[:, 2:3])[:, 0]
        tags = torch.gather(self._tags(h).float(), 2, span[:, None, 2:3, None].expand(-1, h.shape[1], 1, len(SPAN_TAGS)))[:, :, 0]
        pos = torch.arange(h.shape[1], device=h.device)[None, :]
        first, last = span[:, 0:1] + 1, span[:, 1:2] + 1
        want = torch.stack([pos == first, pos == last, (pos >= first) & (pos <= last)], dim=-1).float()
        starts_after, ends_before = (pos > first) & (pos <= last), (pos >= first) & (pos < last)
        avoid = torch.stack([starts_after, ends_before, torch.zeros_like(starts_after)], dim=-1).float()
        tag_nll = -(want * log_sigmoid(tags) + avoid * log_sigmoid(-tags)).sum((1, 2))
        return -log_sigmoid(pair) + tag_nll

    def train_loss(self, x, t, spans, target, tags):
        """Binary cross entropy of spans [B, S, 3] against target [B, S] (-1: unused slot), summed
        over S, plus that of the boundary channels against tags [B, L, labels, 3], per position."""
        h = self.encoder(x, t)
        logits = torch.gather(self._pair(h, spans).float(), 2, spans[:, :, 2:3])[:, :, 0]
        used = (target >= 0).float()
        bce = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="none")
        tag_bce = F.binary_cross_entropy_with_logits(self._tags(h).float(), tags, reduction="none")
        return (bce * used).sum(-1) + tag_bce.sum((1, 2, 3)) / h.shape[1]


def span_tags(records, labels, seq_len):
    """[N, L, labels, 3] 0/1: at word k's position k + 1, whether a phrase of each label starts
    there, ends there, or covers it."""
    index = {label: k for k, label in enumerate(labels)}
    out = torch.zeros(len(records), seq_len, len(labels), len(SPAN_TAGS))
    for row, r in enumerate(records):
        for i, j, label in r["spans"]:
            if j + 1 < seq_len - 1:
                lab = index[label]
                out[row, i + 1, lab, 0] = 1.0
                out[row, j + 1, lab, 1] = 1.0
                out[row, i + 1:j + 2, lab, 2] = 1.0
    return out


def pos_labels(records, tag_vocab, seq_len):
    """[N, L] tag ids: START, word tags (truncated to L-2), END, PAD..."""
    index = {tag: i for i, tag in enumerate(tag_vocab)}
    rows = []
    for r in records:
        tags = ["START"] + r["pos"][: seq_len - 2] + ["END"]
        rows.append([index[tag] for tag in tags + ["PAD"] * (seq_len - len(tags))])
    return torch.tensor(rows, dtype=torch.long)


FRIENDLY = r"(?:family|kid|kids|child|children)\s*-?\s*friendly"
NEGATED = re.compile(r"\b(?:not|non|n't|no|never)\b(?:\s+[\w-]+){0,2}?\s*-?\s*" + FRIENDLY)


def expressed(pair, text):
    """Does the text express field=value? The value string appears (case-insensitive); for
    family friendly the phrase appears un-negated (yes) or negated (no)."""
    field, value = pair.split("=", 1)
    text = " ".join(text.lower().split())
    if field == "family friendly":
        negated = bool(NEGATED.search(text))
        plain = bool(re.search(FRIENDLY, NEGATED.sub(" ", text)))
        return negated if value.lower() == "no" else plain
    return value.lower() in text


def value_positions(pair, words):
    """Latent positions (word k at k + 1) of the words that express field=value in `words`."""
    field, value = pair.split("=", 1)
    lower = [w.lower() for w in words]
    if field == "family friendly":
        text = " ".join(lower)
        pattern = NEGATED if value.lower() == "no" else re.compile(FRIENDLY)
        spans = [m.span() for m in pattern.finditer(text)]
        if value.lower() != "no":
            negated = [m.span() for m in NEGATED.finditer(text)]
            spans = [s for s in spans if not any(a <= s[0] < b for a, b in negated)]
        starts = [sum(len(w) + 1 for w in lower[:k]) for k in range(len(lower))]
        return sorted({k + 1 for a, b in spans for k, c in enumerate(starts) if a <= c < b})
    target = value.lower().split()
    n = len(target)
    return sorted({k + 1 + i for k in range(len(lower) - n + 1) if lower[k:k + n] == target for i in range(n)})


def content_targets(records, values, seq_len):
    """wanted [N, V]: the MR pairs each sentence expresses in its own words (not the MR alone),
    and per sentence the (position, label) pairs of the words that express them."""
    index = {v: i for i, v in enumerate(values)}
    wanted = torch.zeros(len(records), len(values))
    tags = []
    for row, r in enumerate(records):
        mine = []
        for field, value in r["fields"]:
            key = f"{field}={value}"
            if key in index and expressed(key, r["text"]):
                where = [p for p in value_positions(key, r["words"]) if p < seq_len]
                if where:
                    wanted[row, index[key]] = 1.0
                    mine.extend((p, index[key]) for p in where)
        tags.append(mine)
    return wanted, tags


def position_tags(tags, rows, seq_len, num_labels):
    """[B, L, V] 0/1 per-position content tags of the sentences `rows`."""
    out = torch.zeros(len(rows), seq_len, num_labels)
    for b, row in enumerate(rows):
        for p, v in tags[row]:
            out[b, p, v] = 1.0
    return out


def span_candidates(records, labels, seq_len, gen, per_sentence=8):
    """spans [N, S, 3] and targets [N, S] (1 phrase, 0 not, -1 unused slot): each sentence's real
    phrases, then for each a boundary-shifted and a relabelled copy, then random spans."""
    index = {label: k for k, label in enumerate(labels)}
    spans = torch.zeros(len(records), per_sentence, 3, dtype=torch.long)
    target = torch.full((len(records), per_sentence), -1.0)
    for row, r in enumerate(records):
        n = min(len(r["words"]), seq_len - 2)
        real = {(i, j, index[label]) for i, j, label in r["spans"] if j < n}
        order = sorted(real)
        picks = [order[k] for k in torch.randperm(len(order), generator=gen)[: per_sentence // 4].tolist()]
        chosen = list(picks)
        for i, j, lab in picks:
            shift = int(torch.randint(0, 4, (), generator=gen))
            moved = [(i - 1, j, lab), (i + 1, j, lab), (i, j - 1, lab), (i, j + 1, lab)][shift]
            if 0 <= moved[0] <= moved[1] < n:
                chosen.append(moved)
            chosen.append((i, j, (lab + 1) % len(labels)))
        while len(chosen) < per_sentence and n > 0:
            i = int(torch.randint(0, n, (), generator=gen))
            j = min(n - 1, i + int(torch.randint(0, 6, (), generator=gen)))
            chosen.append((i, j, int(torch.randint(0, len(labels), (), generator=gen))))
        for k, span in enumerate(chosen[:per_sentence]):
            spans[row, k] = torch.tensor(span)
            target[row, k] = float(span in real)
    return spans, target
