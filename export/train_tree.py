"""controls (tree): train the syntax-tree classifier on noisy latents of a trained Diffusion-LM and
add it to the controls.pt beside the other classifiers (which it leaves as they are)."""
import json
from pathlib import Path

import torch
from tqdm import tqdm

from . import data
from .atomic import atomic_save
from .control_eval import BANDS
from .errors import ExportError
from .schedule import Diffusion
from .train import CHECKPOINT, load_ema
from .tree import ROOT, TreeClassifier, attachment, tree_targets

TREE_PARTIAL = "tree.partial.pt"  # resumable state of an unfinished run


def tree_labels(records):
    return sorted({label for r in records for _, label in r["tree"]} - {ROOT}) + [ROOT]


@torch.no_grad()
def tree_accuracy_by_band(clf, emb, records, tok, diff, labels, seq_len, seed=0):
    """{"uas": {"lo-hi": ...}, "las": {...}} on held-out latents, one random t per sentence per band."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([data.encode_ids(tok, r["words"], seq_len) for r in records])
    target = tree_targets([r["tree"] for r in records], labels, seq_len)
    out = {"uas": {}, "las": {}}
    for lo, hi in BANDS:
        t = torch.randint(lo, hi, (len(records),), generator=gen)
        x_t = diff.q_sample(emb[ids], t, torch.randn(len(records), seq_len, emb.shape[1], generator=gen))
        uas, las = attachment(*clf.predict(x_t, t), target)
        out["uas"][f"{lo}-{hi}"], out["las"][f"{lo}-{hi}"] = uas, las
    return out


def train_tree(cfg, data_dir, train_dir, out_dir):
    """Train the tree classifier (cfg.controls' size, steps and lr) and write it into
    out_dir/controls.pt; returns its last log record and held-out UAS/LAS by band of t."""
    from .train_controls import CONTROLS_FILE

    ckpt, controls = Path(train_dir) / CHECKPOINT, Path(out_dir) / CONTROLS_FILE
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no checkpoint; run `python -m export train` first")
    if not controls.is_file():
        raise ExportError(f"{controls}: train the other classifiers first (python -m export controls)")
    records = data.load_split(data_dir, "train")
    if records and "tree" not in records[0]:
        raise ExportError(f"{data_dir}: prepared without dependency trees; run `python -m export prepare` again")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    emb = load_ema(ckpt, tok.get_vocab_size())[0].word_emb.weight.detach()
    c, m = cfg.controls, cfg.model
    labels = tree_labels(records)
    ids = torch.tensor([data.encode_ids(tok, r["words"], m.seq_len) for r in records])
    target = tree_targets([r["tree"] for r in records], labels, m.seq_len)
    torch.manual_seed(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    clf = TreeClassifier(m.d, m.seq_len, len(labels), c.hidden, c.layers, c.heads)
    diff = Diffusion.full(cfg.diffusion.schedule, cfg.diffusion.T)
    opt = torch.optim.AdamW(clf.parameters(), lr=c.lr)
    partial, log, start = Path(out_dir) / TREE_PARTIAL, [], 0
    if partial.is_file():
        state = torch.load(partial, weights_only=False)
        if state["config"] == cfg.to_dict():
            clf.load_state_dict(state["tree"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])
            log, start = state["log"], state["step"]
            print(f"controls (tree): resuming at step {start} from {partial}")
    steps = c.tree_steps or c.steps
    bar = tqdm(range(start, steps), desc="controls (tree)", mininterval=2.0, initial=start, total=steps)
    for step in bar:
        idx = torch.randint(0, len(ids), (c.batch_size,), generator=gen)
        t = torch.randint(0, cfg.diffusion.T, (c.batch_size,), generator=gen)
        x0 = emb[ids[idx]]
        x_t = diff.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
        loss = clf.loss(x_t, t, target[idx]).mean() / m.seq_len
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(tree=f"{loss.item():.3f}")
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log.append({"step": step + 1, "tree_loss": loss.item()})
        if (step + 1) % 500 == 0 and step + 1 < steps:
            atomic_save({"config": cfg.to_dict(), "step": step + 1, "log": log, "opt": opt.state_dict(),
                         "gen": gen.get_state(), "rng": torch.get_rng_state(), "tree": clf.state_dict()}, partial)
    clf.eval()
    accuracy = tree_accuracy_by_band(clf, emb, data.load_split(data_dir, "heldout"), tok, diff, labels, m.seq_len)
    print(json.dumps({"tree_heldout_by_t": accuracy}))
    state = torch.load(controls, weights_only=False)
    state.update({"tree": clf.state_dict(), "tree_labels": labels, "tree_log": log})
    state.setdefault("accuracy", {}).update({"tree uas": accuracy["uas"], "tree las": accuracy["las"]})
    atomic_save(state, controls)
    partial.unlink(missing_ok=True)
    return {**log[-1], "heldout": accuracy}
