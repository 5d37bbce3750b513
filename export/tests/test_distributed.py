"""torchrun: 2 CPU processes (gloo) train as one process does on the same global batch."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from export.errors import ExportError
from export.train import train

from .conftest import ROOT, with_train

STEPS = 6


def _config(cfg, batch_size, path):
    cfg = with_train(cfg, steps=STEPS, checkpoint_every=3, batch_size=batch_size)
    path.write_text(json.dumps(cfg.to_dict()))
    return cfg


def _log(train_dir):
    return [json.loads(line) for line in (train_dir / "train_log.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tiny_workdir, tiny_cfg, tmp_path):
    one = tmp_path / "one"
    train(_config(tiny_cfg, 16, tmp_path / "one.json"), tiny_workdir / "data", one / "train", device="cpu")

    two = tmp_path / "two"
    two.mkdir()
    (two / "data").symlink_to(tiny_workdir / "data")
    _config(tiny_cfg, 8, tmp_path / "two.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "export", "--config", str(tmp_path / "two.json"), "--workdir", str(two), "train", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1, f"rank 0 alone prints the record: {run.stdout}"

    start = _log(two / "train")[0]
    assert (start["processes"], start["global_batch"]) == (2, 16)
    loss_worst = 0.0
    for a, b in zip(_log(one / "train")[1:], _log(two / "train")[1:], strict=True):
        assert a["step"] == b["step"]
        for term in ("loss", "mse", "prior", "nll"):
            assert b[term] == pytest.approx(a[term], rel=1e-5), (a["step"], term, a[term], b[term])
            loss_worst = max(loss_worst, abs(b[term] - a[term]) / abs(a[term]))
    ckpt_one = torch.load(one / "train/checkpoint.pt", weights_only=False)
    ckpt_two = torch.load(two / "train/checkpoint.pt", weights_only=False)
    assert (ckpt_one["step"], ckpt_two["step"], ckpt_two["world_size"]) == (STEPS, STEPS, 2)
    # AdamW divides by the root of the second moment, so a parameter whose gradient is nearly
    # zero moves by up to lr (1e-3) on rounding noise; a wrong slice or a missing average moves
    # parameters by about lr every step
    worst = 0.0
    for part in ("model", "ema"):
        for name, p in ckpt_one[part].items():
            diff = (p - ckpt_two[part][name]).abs().max().item()
            assert diff <= 1e-4, f"{part}.{name} differs by {diff}"
            worst = max(worst, diff)
    print(f"2 gloo processes vs 1, {STEPS} steps at global batch 16: loss terms within {loss_worst:.1e} (relative), "
          f"parameters within {worst:.1e}")

    # a checkpoint of 2 processes does not silently resume in 1 (the global batch would change)
    cfg = dataclasses.replace(_config(tiny_cfg, 8, tmp_path / "again.json"))
    with pytest.raises(ExportError, match="2 process"):
        train(with_train(cfg, steps=STEPS + 3), two / "data", two / "train", resume=True)


def test_device_cuda_without_a_gpu_is_a_clear_error(tiny_workdir, tiny_cfg, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ExportError, match="no CUDA device"):
        train(tiny_cfg, tiny_workdir / "data", tmp_path / "train", device="cuda")
