"""The blind reading's files and scoring: readers see only shuffled, detokenized sentences."""
import json

import pytest

from export import blind
from export.errors import ExportError


def _report(tmp_path, name, outputs, references):
    path = tmp_path / name
    path.write_text(json.dumps({"results": {"none": {"texts": outputs}, "references": {"texts": references}}}))
    return path


def test_make_shuffles_detokenized_lines_and_keeps_the_key_apart(tmp_path):
    rep = _report(tmp_path, "r.json", [f"The Mill , number {i} ." for i in range(10)],
                  [f"Zizzi is family - friendly {i} ." for i in range(10)])
    counts = blind.make([("dlm", rep, "none", 6), ("refs", rep, "references", 4)], tmp_path / "b", seed=3)
    assert counts == {"dlm": 6, "refs": 4}
    lines = (tmp_path / "b" / "sentences.txt").read_text().splitlines()
    key = json.loads((tmp_path / "b" / "key.json").read_text())
    assert [ln.split("\t")[0] for ln in lines] == [str(i) for i in range(1, 11)]
    texts = [ln.split("\t")[1] for ln in lines]
    assert all(" ," not in t and " ." not in t and " - " not in t for t in texts)  # both sources detokenized alike
    assert all((key[str(i + 1)] == "refs") == t.startswith("Zizzi") for i, t in enumerate(texts))
    assert [key[str(i)] for i in range(1, 11)] != ["dlm"] * 6 + ["refs"] * 4  # shuffled, not in source order
    assert "dlm" not in lines and "refs" not in (tmp_path / "b" / "sentences.txt").read_text()


def test_score_gives_broken_share_per_source_and_reader_agreement(tmp_path):
    key = {"1": "dlm", "2": "dlm", "3": "refs", "4": "refs"}
    (tmp_path / "key.json").write_text(json.dumps(key))
    (tmp_path / "a.txt").write_text("1\t0\n2\t0\n3\t2\n4\t1\n")
    (tmp_path / "b.txt").write_text("1\t0\n2\t2\n3\t2\n4\t2\n")
    result = blind.score(tmp_path / "key.json", [tmp_path / "a.txt", tmp_path / "b.txt"])
    assert result["sources"]["dlm"]["broken"] == [1.0, 0.5]
    assert result["sources"]["refs"]["broken"] == [0.0, 0.0]
    assert result["sources"]["refs"]["mean_grade"] == [1.5, 2.0]
    assert result["agreement"]["broken_agreement"] == 0.75
    assert "| dlm | 2 | 100 % / 50 % |" in blind.markdown(result)


def test_score_refuses_missing_or_malformed_grades(tmp_path):
    (tmp_path / "key.json").write_text(json.dumps({"1": "dlm", "2": "refs"}))
    (tmp_path / "short.txt").write_text("1\t2\n")
    with pytest.raises(ExportError, match="1 lines ungraded"):
        blind.score(tmp_path / "key.json", [tmp_path / "short.txt"])
    (tmp_path / "bad.txt").write_text("1\t3\n2\t1\n")
    with pytest.raises(ExportError, match="grade 0, 1 or 2"):
        blind.score(tmp_path / "key.json", [tmp_path / "bad.txt"])
