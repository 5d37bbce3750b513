"""The syntax-tree control: a dependency tree over the words (spaCy's parse: a head and a relation
label per word), the dependency analogue of the paper's constituency-tree control.

A tree is written `HEAD:LABEL` per word, space-separated, heads 1-based with 0 for the root (CoNLL),
e.g. "2:det 3:nsubj 0:ROOT 3:prep 4:pobj 3:punct". In the latent, word k sits at position k + 1
after START, so head h (1-based) is position h and the root's head is START's position 0.

The classifier reads the noisy latent x_t and t (like pos and spans): per position a distribution
over head positions (a biaffine arc scorer) and, given the head, over labels; its guidance loss is
-log p(target heads and labels | x_t), summed over the words. Its target input is [B, 2L]: the head
position of each latent position, then its label id, IGNORE where the tree says nothing.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from .controls import IGNORE, LatentEncoder

ROOT = "ROOT"


def tree_string(tree):
    """[(head, label)] -> "HEAD:LABEL ..."."""
    return " ".join(f"{head}:{label}" for head, label in tree)


def parse_tree(text):
    """"HEAD:LABEL ..." -> [(head, label)]; ValueError naming the bad part."""
    out = []
    for k, part in enumerate(text.split()):
        head, sep, label = part.partition(":")
        if not sep or not head.isdigit() or not label:
            raise ValueError(f"word {k + 1}: {part!r} is not HEAD:LABEL")
        out.append((int(head), label))
    return out


def tree_targets(trees, labels, seq_len):
    """[N, 2L] int64: per latent position the target head position, then the label id; IGNORE at
    START, END, PAD and for a word whose head falls beyond the L - 2 words that fit."""
    index = {label: k for k, label in enumerate(labels)}
    out = torch.full((len(trees), 2 * seq_len), IGNORE, dtype=torch.long)
    for row, tree in enumerate(trees):
        n = min(len(tree), seq_len - 2)
        for k, (head, label) in enumerate(tree[:n]):
            if head <= n and label in index:
                out[row, k + 1] = head
                out[row, seq_len + k + 1] = index[label]
    return out


class TreeClassifier(nn.Module):
    """p(heads, labels | x_t): s[i, j] = dep(h_i) . head(h_j) / sqrt(arc) + bias(h_j) scores
    position j as the head of position i (never itself); the label of i reads h_i and its
    head's state."""

    def __init__(self, d, seq_len, num_labels, hidden=64, layers=2, heads=4, arc=64):
        super().__init__()
        self.encoder = LatentEncoder(d, seq_len, hidden, layers, heads)
        self.dep, self.head = nn.Linear(hidden, arc), nn.Linear(hidden, arc)
        self.head_bias = nn.Linear(hidden, 1)
        self.label = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_labels))
        self.scale = 1.0 / math.sqrt(arc)

    def arcs(self, h):
        """[B, L, L] arc logits, dependent i by head j."""
        s = self.dep(h) @ self.head(h).transpose(1, 2) * self.scale + self.head_bias(h).transpose(1, 2)
        # made here, not held as a buffer: make_fx would capture a buffer as a constant the export cannot find
        itself = torch.eye(h.shape[1], dtype=torch.bool, device=h.device)
        return s.masked_fill(itself, -1e4)

    def labels_given(self, h, heads):
        """[B, L, labels] label logits of each position with head positions `heads` [B, L]."""
        at = torch.gather(h, 1, heads[..., None].expand(-1, -1, h.shape[2]))
        return self.label(torch.cat([h, at], dim=-1))

    def loss(self, x, t, tree):
        """-log p(target heads and labels | x_t), summed over the positions the tree names: [B]."""
        n = x.shape[1]
        heads, labels = tree[:, :n], tree[:, n:]
        h = self.encoder(x, t)
        used = (heads >= 0).to(torch.float32)
        safe = heads.clamp(min=0)
        arc_nll = -torch.gather(F.log_softmax(self.arcs(h).float(), dim=-1), 2, safe[..., None])[..., 0]
        label_logits = self.labels_given(h, safe).float()
        label_nll = F.cross_entropy(label_logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
        return (arc_nll * used).sum(-1) + label_nll.sum(-1)

    @torch.no_grad()
    def predict(self, x, t):
        """(heads [B, L], labels [B, L]): the best head per position and the best label given it."""
        h = self.encoder(x, t)
        heads = self.arcs(h).argmax(-1)
        return heads, self.labels_given(h, heads).argmax(-1)


def attachment(pred_heads, pred_labels, target):
    """(UAS, LAS) over the positions `target` [N, 2L] names."""
    n = pred_heads.shape[1]
    heads, labels = target[:, :n], target[:, n:]
    used = heads >= 0
    right_head = (pred_heads == heads) & used
    uas = right_head.sum().item() / max(1, used.sum().item())
    las = (right_head & (pred_labels == labels)).sum().item() / max(1, used.sum().item())
    return uas, las


def tree_score(parsed, target):
    """(UAS, LAS, exact) of one output's parse [(head, label)] against the target tree; words the
    output lacks count as wrong."""
    if not target:
        return 0.0, 0.0, 0.0
    heads = sum(k < len(parsed) and parsed[k][0] == h for k, (h, _) in enumerate(target))
    both = sum(k < len(parsed) and parsed[k] == (h, lab) for k, (h, lab) in enumerate(target))
    exact = float(len(parsed) == len(target) and both == len(target))
    return heads / len(target), both / len(target), exact
