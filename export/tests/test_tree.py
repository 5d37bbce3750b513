"""The syntax-tree control: its target format, classifier, scores, and adding it to an exported model."""
import shutil

import pytest
import torch

from export import manifest
from export.tree import (IGNORE, TreeClassifier, attachment, parse_tree, tree_score, tree_string,
                         tree_targets)

TREE = [(2, "det"), (3, "nsubj"), (0, "ROOT"), (3, "punct")]


def test_a_tree_round_trips_and_becomes_head_positions_then_labels():
    assert parse_tree(tree_string(TREE)) == TREE
    with pytest.raises(ValueError, match="word 2: 'x' is not HEAD:LABEL"):
        parse_tree("2:det x")
    labels = ["det", "nsubj", "punct", "ROOT"]
    row = tree_targets([TREE], labels, 8)[0].tolist()
    assert row[:8] == [IGNORE, 2, 3, 0, 3, IGNORE, IGNORE, IGNORE]  # word k at position k + 1
    assert row[8:] == [IGNORE, 0, 1, 3, 2, IGNORE, IGNORE, IGNORE]
    # a word whose head does not fit the sequence is left free
    assert tree_targets([[(0, "ROOT")] + [(1, "det")] * 7], labels, 8)[0, 1:7].tolist() == [0, 1, 1, 1, 1, 1]


def test_scores_count_heads_labels_and_whole_trees():
    assert tree_score(TREE, TREE) == (1.0, 1.0, 1.0)
    wrong_label = [(2, "det"), (3, "dobj"), (0, "ROOT"), (3, "punct")]
    assert tree_score(wrong_label, TREE) == (1.0, 0.75, 0.0)
    assert tree_score(TREE[:2], TREE) == (0.5, 0.5, 0.0), "missing words count as wrong"


def test_the_classifier_learns_a_tree_from_its_latent():
    torch.manual_seed(0)
    labels = ["det", "nsubj", "punct", "ROOT"]
    clf = TreeClassifier(d=8, seq_len=8, num_labels=len(labels), hidden=32, layers=1, heads=2)
    target = tree_targets([TREE, [(0, "ROOT"), (1, "punct")]], labels, 8)
    x, t = torch.randn(2, 8, 8), torch.tensor([10, 10])
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    first = clf.loss(x, t, target).mean().item()
    for _ in range(150):
        opt.zero_grad()
        clf.loss(x, t, target).mean().backward()
        opt.step()
    assert clf.loss(x, t, target).mean().item() < 0.05 * first
    assert attachment(*clf.predict(x, t), target) == (1.0, 1.0)


def test_add_control_exports_the_tree_into_a_model_and_keeps_the_other_graphs(tiny_workdir, tmp_path, tiny_cfg):
    from export.add_control import add_controls

    model = tmp_path / "model"
    shutil.copytree(tiny_workdir / "model", model)
    before = {g["name"]: g["sha256"] for g in manifest.load(model)["graphs"]}
    add_controls(model, tiny_workdir / "controls", tiny_cfg.controls.guide_batches, ["tree"], command="pytest")
    m = manifest.load(model)  # every file present with its sha256
    after = {g["name"]: g["sha256"] for g in m["graphs"]}
    assert set(after) == set(before)
    assert all(after[n] == sha for n, sha in before.items() if "tree" not in n), "the other graphs are kept"
    assert m["controls"]["tree"]["input"] == {"name": "tree", "dtype": "int64", "shape": [1, 128]}
    assert m["controls"]["tree"]["labels"][-1] == "ROOT"
    assert m["export"]["added_controls"]["controls"] == ["tree"]
