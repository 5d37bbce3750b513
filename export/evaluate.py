"""evaluate: drive the real `dlm` binary on control targets built from the held-out split.

Scored like the paper: POS = per-position exact match of the output's spaCy UPOS tags with
the target; content = the value appears in the output (family friendly: the phrase, or its
negation for "no"), reported per field too; length = exact word count; infill = every fixed word
kept in place; spans = the output's phrase spans (spans.py, from spaCy's dependency parse) contain
the target span. Fluency: lm-score = exp(mean token NLL) under the teacher LM (lower is better),
next to the held-out references' own; repeats = the share of outputs with an immediately
repeated word or a word 3-gram that occurs twice. Targets and seeds are fixed by --seed, so two
models are compared on the same work. QUICK (n = 50 at 50 steps) is the setting for ablations.
"""
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from . import data, manifest as manifest_mod
from .config import from_dict
from .controls import expressed
from .errors import ExportError
from .teacher import lm_scores

QUICK = {"n": 50, "steps": 50}
def repeats(tokens):
    """An immediately repeated word, or a word 3-gram that occurs twice."""
    if any(a == b for a, b in zip(tokens, tokens[1:])):
        return True
    grams = list(zip(tokens, tokens[1:], tokens[2:]))
    return len(set(grams)) < len(grams)


