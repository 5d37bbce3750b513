"""distill: sequence-level knowledge distillation (Kim & Rush 2016) for the denoiser.

Non-autoregressive models fuse the modes of their data ("Italian Japanese food"); training them
on sentences sampled from an autoregressive teacher at a lower temperature is the standard cure.
The teacher (teacher.py, trained on the training split only) samples `distill.sentences`
sentences at `distill.temperature`; a sample is kept when it ends with END, has no UNK, no
repeat (evaluate's rule) and at least `distill.min_words` words. The kept sentences go to
WORKDIR/data/distilled.jsonl ({"words": [...]} per line), which `train.corpus` = "distilled"
or "mixed" reads.
"""
import json
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer

from . import data, progress
from .atomic import atomic_write_text
from .errors import ExportError
from .teacher import TEACHER_FILE, load_teacher

DISTILLED = "distilled.jsonl"


@torch.no_grad()
def sample_teacher(model, vocab, seq_len, num, temperature, gen, batch_size=256):
    """`num` id sequences [START] w.. (up to seq_len - 1 tokens after START), ancestral sampling."""
    start, end, pad = vocab[data.START], vocab[data.END], vocab[data.PAD]
    out = []
    for lo in progress.bar(range(0, num, batch_size), desc="distill: sampling", unit="batch", mininterval=2.0):
        b = min(batch_size, num - lo)
        ids = torch.full((b, 1), start, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        for _ in range(seq_len - 1):
            logits = model(ids)[:, -1].float() / temperature
            logits[:, pad] = float("-inf")
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == end
            if bool(done.all()):
                break
        out.extend(ids.tolist())
    return out


def keep_or_reason(tok, ids, min_words):
    """(words, None) for a sentence worth training on, else (None, why it was dropped)."""
    vocab = tok.get_vocab()
    end, unk = vocab[data.END], vocab[data.UNK]
    body = ids[1:]
    if end not in body:
        return None, "unfinished"
    body = body[: body.index(end)]
    if unk in body:
        return None, "unk"
    words = [tok.id_to_token(i) for i in body]
    if len(words) < min_words:
        return None, "short"
    if data.repeats(words):
        return None, "repeats"
    return words, None


def distill(cfg, data_dir, teacher_dir):
    """Sample, filter and write the distilled corpus; returns counts and diversity figures."""
    dc = cfg.distill
    path = Path(teacher_dir) / TEACHER_FILE
    if not path.is_file():
        raise ExportError(f"{path}: no teacher; run `python -m export teacher` first")
    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    model = load_teacher(path)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    gen = torch.Generator().manual_seed(dc.seed)
    sampled = sample_teacher(model, tok.get_vocab(), cfg.model.seq_len, dc.sentences, dc.temperature, gen)
    kept, dropped = [], Counter()
    for ids in sampled:
        words, why = keep_or_reason(tok, ids, dc.min_words)
        if words is None:
            dropped[why] += 1
        else:
            kept.append(words)
    if not kept:
        raise ExportError(f"distill: every one of {len(sampled)} samples was dropped ({dict(dropped)})")
    atomic_write_text(Path(data_dir) / DISTILLED, "".join(json.dumps({"words": w}) + "\n" for w in kept))
    train_words = [r["words"] for r in data.load_split(data_dir, "train")]
    return {"sampled": len(sampled), "kept": len(kept), "dropped": dict(dropped),
            "distinct_2": distinct_n(kept, 2), "train_distinct_2": distinct_n(train_words, 2),
            "copies_of_training": copies(kept, train_words)}


def distinct_n(sentences, n):
    """Distinct n-grams over all n-grams (Li et al. 2016), pooled over the sentences."""
    grams = [tuple(s[i: i + n]) for s in sentences for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def copies(sentences, train_words):
    """The share of sentences that are verbatim training sentences."""
    train = {tuple(w) for w in train_words}
    return sum(tuple(s) in train for s in sentences) / max(1, len(sentences))
