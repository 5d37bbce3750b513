"""The benchmark on the committed model: a short run of every engine and the target table."""
from pathlib import Path

import pytest

from export.bench import bench, matmul_flops, report

MODEL = Path("models/e2e")
DLM = Path("target/release/dlm")


def test_denoiser_flops_scale_with_batch_and_length():
    one = matmul_flops(MODEL / "denoiser.fp32.onnx", 1, 64)
    assert one > 1e6
    assert matmul_flops(MODEL / "denoiser.fp32.onnx", 2, 64) == 2 * one
    assert matmul_flops(MODEL / "denoiser.fp32.onnx", 1, 32) < one


def test_short_bench_measures_every_engine_and_checks_every_target():
    if not DLM.is_file():  # scripts/test.sh builds it first; a missing binary is a failure, not a skip
        pytest.fail(f"{DLM} not found: run `cargo build --release` first")
    result = bench(MODEL, DLM, steps=3, rounds=1, repeat=1, warmup=0, batch=2)
    m = result["medians"]
    for key in ("torch_step", "ort_step", "dlm_step", "torch_cold", "dlm_cold", "torch_rss", "dlm_rss",
                "bare16_step", "dlm16_step", "guided_step", "guided_call"):
        assert m[key] > 0, key
    assert m["dlm_rss"] < m["torch_rss"]  # no torch in the dlm process
    # each target's row: the ratio of the medians it names, and met exactly when within its limit
    rows = {line[:52].strip(): line[52:].split() for line in report(result).splitlines()[-7:]}
    expected = {"per step, dlm / PyTorch reference": m["dlm_step"] / m["torch_step"],
                "per step, dlm / Python onnxruntime loop": m["dlm_step"] / m["ort_step"],
                "cold start to first sentence, dlm / PyTorch": m["dlm_cold"] / m["torch_cold"],
                "peak RSS, dlm / PyTorch": m["dlm_rss"] / m["torch_rss"],
                "batch 2 step time, dlm / bare onnxruntime": m["dlm16_step"] / m["bare16_step"]}
    for name, value in expected.items():
        assert float(rows[name][0]) == pytest.approx(value, abs=5e-4), (name, rows)
    assert len(rows) == 7 and all(met == ("yes" if float(v) <= float(lim) else "NO") for v, lim, met in rows.values())