def heldout_targets(m, tok, n, seed):
    """POS sequences, content pairs, lengths and infill templates, all from held-out sentences."""
    cfg = from_dict(m["training"]["config"])
    records = data.read_corpus(cfg.data.files, cfg.data.max_lines)
    _, heldout = data.split_by_mr(records, cfg.data.heldout_fraction, cfg.data.split_seed)
    rng = random.Random(seed)
    picked = rng.sample(heldout, min(n, len(heldout)))
    words = [data.words_of(tok, text) for _, _, text in picked]
    analysed = data.analyse(data.load_spacy(), words)
    tags = [pos for pos, _ in analysed]
    spans = [rng.choice(sp) for _, sp in analysed if sp]
    labels = set(m.get("controls", {}).get("content", {}).get("labels", ()))
    content = []  # one pair of each held-out MR, every field (name included) equally likely
    for _, pairs, _ in picked:
        options = [f"{f}={v}" for f, v in pairs if f"{f}={v}" in labels]
        if options:
            content.append(rng.choice(options))
    vocab = tok.get_vocab()
    infill = []  # the middle half blanked; out-of-vocabulary words are blanks too
    for ws in words[: max(1, n // 4)]:
        lo, hi = len(ws) // 4, max(len(ws) // 4 + 1, 3 * len(ws) // 4)
        infill.append(" ".join("_" if lo <= i < hi or w not in vocab else w for i, w in enumerate(ws)))
    return {
        "pos": [" ".join(t) for t, w in zip(tags, words) if len(w) <= 40],
        "content": content,
        "length": [10 + (i * 7) % 31 for i in range(n)],
        "infill": infill,
        "spans": [f"{i},{j},{label}" for i, j, label in spans],
        "references": [text for _, _, text in picked],
    }


def run_dlm(dlm, model_dir, steps, seed, flags):
    cmd = [str(dlm), "generate", "--model", str(model_dir), "--steps", str(steps), "--seed", str(seed), "--json", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise ExportError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout.splitlines()[0])


def span_of(target):
    i, j, label = target.split(",")
    return (int(i), int(j), label)


def pos_match(nlp_tags, target):
    target = target.split()
    return sum(a == b for a, b in zip(nlp_tags, target)) / len(target)


def evaluate(model_dir, dlm, steps=200, n=200, seed=0, guide_steps=None, only=None, dlm_args=()):
    """Every control (or those in `only`) on its held-out targets; `dlm_args` go to every dlm run."""
    model_dir = Path(model_dir)
    if not Path(dlm).is_file():
        raise ExportError(f"{dlm}: dlm binary not found; run `cargo build --release` first")
    m = manifest_mod.load(model_dir)
    guided = {"pos", "content", "spans"} & set(only or ("pos", "content", "spans"))
    missing = sorted(guided - set(m.get("controls", {})))
    if missing or not any(g["role"] == "teacher" for g in m["graphs"]):
        raise ExportError(f"{model_dir}: needs a teacher LM and the controls {missing or 'asked for'} "
                          "(python -m export controls, teacher, export)")
    tok = Tokenizer.from_file(str(model_dir / m["tokenizer"]["file"]))
    teacher = ort.InferenceSession(str(model_dir / next(g["file"] for g in m["graphs"] if g["role"] == "teacher")))
    seq_len = m["model"]["seq_len"]
    targets = heldout_targets(m, tok, n, seed)
    nlp = data.load_spacy()
    results = {}
    checks = {
        "pos": (lambda t: ["--pos", t], lambda out, t: pos_match(data.tag_upos(nlp, [out["tokens"]])[0], t)),
        "content": (lambda t: ["--content", t], lambda out, t: float(expressed(t, out["text"]))),
        "length": (lambda t: ["--length", str(t)], lambda out, t: float(len(out["tokens"]) == t)),
        "infill": (lambda t: ["--infill", t], lambda out, t: float(all(
            w == "_" or (i < len(out["tokens"]) and out["tokens"][i] == w) for i, w in enumerate(t.split())))),
        "spans": (lambda t: ["--span", t], lambda out, t: float(span_of(t) in data.analyse(nlp, [out["tokens"]])[0][1])),
        "none": (lambda t: [], lambda out, t: 1.0),
    }
    targets["none"] = list(range(n))
    extra = (["--guide-steps", str(guide_steps)] if guide_steps is not None else []) + list(dlm_args)
    unknown = set(only or ()) - set(checks)
    if unknown:
        raise ExportError(f"unknown controls {sorted(unknown)}; allowed: {', '.join(checks)}")
    for name, (flags, score) in checks.items():
        if only and name not in only:
            continue
        texts, scores, seconds, repeated = [], [], [], []
        for i, target in enumerate(targets[name]):
            start = time.perf_counter()
            out = run_dlm(dlm, model_dir, steps, seed + i, flags(target) + extra)
            seconds.append(time.perf_counter() - start)
            texts.append(out["text"])
            scores.append(score(out, target))
            repeated.append(repeats(out["tokens"]))
        results[name] = {"n": len(texts), "success": statistics.mean(scores), "repeats": statistics.mean(repeated),
                         "lm_score": statistics.mean(lm_scores(teacher, tok, texts, seq_len)),
                         "seconds_per_sentence": statistics.mean(seconds), "example": texts[0]}
        if name == "content":
            results[name]["by_field"] = by_field(targets[name], scores)
    references = targets["references"]
    results["references"] = {"n": len(references), "repeats": statistics.mean(
                                  repeats(data.words_of(tok, text)) for text in references),
                              "lm_score": statistics.mean(lm_scores(teacher, tok, references, seq_len))}
    return {"steps": steps, "guide_steps": guide_steps, "seed": seed, "results": results}


def by_field(pairs, scores):
    """Content success per field: {field: [hits, n]}."""
    fields = {}
    for pair, hit in zip(pairs, scores):
        entry = fields.setdefault(pair.split("=", 1)[0], [0, 0])
        entry[0] += int(hit)
        entry[1] += 1
    return dict(sorted(fields.items()))


def table(report):
    k = report.get("guide_steps")
    lines = [f"steps {report['steps']}, guidance steps K = {k if k is not None else 'manifest default'}",
             f"{'control':<11}{'n':>5}{'success':>9}{'repeats':>9}{'lm-score':>10}{'s/sent':>8}"]
    for name, r in report["results"].items():
        success = f"{r['success']:.3f}" if "success" in r else "-"
        secs = f"{r['seconds_per_sentence']:.2f}" if "seconds_per_sentence" in r else "-"
        lines.append(f"{name:<11}{r['n']:>5}{success:>9}{r['repeats']:>9.3f}{r['lm_score']:>10.2f}{secs:>8}")
    fields = report["results"].get("content", {}).get("by_field", {})
    if fields:
        lines.append("content by field: " + ", ".join(f"{f} {h}/{n}" for f, (h, n) in fields.items()))
    return "\n".join(lines)


def sweep(model_dir, dlm, budgets, guide_steps, n, seed=0):
    """evaluate at every (budget, K); a markdown table for models/e2e/EVAL.md."""
    reports = [evaluate(model_dir, dlm, steps=b, n=n, seed=seed, guide_steps=k) for b in budgets for k in guide_steps]
    controls = ["pos", "content", "spans", "length", "infill", "none"]
    head = "| steps | K | " + " | ".join(f"{c} success / repeats / lm-score" for c in controls) + " | s/sentence (pos) |"
    rows = [head, "|" + "---|" * (len(controls) + 3)]
    for r in reports:
        res = r["results"]
        cells = [f"{res[c]['success'] * 100:.1f} % / {res[c]['repeats'] * 100:.0f} % / {res[c]['lm_score']:.2f}"
                 for c in controls]
        rows.append(f"| {r['steps']} | {r['guide_steps']} | " + " | ".join(cells) + f" | {res['pos']['seconds_per_sentence']:.2f} |")
    refs = reports[0]["results"]["references"]
    rows.append(f"\nHeld-out references: lm-score {refs['lm_score']:.2f}, repeats {refs['repeats'] * 100:.0f} % "
                f"(n = {refs['n']}).")
    return reports, "\n".join(rows)
