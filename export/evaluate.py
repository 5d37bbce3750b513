"""evaluate: drive the real `dlm` binary on control targets built from the held-out split.

Scored like the paper: POS = per-position exact match of the output's spaCy UPOS tags with
the target; content = the value appears in the output (family friendly: the phrase, or its
negation for "no"), reported per field too; length = exact word count; infill = every fixed word
kept in place; spans = the output's phrase spans (spans.py, from spaCy's dependency parse) contain
the target span. Fluency, next to the held-out references' own: SLOR and perplexity under a
pretrained LM nobody here trained (judge.py); lm-score = exp(mean token NLL) under our own
teacher LM (trained on our data: it rewards reproduced n-grams, so secondary); repeats = the
share of outputs with an immediately repeated word or a word 3-gram that occurs twice;
distinct-2 = distinct word bigrams over all (diversity). Every request goes through one
`dlm serve --stdio`. Targets and seeds are fixed by --seed, so two models are compared on the
same work. QUICK (n = 50 at 50 steps) is for a first look; SLOR needs >= 150 sentences.
"""
import json
import random
import statistics
import time
from pathlib import Path

import onnxruntime as ort
from dlm_client import Client, DlmError
from tokenizers import Tokenizer

from . import data, manifest as manifest_mod, progress
from .config import from_dict
from .controls import expressed
from .distill import distinct_n
from .errors import ExportError
from .judge import Judge, summary
from .teacher import lm_scores
from .tree import parse_tree, tree_score, tree_string

QUICK = {"n": 50, "steps": 50}
IN_FLIGHT = 16  # requests at the server at once: they share its batches
# an hour for a request and between requests (scoring a control's outputs takes a while: the
# stdio transport otherwise closes after --idle-timeout-ms, 60 s, without input)
SERVE_FLAGS = ("--queue", "64", "--timeout-ms", "3600000", "--idle-timeout-ms", "3600000")


def heldout_targets(m, tok, n, seed):
    """POS sequences, content pairs, lengths and infill templates, all from held-out sentences."""
    cfg = from_dict(m["training"]["config"])
    records = data.read_corpus(cfg.data.files, cfg.data.max_lines)
    _, heldout = data.split_by_mr(records, cfg.data.heldout_fraction, cfg.data.split_seed)
    rng = random.Random(seed)
    picked = rng.sample(heldout, min(n, len(heldout)))
    words = [data.words_of(tok, text) for _, _, text in picked]
    analysed = data.analyse(data.load_spacy(), words)
    tags = [pos for pos, _, _ in analysed]
    spans = [rng.choice(sp) for _, sp, _ in analysed if sp]
    tree_labels = set(m.get("controls", {}).get("tree", {}).get("labels", ()))
    trees = [tree_string(tree) for (_, _, tree), w in zip(analysed, words)
             if len(w) <= 40 and all(label in tree_labels for _, label in tree)]
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
        "tree": trees,
        "references": [text for _, _, text in picked],
        "none": list(range(n)),
    }


def span_of(target):
    i, j, label = target.split(",")
    return (int(i), int(j), label)


def pos_match(nlp_tags, target):
    target = target.split()
    return sum(a == b for a, b in zip(nlp_tags, target)) / len(target)


