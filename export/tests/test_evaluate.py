"""A smoke run of `python -m export evaluate` against the real dlm binary and models/e2e."""
import math
from pathlib import Path

import pytest

from export.errors import ExportError
from export.evaluate import evaluate, table

ROOT = Path(__file__).resolve().parents[2]
DLM = ROOT / "target" / "release" / "dlm"


def test_evaluate_scores_every_control_through_dlm():
    report = evaluate(ROOT / "models" / "e2e", DLM, steps=5, n=4, seed=0)
    results = report["results"]
    assert set(results) == {"pos", "content", "length", "infill", "spans", "none", "references"}
    # held positions come out exactly whatever the budget
    assert results["length"]["success"] == 1.0 and results["infill"]["success"] == 1.0
    for r in results.values():
        assert math.isfinite(r["lm_score"]) and r["lm_score"] > 1.0
    assert all(results[c]["n"] == 4 for c in ("content", "length", "none"))
    assert results["pos"]["success"] > 0.0  # a POS-guided sentence shares some tags with its target
    assert "lm-score" in table(report)


def test_evaluate_needs_the_binary(tmp_path):
    with pytest.raises(ExportError, match="cargo build --release"):
        evaluate(ROOT / "models" / "e2e", tmp_path / "dlm", steps=5, n=1)
