"""The pretrained fluency judge: detokenization, SLOR's direction, and a clear error when it is absent."""
import importlib.util

import pytest

from export import judge as judge_mod
from export.judge import JudgeError, detokenize, summary


def test_detokenize_joins_e2e_spaced_punctuation():
    assert detokenize("The Eagle , a family - friendly pub near Café Brazil , costs £ 20 - 25 .") == \
        "The Eagle, a family-friendly pub near Café Brazil, costs £20-25."
    assert detokenize("It 's cheap ; it is  near the river !") == "It's cheap; it is near the river!"


def test_slor_prefers_the_sentence_to_its_broken_versions(judge):
    fluent = "The Eagle is a family - friendly coffee shop near Burger King in the city centre ."
    broken = ["The Eagle is a family - friendly near coffee shop in Burger King the city centre .",  # words swapped
              "The Eagle is a - friendly coffee shop near in the city centre .",  # words missing
              "centre city the in King Burger near shop coffee friendly - family a is Eagle The ."]  # reversed
    scores = judge.score([fluent, *broken])
    assert all(s["slor"] < scores[0]["slor"] for s in scores[1:]), scores
    assert all(s["perplexity"] > scores[0]["perplexity"] for s in scores[1:]), scores
    assert scores[0]["tokens"] == len(judge.tok(detokenize(fluent), add_special_tokens=False)["input_ids"])


def test_a_batch_scores_as_its_sentences_alone(judge):
    texts = ["Zizzi is a cheap pub .", "There is an Italian restaurant called The Mill near the river in the city centre ."]
    together = judge.score(texts)
    alone = [judge.score([t])[0] for t in texts]
    for a, b in zip(together, alone):
        assert a["slor"] == pytest.approx(b["slor"], abs=1e-4)


def test_empty_texts_are_counted_not_scored(judge):
    records = judge.score(["", "The Mill is a pub ."])
    assert records[0] is None and records[1]["slor"] is not None
    assert summary(records)["unscored"] == 1


def test_a_missing_judge_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(JudgeError, match="scripts/setup.sh"):
        judge_mod.gguf_path()
