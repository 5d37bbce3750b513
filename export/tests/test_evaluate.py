"""A smoke run of `python -m export evaluate` against the real dlm binary and models/e2e."""
import json
import math
import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from export.errors import ExportError
from export.controls import expressed as content_hit
from export.data import repeats
from export.evaluate import evaluate, table
from export.teacher import lm_scores

ROOT = Path(__file__).resolve().parents[2]
DLM = ROOT / "target" / "release" / "dlm"


def test_evaluate_scores_every_control_through_dlm(judge):
    report = evaluate(ROOT / "models" / "e2e", DLM, steps=5, n=4, seed=0, judge=judge)
    results = report["results"]
    assert set(results) == {"pos", "content", "length", "infill", "spans", "tree", "none", "references"}
    # held positions come out exactly whatever the budget
    assert results["length"]["success"] == 1.0 and results["infill"]["success"] == 1.0
    assert all(len(t.split()) == n for t, n in zip(results["length"]["texts"], (10, 17, 24, 31)))
    assert "success" not in results["none"]  # nothing to succeed at: no made-up 100 %
    # the judge scored what was generated: the same texts score the same again
    texts = results["none"]["texts"]
    assert results["none"]["slor"] == pytest.approx(sum(s["slor"] for s in judge.score(texts)) / len(texts))
    # five denoising steps write worse English than people do
    assert results["none"]["slor"] < results["references"]["slor"]
    assert all(results[c]["n"] == 4 for c in ("content", "length", "none"))
    assert results["pos"]["success"] > 0.0  # a POS-guided sentence shares some tags with its target
    assert 0.0 <= results["tree"]["las"] <= results["tree"]["uas"] <= 1.0 and results["tree"]["success"] == results["tree"]["las"]
    assert "SLOR" in table(report)


def test_evaluate_passes_request_fields_to_the_server(judge):
    kw = dict(steps=5, n=4, seed=0, judge=False, only=["none"])
    blocked = evaluate(ROOT / "models" / "e2e", DLM, **kw)["results"]["none"]
    allowed = evaluate(ROOT / "models" / "e2e", DLM, request={"block_repeats": False}, **kw)["results"]["none"]
    assert blocked["repeats"] == 0.0  # the runtime blocks repeats by default
    assert allowed["repeats"] > 0.0  # five steps repeat words once nothing blocks them
    assert "slor" not in blocked


def test_evaluate_names_a_request_field_the_server_refuses():
    with pytest.raises(ExportError, match="no_such_field"):
        evaluate(ROOT / "models" / "e2e", DLM, steps=5, n=1, judge=False, only=["none"], request={"no_such_field": 1})


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


def test_dlm_reranks_by_the_teachers_lm_score_as_python_computes_it():
    """dlm's rerank by fluency reads teacher.onnx: its NLL of the chosen sentence is log lm-score."""
    model = ROOT / "models" / "e2e"
    out = subprocess.run([str(DLM), "generate", "--model", str(model), "--steps", "5", "--num", "3", "--rerank", "2",
                          "--seed", "4", "--json"], check=True, capture_output=True, text=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    session = ort.InferenceSession(str(model / "teacher.onnx"))
    scores = lm_scores(session, Tokenizer.from_file(str(model / "tokenizer.json")), [g["text"] for g in lines], 64)
    assert len(lines) == 3
    for g, score in zip(lines, scores):
        assert g["lm_nll"] == pytest.approx(math.log(score), abs=1e-4), g["text"]