def evaluate(model_dir, dlm, steps=200, n=200, seed=0, guide_steps=None, only=None, request=None, judge=None):
    """Every control (or those in `only`) on its held-out targets, through one `dlm serve --stdio`;
    `request` holds extra fields for every request (e.g. {"block_repeats": false}). `judge`: a
    judge.Judge, None to load one, False to skip the pretrained judge (no SLOR)."""
    model_dir = Path(model_dir)
    if not Path(dlm).is_file():
        raise ExportError(f"{dlm}: dlm binary not found; run `cargo build --release` first")
    unknown = set(only or ()) - set(CHECKS)
    if unknown:
        raise ExportError(f"unknown controls {sorted(unknown)}; allowed: {', '.join(CHECKS)}")
    m = manifest_mod.load(model_dir)
    missing = sorted(({"pos", "content", "spans", "tree"} & set(only or CHECKS)) - set(m.get("controls", {})))
    if missing:
        raise ExportError(f"{model_dir}: no classifier for {missing} (python -m export controls, export)")
    tok = Tokenizer.from_file(str(model_dir / m["tokenizer"]["file"]))
    targets = heldout_targets(m, tok, n, seed)
    if judge is None:
        judge = Judge(training_references(m))
    teacher = next((g["file"] for g in m["graphs"] if g["role"] == "teacher"), None)
    teacher = ort.InferenceSession(str(model_dir / teacher)) if teacher else None
    fluency = lambda texts: {**fluency_of(judge, teacher, tok, texts, m["model"]["seq_len"]),  # noqa: E731
                             "distinct_2": distinct_n([data.words_of(tok, t) for t in texts], 2)}
    nlp = data.load_spacy()
    extra = {**({"guide_steps": guide_steps} if guide_steps is not None else {}), **(request or {})}
    names = [c for c in CHECKS if not only or c in only]
    results = {}
    with _serve(dlm, model_dir) as server, progress.bar(total=sum(len(targets[c]) for c in names),
                                                        desc=f"evaluate, {steps} steps", unit="sentence") as bar:
        precision = server.health().model.get("precision")  # what dlm's --precision (auto) loaded
        for name in names:
            fields, score = CHECKS[name]
            requests = [{"steps": steps, "seed": seed + i, **fields(t), **extra} for i, t in enumerate(targets[name])]
            start = time.perf_counter()
            outs = [g.results[0] for g in _answers(server, requests, bar)]
            seconds = time.perf_counter() - start
            texts = [o.text for o in outs]
            results[name] = {"n": len(texts), "repeats": statistics.mean(data.repeats(o.tokens) for o in outs),
                             **fluency(texts), "seconds_per_sentence": seconds / max(1, len(texts)),
                             "example": texts[0], "texts": texts}
            if score is not None:
                scores = score(nlp, outs, targets[name])
                results[name]["success"] = statistics.mean(scores)
                if name == "content":
                    results[name]["by_field"] = by_field(targets[name], scores)
                if name == "tree":
                    results[name].update(tree_summary(nlp, outs, targets[name]))
    references = targets["references"]
    results["references"] = {"n": len(references), "repeats": statistics.mean(
                                  data.repeats(data.words_of(tok, text)) for text in references),
                             **fluency(references), "texts": references}
    return {"steps": steps, "guide_steps": guide_steps, "seed": seed, "precision": precision, "request": request or {},
            "results": results}


def _serve(dlm, model_dir):
    """One `dlm serve --stdio` for every request of a run: the model loads once, and requests in
    flight share the server's batches (a seeded request's sentences do not depend on what it
    was batched with)."""
    try:
        return Client.spawn(dlm, model_dir, flags=SERVE_FLAGS)
    except DlmError as e:
        raise ExportError(f"dlm serve: {e}") from e


def _answers(server, requests, bar):
    """Every request's Generation in order, IN_FLIGHT at a time; ExportError naming the first
    request the server refused, or the server's stderr if it died."""
    try:
        return server.generate_many(requests, in_flight=IN_FLIGHT, progress=lambda i, g: bar.update(1))
    except DlmError as e:
        if e.request is not None:
            raise ExportError(f"dlm serve refused {json.dumps(e.request)}: {e}") from e
        raise ExportError(f"dlm serve: {e}") from e


def fluency_of(judge, teacher, tok, texts, seq_len):
    """The pretrained judge's mean SLOR and perplexity, and our teacher's lm-score (secondary)."""
    out = {}
    if judge:
        out.update(summary(judge.score(texts)))
    if teacher is not None:
        out["lm_score"] = statistics.mean(lm_scores(teacher, tok, texts, seq_len))
    return out


def training_references(m):
    """The training split's sentences (the judge's unigram counts; never the held-out ones)."""
    cfg = from_dict(m["training"]["config"])
    train, _ = data.split_by_mr(data.read_corpus(cfg.data.files, cfg.data.max_lines), cfg.data.heldout_fraction,
                                cfg.data.split_seed)
    return [text for _, _, text in train]


def _each(hit):
    """A scorer of a whole control's outputs from a scorer of one (output, target)."""
    return lambda nlp, outs, targets: [hit(o, t) for o, t in zip(outs, targets)]


def _pos(nlp, outs, targets):
    return [pos_match(tags, t) for tags, t in zip(data.tag_upos(nlp, [o.tokens for o in outs]), targets)]


def _tree_scores(nlp, outs, targets):
    parsed = data.analyse(nlp, [o.tokens for o in outs])
    return [tree_score(tree, parse_tree(t)) for (_, _, tree), t in zip(parsed, targets)]


def _tree(nlp, outs, targets):
    """Success of a tree: its LAS (head and label right, per word of the target)."""
    return [las for _, las, _ in _tree_scores(nlp, outs, targets)]


