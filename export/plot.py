"""plot: SVG charts (matplotlib, Agg backend) from what the pipeline already writes.

- `--train LOG`: the loss terms of a `train_log.jsonl` (export/train.py: a `start` event, then
  one record per `train.checkpoint_every` steps: step, loss_ema, the objective's terms, elapsed_s)
  by step, one panel per term (loss with its running mean).
- `--quality REPORT`: control success, fluency (the judge's SLOR) and ms per sentence by step
  budget, from `bench --quality N --json-out` (its `quality` rows: dlm's warm p50 per sentence)
  or `evaluate --json-out` (one report, or the list of a `--budgets` sweep: wall time per
  sentence with 16 requests in flight).

Text stays text in the SVG (searchable; the tests look for the series' names), and the file
carries no date, so the same data draws the same file.
"""
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after the backend is chosen)

from .errors import ExportError  # noqa: E402

STYLE = {"svg.fonttype": "none", "svg.hashsalt": "dlm", "axes.grid": True, "grid.alpha": 0.3, "font.size": 9}
NOT_TERMS = ("step", "elapsed_s")


def _save(fig, out, caption):
    if caption:
        fig.text(0.01, 0, caption, fontsize=7, color="0.3", va="top", wrap=True)  # below; the tight box takes it in
    out = Path(out)
    if out.suffix.lower() != ".svg":
        raise ExportError(f"{out}: the chart is SVG; name the file *.svg")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="svg", metadata={"Date": None}, bbox_inches="tight")
    except OSError as e:
        raise ExportError(f"{out}: cannot write the chart ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out


def _records(path, what):
    """The JSON objects of a JSON-lines file, with their line numbers."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: {what} not found")
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ExportError(f"{path}:{no}: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ExportError(f"{path}:{no}: expected a JSON object, got {line.strip()[:60]}")
        out.append((no, record))
    return out


def read_train_log(path):
    """(runs, start): the step records of each run (a `start` event, or a step not after the
    last, begins another) and the first start event ({} without one)."""
    runs, start = [[]], {}
    for no, record in _records(path, "training log (WORKDIR/train/train_log.jsonl, from python -m export train)"):
        if record.get("event") == "start":
            start = start or record
            runs.append([])
            continue
        if "event" in record:
            raise ExportError(f"{path}:{no}: unknown event {record['event']!r}; the log has 'start' events only")
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ExportError(f"{path}:{no}: 'step' must be a count (an integer >= 0), got {step!r}")
        bad = [k for k, v in record.items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            raise ExportError(f"{path}:{no}: {bad} not numbers; a step record holds step, elapsed_s and loss terms")
        if runs[-1] and step <= runs[-1][-1]["step"]:
            runs.append([])
        runs[-1].append(record)
    runs = [r for r in runs if r]
    if not runs:
        raise ExportError(f"{path}: no step records yet (one is written every train.checkpoint_every steps)")
    return runs, start


def plot_train(path, out, title=None, caption=None):
    """The loss terms of a train_log.jsonl by step, one panel per term; several runs in one log
    (started again from step 0) are drawn apart as run 1, run 2, ..."""
    runs, start = read_train_log(path)
    terms = [k for k in dict.fromkeys(k for run in runs for r in run for k in r) if k not in NOT_TERMS]
    panels = ["loss"] + [t for t in terms if t not in ("loss", "loss_ema")]
    if title is None:
        about = [f"{start['parameters']:,} parameters" if "parameters" in start else "",
                 f"global batch {start['global_batch']}" if "global_batch" in start else ""]
        title = "Diffusion-LM training by step" + (f" ({', '.join(a for a in about if a)})" if any(about) else "")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(7, 1.2 + 1.8 * len(panels)), squeeze=False,
                                 layout="constrained")
        for ax, panel in zip(axes[:, 0], panels):
            series = ("loss", "loss_ema") if panel == "loss" else (panel,)
            values = []
            for k, run in enumerate(runs):
                for term in series:
                    points = [(r["step"], r[term]) for r in run if term in r]
                    if not points:
                        continue
                    label = term + (" (running mean)" if term == "loss_ema" else "")
                    label += f", run {k + 1}" if len(runs) > 1 else ""
                    ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
                    values += [v for _, v in points]
            positive = [v for v in values if v > 0]
            if positive and len(positive) == len(values) and max(positive) > 10 * min(positive):
                ax.set_yscale("log")
            ax.set_ylabel(panel)
            ax.legend(loc="upper right", fontsize=7)
        axes[-1, 0].set_xlabel("training step")
        fig.suptitle(title)
        return _save(fig, out, caption)


def quality_points(path):
    """Points by budget from a bench or evaluate JSON: [{steps, k, success, slor, ms}] (ms per
    sentence by what was timed) and the note on how ms was measured."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: report not found (bench --quality N --json-out F, or evaluate --json-out F)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(doc, dict) and "quality" in doc:
        if not isinstance(doc["quality"], list):
            raise ExportError(f"{path}: its 'quality' is not the rows of bench --quality; rerun bench --quality N")
        rows = _checked_rows(path, doc["quality"], ("steps", "guide_steps", "success", "slor", "ms_per_sentence"))
        points = []
        for i, r in enumerate(rows):
            ms = _numbers(path, i, "ms_per_sentence", r["ms_per_sentence"])
            points.append({"steps": r["steps"], "k": r["guide_steps"],
                           "success": _numbers(path, i, "success", r["success"]),
                           "slor": _numbers(path, i, "slor", r["slor"]),
                           "ms": {("unguided" if name == "none" else f"{name}-guided, K = {r['guide_steps']}"): v
                                  for name, v in ms.items()}})
        return points, "dlm's warm p50 per sentence, alone (dlm profile)"
    reports = doc if isinstance(doc, list) else [doc]
    points = []
    for i, r in enumerate(_checked_rows(path, reports, ("steps", "guide_steps", "results"))):
        res = r["results"]
        if not isinstance(res, dict) or not all(isinstance(v, dict) for v in res.values()):
            raise ExportError(f"{path}: row {i}: 'results' must map each control to its figures")
        pick = lambda key: _numbers(path, i, key, {c: v.get(key) for c, v in res.items()})  # noqa: E731
        ms = {c: 1e3 * s for c, s in pick("seconds_per_sentence").items() if c in ("none", "pos")}
        points.append({"steps": r["steps"], "k": r["guide_steps"], "ms": ms, "success": pick("success"),
                       "slor": pick("slor")})
    return points, "wall time per sentence, 16 requests in flight (evaluate)"


def _numbers(path, i, field, values):
    """`values` ({name: number or None}) without the Nones; ExportError on anything else."""
    if not isinstance(values, dict):
        raise ExportError(f"{path}: row {i}: '{field}' must map names to numbers, got {values!r:.60}")
    bad = {k: v for k, v in values.items()
           if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v))}
    if bad:
        raise ExportError(f"{path}: row {i}: '{field}' has values that are no finite numbers: {bad}")
    return {k: v for k, v in values.items() if v is not None}


