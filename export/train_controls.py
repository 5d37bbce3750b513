"""controls: train the guidance classifiers on noisy latents of a trained Diffusion-LM."""
import json
from pathlib import Path

import torch

from . import data, progress
from .atomic import atomic_save
from .control_eval import accuracy_by_band
from .controls import (POS_SPECIAL, ContentClassifier, PosClassifier, SpanClassifier, content_targets, pos_labels,
                       position_tags, span_candidates, span_tags)
from .spans import SPAN_LABELS
from .errors import ExportError
from .schedule import Diffusion
from .train import CHECKPOINT, load_ema
from .tree import TreeClassifier

CONTROLS_FILE = "controls.pt"
PARTIAL_FILE = "controls.partial.pt"  # resumable state of an unfinished run
CHECKPOINT_EVERY = 500


def label_vocab(records):
    tags = sorted({tag for r in records for tag in r["pos"]}) + POS_SPECIAL
    values = sorted({f"{field}={value}" for r in records for field, value in r["fields"]})
    return tags, values


def train_controls(cfg, data_dir, train_dir, out_dir):
    """Train pos and content classifiers against the EMA embeddings of train_dir's checkpoint."""
    ckpt = Path(train_dir) / CHECKPOINT
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no checkpoint; run `python -m export train` first")
    records = data.load_split(data_dir, "train")
    if records and "spans" not in records[0]:
        raise ExportError(f"{data_dir}: prepared without phrase spans; run `python -m export prepare` again")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    lm, _, _ = load_ema(ckpt, tok.get_vocab_size())
    emb = lm.word_emb.weight.detach()
    c, m = cfg.controls, cfg.model
    tags, values = label_vocab(records)
    ids = torch.tensor([data.encode_ids(tok, r["words"], m.seq_len) for r in records])
    pos_y = pos_labels(records, tags, m.seq_len)
    _, content_tags = content_targets(records, values, m.seq_len)
    boundary_tags = span_tags(records, SPAN_LABELS, m.seq_len)
    torch.manual_seed(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    pos = PosClassifier(m.d, m.seq_len, len(tags), c.hidden, c.layers, c.heads)
    content = ContentClassifier(m.d, m.seq_len, len(values), c.hidden, c.layers, c.heads)
    spans = SpanClassifier(m.d, m.seq_len, len(SPAN_LABELS), c.hidden, c.layers, c.heads)
    diff = Diffusion.full(cfg.diffusion.schedule, cfg.diffusion.T)
    params = [p for clf in (pos, content, spans) for p in clf.parameters()]
    opt = torch.optim.AdamW(params, lr=c.lr)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial, log, start = out_dir / PARTIAL_FILE, [], 0
    if partial.is_file():
        state = torch.load(partial, weights_only=False)
        if state["config"] == cfg.to_dict():
            for name, clf in (("pos", pos), ("content", content), ("spans", spans)):
                clf.load_state_dict(state[name])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])
            log, start = state["log"], state["step"]
            print(f"controls: resuming at step {start} from {partial}")
    bar = progress.bar(range(start, c.steps), desc="controls", unit="step", mininterval=2.0, initial=start, total=c.steps)
    for step in bar:
        idx = torch.randint(0, len(ids), (c.batch_size,), generator=gen)
        t = torch.randint(0, cfg.diffusion.T, (c.batch_size,), generator=gen)
        x0 = emb[ids[idx]]
        noise = torch.randn(x0.shape, generator=gen)
        x_t = diff.q_sample(x0, t, noise)
        pos_loss = pos.loss(x_t, t, pos_y[idx]).mean() / m.seq_len
        rows = idx.tolist()
        content_loss = content.train_loss(x_t, t, position_tags(content_tags, rows, m.seq_len, len(values))).mean()
        span, target = span_candidates([records[k] for k in rows], SPAN_LABELS, m.seq_len, gen)
        span_loss = spans.train_loss(x_t, t, span, target, boundary_tags[idx]).mean()
        opt.zero_grad(set_to_none=True)
        (pos_loss + content_loss + span_loss).backward()
        opt.step()
        bar.set_postfix(pos=f"{pos_loss.item():.3f}", content=f"{content_loss.item():.4f}", spans=f"{span_loss.item():.3f}")
        if (step + 1) % 100 == 0 or step + 1 == c.steps:
            log.append({"step": step + 1, "pos_loss": pos_loss.item(), "content_loss": content_loss.item(),
                        "span_loss": span_loss.item()})
        if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < c.steps:
            atomic_save({"config": cfg.to_dict(), "step": step + 1, "log": log, "opt": opt.state_dict(),
                         "gen": gen.get_state(), "rng": torch.get_rng_state(), "pos": pos.state_dict(),
                         "content": content.state_dict(), "spans": spans.state_dict()}, partial)
    classifiers = {"pos": (pos.eval(), tags), "content": (content.eval(), values), "spans": (spans.eval(), SPAN_LABELS)}
    heldout = data.load_split(data_dir, "heldout")
    accuracy = accuracy_by_band(classifiers, emb, heldout, tok, diff, tags, values, SPAN_LABELS, m.seq_len)
    print(json.dumps({"heldout_accuracy_by_t": accuracy}))
    state = {"config": cfg.to_dict(), "tags": tags, "values": values, "span_labels": SPAN_LABELS, "log": log,
             "accuracy": accuracy, "pos": pos.state_dict(), "content": content.state_dict(),
             "spans": spans.state_dict()}
    torch.save(state, out_dir / CONTROLS_FILE)
    (out_dir / "controls_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    partial.unlink(missing_ok=True)
    return log[-1]


def load_controls(path):
    """{control: (classifier in eval mode, labels)} and the config, from a controls.pt."""
    state = torch.load(path, weights_only=False)
    from .config import from_dict

    cfg = from_dict(state["config"])
    c, m = cfg.controls, cfg.model
    pos = PosClassifier(m.d, m.seq_len, len(state["tags"]), c.hidden, c.layers, c.heads)
    content = ContentClassifier(m.d, m.seq_len, len(state["values"]), c.hidden, c.layers, c.heads)
    spans = SpanClassifier(m.d, m.seq_len, len(state["span_labels"]), c.hidden, c.layers, c.heads)
    pos.load_state_dict(state["pos"])
    content.load_state_dict(state["content"])
    spans.load_state_dict(state["spans"])
    controls = {"pos": (pos.eval(), state["tags"]), "content": (content.eval(), state["values"]),
                "spans": (spans.eval(), state["span_labels"])}
    if "tree" in state:
        tree = TreeClassifier(m.d, m.seq_len, len(state["tree_labels"]), c.hidden, c.layers, c.heads)
        tree.load_state_dict(state["tree"])
        controls["tree"] = (tree.eval(), state["tree_labels"])
    return controls, cfg