def tree_summary(nlp, outs, targets):
    """UAS, LAS and the exact-tree rate of the outputs' spaCy parses against their targets."""
    scores = _tree_scores(nlp, outs, targets)
    return {key: statistics.mean(s[k] for s in scores) for k, key in enumerate(("uas", "las", "exact"))}


def _spans(nlp, outs, targets):
    parsed = data.analyse(nlp, [o.tokens for o in outs])
    return [float(span_of(t) in spans) for (_, spans, _), t in zip(parsed, targets)]


CHECKS = {  # control -> (request fields of a target, success of each output (one spaCy pass) or None)
    "pos": (lambda t: {"pos": t}, _pos),
    "content": (lambda t: {"content": t}, _each(lambda out, t: float(expressed(t, out.text)))),
    "length": (lambda t: {"length": t}, _each(lambda out, t: float(len(out.tokens) == t))),
    "infill": (lambda t: {"infill": t}, _each(lambda out, t: float(all(
        w == "_" or (i < len(out.tokens) and out.tokens[i] == w) for i, w in enumerate(t.split()))))),
    "spans": (lambda t: {"span": t}, _spans),
    "tree": (lambda t: {"tree": t}, _tree),
    "none": (lambda t: {}, None),
}


def by_field(pairs, scores):
    """Content success per field: {field: [hits, n]}."""
    fields = {}
    for pair, hit in zip(pairs, scores):
        entry = fields.setdefault(pair.split("=", 1)[0], [0, 0])
        entry[0] += int(hit)
        entry[1] += 1
    return dict(sorted(fields.items()))


def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def _percent(share):
    return "-" if share is None else f"{100 * share:.1f} %"


def table(report):
    k = report.get("guide_steps")
    lines = [f"steps {report['steps']}, guidance steps K = {k if k is not None else 'manifest default'}"
             + (f", denoiser {report['precision']}" if report.get("precision") else "")
             + (f", request fields {report['request']}" if report.get("request") else ""),
             f"{'control':<11}{'n':>5}{'success':>9}{'repeats':>9}{'SLOR':>8}{'ppl':>8}{'dist-2':>8}"
             f"{'lm-score':>10}{'s/sent':>8}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<11}{r['n']:>5}{_cell(r.get('success'), '.3f'):>9}{r['repeats']:>9.3f}"
                     f"{_cell(r.get('slor'), '.3f'):>8}{_cell(r.get('perplexity'), '.1f'):>8}{r['distinct_2']:>8.3f}"
                     f"{_cell(r.get('lm_score'), '.2f'):>10}{_cell(r.get('seconds_per_sentence'), '.2f'):>8}")
    fields = report["results"].get("content", {}).get("by_field", {})
    if fields:
        lines.append("content by field: " + ", ".join(f"{f} {h}/{n}" for f, (h, n) in fields.items()))
    lines.append("SLOR: the pretrained judge (higher is better); ppl its perplexity; lm-score our own teacher's "
                 "(trained on our data: secondary); s/sent: wall time per sentence, 16 requests in flight")
    return "\n".join(lines)


def sweep(model_dir, dlm, budgets, guide_steps, n, seed=0, judge=None):
    """evaluate at every (budget, K); a markdown table for models/e2e/EVAL.md."""
    if judge is None:
        judge = Judge(training_references(manifest_mod.load(model_dir)))
    reports = [evaluate(model_dir, dlm, steps=b, n=n, seed=seed, guide_steps=k, judge=judge)
               for b in budgets for k in guide_steps]
    controls = ["pos", "content", "spans", "length", "infill", "none"]
    head = "| steps | K | " + " | ".join(f"{c} success / repeats / SLOR" for c in controls) + " | s/sentence (pos) |"
    rows = [head, "|" + "---|" * (len(controls) + 3)]
    for r in reports:
        res = r["results"]
        cells = [f"{_percent(res[c].get('success'))} / {_percent(res[c]['repeats'])} / {_cell(res[c].get('slor'), '.2f')}"
                 for c in controls]
        rows.append(f"| {r['steps']} | {r['guide_steps']} | " + " | ".join(cells) + f" | {res['pos']['seconds_per_sentence']:.2f} |")
    refs = reports[0]["results"]["references"]
    rows.append(f"\nHeld-out references: SLOR {_cell(refs.get('slor'), '.2f')}, repeats {refs['repeats'] * 100:.0f} % "
                f"(n = {refs['n']}).")
    return reports, "\n".join(rows)
