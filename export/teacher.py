"""teacher: a small autoregressive LM on the training split, for fluency (lm-score).

lm-score of a text = exp(mean token NLL) under this teacher, as in the Diffusion-LM paper.
Exported as `teacher.onnx`: ids [B, L] int64 -> logits [B, L, V], batch and length dynamic.
"""
import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F

from . import data, progress
from .model import Block

TEACHER_FILE = "teacher.pt"


class TeacherLM(nn.Module):
    def __init__(self, vocab_size, seq_len, hidden=128, layers=2, heads=4):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, hidden)
        self.pos = nn.Parameter(torch.randn(seq_len, hidden) * 0.02)
        self.blocks = nn.ModuleList(Block(hidden, heads, 4 * hidden, 0.1, causal=True) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids):
        h = self.tok(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))


def train_teacher(cfg, data_dir, out_dir):
    tc = cfg.teacher
    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    pad = tok.get_vocab()[data.PAD]
    split = lambda name: torch.tensor([data.encode_ids(tok, r["words"], cfg.model.seq_len)  # noqa: E731
                                       for r in data.load_split(data_dir, name)])
    ids, heldout = split("train"), split("heldout")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    model = TeacherLM(tok.get_vocab_size(), cfg.model.seq_len, tc.hidden, tc.layers)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr)
    log = []
    for step in progress.bar(range(tc.steps), desc="teacher", unit="step", mininterval=2.0):
        batch = ids[torch.randint(0, len(ids), (tc.batch_size,), generator=gen)]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), ignore_index=pad)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == tc.steps:
            log.append({"step": step + 1, "loss": loss.item()})
        if (step + 1) % 1000 == 0 or step + 1 == tc.steps:
            log[-1]["heldout_loss"] = heldout_loss(model, heldout, pad)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"vocab_size": tok.get_vocab_size(), "seq_len": cfg.model.seq_len, "hidden": tc.hidden,
                "layers": tc.layers, "state": model.state_dict(), "log": log}, out_dir / TEACHER_FILE)
    (out_dir / "teacher_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return log[-1] if log else {}


@torch.no_grad()
def heldout_loss(model, ids, pad):
    """Mean next-token cross entropy on the held-out sentences (never trained on): overfitting shows here."""
    model.eval()
    total, count = 0.0, 0
    for lo in range(0, len(ids), 256):
        batch = ids[lo: lo + 256]
        logits = model(batch[:, :-1])
        target = batch[:, 1:].reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target, ignore_index=pad, reduction="sum")
        total, count = total + loss.item(), count + int((target != pad).sum())
    model.train()
    return total / max(1, count)


def load_teacher(path):
    state = torch.load(path, weights_only=False)
    model = TeacherLM(state["vocab_size"], state["seq_len"], state.get("hidden", 128), state.get("layers", 2))
    model.load_state_dict(state["state"])
    return model.eval()


def export_teacher(model, spec, out_path):
    spec.export(model, (torch.randint(4, 100, (2, 17)),), out_path)


def lm_scores(session, tok, texts, seq_len):
    """exp(mean NLL of each next token, END included) per text under an ONNX teacher session."""
    scores = []
    for text in texts:
        ids = data.encode_ids(tok, data.words_of(tok, text), seq_len)
        n = min(len(data.words_of(tok, text)) + 2, seq_len)
        arr = np.array([ids[:n]], dtype=np.int64)
        (logits,) = session.run(None, {"ids": arr[:, :-1]})
        logp = logits[0] - np.logaddexp.reduce(logits[0], axis=-1, keepdims=True)
        nll = -logp[np.arange(n - 1), arr[0, 1:]]
        scores.append(float(np.exp(nll.mean())))
    return scores
