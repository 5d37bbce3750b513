"""A smoke run of `python -m export evaluate` against the real dlm binary and models/e2e."""
import math
from pathlib import Path

import pytest

from export.errors import ExportError
from export.controls import expressed as content_hit
from export.evaluate import evaluate, repeats, table

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


def test_repeats_are_an_immediate_repeat_or_a_repeated_trigram():
    assert repeats("The Mill is located located near Café Sicilia .".split())
    assert repeats("a coffee shop that is a coffee shop".split())
    assert not repeats("The Mill is a coffee shop near the river . It is a pub .".split())


def test_content_is_the_value_or_the_family_friendly_phrase_and_its_negation():
    assert content_hit("food=Italian", "Zizzi serves italian food .")
    assert not content_hit("near=Burger King", "It is near Café Brazil .")
    yes, no = "family friendly=yes", "family friendly=no"
    assert content_hit(yes, "The Eagle is a family - friendly pub .")
    assert content_hit(yes, "It is kid friendly .")
    assert not content_hit(yes, "It is not family - friendly .")
    assert content_hit(no, "The Mill is not a family - friendly place .")
    assert content_hit(no, "Alimentum is non family friendly .")
    assert not content_hit(no, "The Mill is family friendly and not cheap .")
    assert not content_hit(no, "It is located near the river .")  # "no" alone is not the negation