def _checked_rows(path, rows, keys):
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ExportError(f"{path}: expected bench --json-out with quality rows, or evaluate --json-out (a report or a "
                          "list of them)")
    for i, r in enumerate(rows):
        missing = [k for k in keys if k not in r]
        if missing:
            raise ExportError(f"{path}: row {i} has no {missing}; expected bench --quality or evaluate output")
        if not isinstance(r["steps"], int) or isinstance(r["steps"], bool) or r["steps"] < 1:
            raise ExportError(f"{path}: row {i}: steps must be a budget >= 1, got {r['steps']!r}")
    return rows


def _lines(ax, points, field, scale, colors):
    """One line per name in the points' `field` (and per K when the points hold several, dotted
    for all but the last), a name the same colour in every panel."""
    ks = sorted({p["k"] for p in points}, key=str)
    names = list(dict.fromkeys(n for p in points for n in p[field]))
    for name in names:
        colors.setdefault(name, "0.4" if name == "references" else f"C{len(colors) % 10}")
        for k in ks:
            pts = sorted((p["steps"], scale * p[field][name]) for p in points if p["k"] == k and name in p[field])
            if pts:
                style = "--" if name == "references" else ":" if k != ks[-1] else "-"
                label = name + (f", K = {k}" if len(ks) > 1 else "")
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label, color=colors[name], linestyle=style)
    return names


def plot_quality(path, out, title=None, caption=None):
    """Success per control (%), SLOR (when judged) and ms per sentence by step budget, stacked."""
    points, timing = quality_points(path)
    panels = [("success", "control success (%)", 100.0)]
    if any(p["slor"] for p in points):
        panels.append(("slor", "fluency: SLOR\n(higher is better)", 1.0))
    if any(p["ms"] for p in points):
        panels.append(("ms", "ms per sentence", 1.0))
    budgets, colors = sorted({p["steps"] for p in points}), {}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=(7, 1.2 + 2.2 * len(panels)), squeeze=False,
                                 layout="constrained")
        for ax, (field, label, scale) in zip(axes[:, 0], panels):
            if not _lines(ax, points, field, scale, colors):
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", color="0.5")
            ax.set_ylabel(label)
            if field == "success":
                ax.set_ylim(0, 105)
            if field == "ms":
                ax.set_yscale("log")
                ax.set_title(timing, fontsize=8, loc="left")
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7)
        bottom = axes[-1, 0]
        if len(budgets) > 1 and budgets[-1] / budgets[0] >= 10:
            bottom.set_xscale("log")
        bottom.set_xticks(budgets, [str(b) for b in budgets])
        bottom.minorticks_off()
        bottom.set_xlabel("denoising steps (budget)")
        fig.suptitle(title or "dlm: control success, fluency and time per sentence by step budget")
        return _save(fig, out, caption)
