"""blind: the reading protocol that is the acceptance figure for fluency.

`make` draws sentences from `evaluate --json-out` reports (each control's outputs and the
held-out references), detokenizes them all alike, shuffles them and writes two files:
`sentences.txt` (`N<TAB>sentence`, all a reader gets, with RUBRIC) and `key.json` (which line
came from where, for `score` alone). Each reader writes `N<TAB>grade` per line:

    2 fluent   1 one small slip   0 broken (ungrammatical, garbled, missing words,
                                           contradictory, unfinished)

`score` prints the broken share (grade 0) per source and reader, the mean grade, and the
readers' agreement on "broken" (and Cohen's kappa).
"""
import json
import random
from collections import defaultdict
from pathlib import Path

from .errors import ExportError
from .judge import detokenize

RUBRIC = """You will read restaurant descriptions, one per line, each with a number. Some were written
by people, some by a machine; you are not told which, and it does not matter. Grade each line for
fluency as English, not for content or style:

  2 = fluent: a native speaker could have written it.
  1 = one small slip (a missing article, an odd word choice, a small agreement error), otherwise fine.
  0 = broken: ungrammatical, garbled, missing words, two values fused ("Italian Japanese food"),
      contradictory, unfinished, or stray words.

Write one line per sentence: the number, a tab, the grade (e.g. "17\t2"). Grade every line,
independently of the others; do not look for patterns between lines.
"""


def make(sources, out_dir, seed=0):
    """sources: [(label, report.json, control, count)]; control "references" takes the report's
    references. Returns the number of lines per label."""
    lines = []
    for label, path, control, count in sources:
        report = json.loads(Path(path).read_text())
        try:
            texts = report["results"][control]["texts"]
        except KeyError:
            raise ExportError(f"{path}: no texts for {control!r} (run evaluate with --json-out)") from None
        if len(texts) < count:
            raise ExportError(f"{path}: {control} has {len(texts)} texts, {count} asked for")
        lines += [(label, detokenize(t)) for t in random.Random(f"{seed}-{label}").sample(texts, count)]
    random.Random(seed).shuffle(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sentences.txt").write_text("".join(f"{i + 1}\t{t}\n" for i, (_, t) in enumerate(lines)), encoding="utf-8")
    (out / "rubric.txt").write_text(RUBRIC)
    (out / "key.json").write_text(json.dumps({str(i + 1): label for i, (label, _) in enumerate(lines)}, indent=1))
    counts = defaultdict(int)
    for label, _ in lines:
        counts[label] += 1
    return dict(counts)


def read_grades(path, key):
    grades = {}
    for n, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split()
        if len(parts) != 2 or parts[0] not in key or parts[1] not in ("0", "1", "2"):
            raise ExportError(f"{path}:{n}: expected 'N<TAB>grade' with N a line of the file and grade 0, 1 or 2: {raw!r}")
        grades[parts[0]] = int(parts[1])
    missing = sorted(set(key) - set(grades), key=int)
    if missing:
        raise ExportError(f"{path}: {len(missing)} lines ungraded (first: {missing[:5]})")
    return grades


def score(key_path, grade_paths):
    """{label: {n, broken: [share per reader], mean_grade: [per reader]}} and the agreement."""
    key = json.loads(Path(key_path).read_text())
    readers = [read_grades(p, key) for p in grade_paths]
    by_label = defaultdict(list)
    for line, label in key.items():
        by_label[label].append(line)
    table = {}
    for label, lines in sorted(by_label.items()):
        table[label] = {"n": len(lines),
                        "broken": [sum(r[x] == 0 for x in lines) / len(lines) for r in readers],
                        "mean_grade": [sum(r[x] for x in lines) / len(lines) for r in readers]}
    agreement = None
    if len(readers) == 2:
        a, b = readers
        same = sum((a[x] == 0) == (b[x] == 0) for x in key) / len(key)
        pa, pb = (sum(r[x] == 0 for x in key) / len(key) for r in readers)
        chance = pa * pb + (1 - pa) * (1 - pb)
        agreement = {"broken_agreement": same, "kappa": (same - chance) / (1 - chance) if chance < 1 else 1.0}
    return {"sources": table, "agreement": agreement}


def markdown(result):
    rows = ["| source | n | broken (reader A / B) | mean grade (A / B) |", "|---|---|---|---|"]
    for label, r in result["sources"].items():
        broken = " / ".join(f"{100 * b:.0f} %" for b in r["broken"])
        grade = " / ".join(f"{g:.2f}" for g in r["mean_grade"])
        rows.append(f"| {label} | {r['n']} | {broken} | {grade} |")
    if result["agreement"]:
        ag = result["agreement"]
        rows.append(f"\nReaders agree on broken / not broken for {100 * ag['broken_agreement']:.0f} % of lines "
                    f"(Cohen's kappa {ag['kappa']:.2f}).")
    return "\n".join(rows)
