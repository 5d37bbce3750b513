import dataclasses
from pathlib import Path

import pytest

from export import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """Config paths (../shared/data/...) are relative to the repository root."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def tiny_cfg():
    return config.load(ROOT / "export/configs/tiny.json")


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, tiny_cfg):
    """prepare -> train -> export on the tiny config, once per test session."""
    import os

    from export.data import prepare
    from export.onnx_export import export_model
    from export.train import train
    from export.teacher import train_teacher
    from export.train_controls import train_controls
    from export.train_tree import train_tree

    work = tmp_path_factory.mktemp("tiny")
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        prepare(tiny_cfg, work / "data")
        train(tiny_cfg, work / "data", work / "train")
        train_controls(tiny_cfg, work / "data", work / "train", work / "controls")
        train_tree(tiny_cfg, work / "data", work / "train", work / "controls")
        train_teacher(tiny_cfg, work / "data", work / "teacher")
        export_model(work / "data", work / "train", work / "model", command="pytest tiny",
                     controls_dir=work / "controls", teacher_dir=work / "teacher",
                     guide_batches=tiny_cfg.controls.guide_batches)
    finally:
        os.chdir(old)
    return work


def with_train(cfg, **changes):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


@pytest.fixture(scope="session")
def judge():
    """The pretrained fluency judge (SmolLM2, ~30-50 s to load on 2 cores), with unigrams from the training split."""
    from export import manifest
    from export.evaluate import training_references
    from export.judge import Judge

    return Judge(training_references(manifest.load(ROOT / "models" / "e2e")))
