"""Bad inputs raise the documented errors, naming the file and line."""
import json

import pytest

from export import config, data
from export.__main__ import main
from export.errors import ConfigError, DataError


def test_missing_corpus_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt: corpus file not found"):
        data.read_corpus([str(tmp_path / "nope.txt")])


@pytest.mark.parametrize("line, reason", [
    ("name : Aromi no text here", "expected 'MR||text'"),
    ("name : Aromi||   ", "empty text"),
    ("name Aromi||Aromi is a pub .", "malformed MR pair"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    f = tmp_path / "c.txt"
    f.write_text("name : Aromi||Aromi is a pub .\n" + line + "\n")
    with pytest.raises(DataError, match=rf"c.txt:2: .*{reason}"):
        data.read_corpus([str(f)])


def test_empty_corpus(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n")
    with pytest.raises(DataError, match="empty corpus"):
        data.read_corpus([str(f)])


def test_prepare_leaves_nothing_half_written(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("name : Aromi||Aromi is a pub .\nbroken\n")
    cfg = config.from_dict({"data": {"files": [str(f)]}})
    with pytest.raises(DataError):
        data.prepare(cfg, tmp_path / "out" / "data")
    assert not (tmp_path / "out" / "data").exists()


@pytest.mark.parametrize("raw, message", [
    ({"model": {"width": 3}}, "unknown keys"),
    ({"trian": {}}, "unknown sections"),
    ({"train": {"steps": "many"}}, "expected int"),
    ({"model": {"hidden": 130, "heads": 4}}, "divisible"),
    ({"diffusion": {"schedule": "cosine"}}, "only 'sqrt'"),
])
def test_wrong_config(raw, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(raw)


def test_cli_exits_nonzero_with_a_message(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": {"files": [str(tmp_path / "missing.txt")]}}))
    assert main(["--config", str(cfg), "--workdir", str(tmp_path / "w"), "prepare"]) == 1
    assert "missing.txt: corpus file not found" in capsys.readouterr().err


def test_atomic_dir_replaces_whole_but_keeps_named_files(tmp_path):
    from export.atomic import atomic_dir

    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("hand-written")
    (out / "stale.onnx").write_text("old")
    with atomic_dir(out, keep=("README.md",)) as tmp:
        (tmp / "new.onnx").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "new.onnx"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.onnx").write_text("x")
            raise RuntimeError("export failed")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "new.onnx"]
