"""The benchmark on the committed model: a short run of every engine and the target table."""
from pathlib import Path

import pytest

from export.bench import bench, matmul_flops, paired_ratios, report

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
                "bare1_step", "bare16_step", "dlm16_step", "guided_step", "guided_call", "fp32_step", "fp32_16_step"):
        assert m[key] > 0, key
    # dlm as shipped: --precision auto, whose choice the bench reports and its bare calls follow
    assert result["precision"] in ("int8", "fp32") and result["precision_batch"] == "fp32"  # batch 2: never int8
    assert m["dlm_rss"] < m["torch_rss"]  # no torch in the dlm process
    # each target's row: the ratio it names (one round: of its two figures), met exactly when within its limit
    rows = {line[:52].strip(): line[52:].split() for line in report(result).splitlines()[-9:]}
    expected = {f"per step, dlm ({result['precision']}) / PyTorch reference (fp32)": m["dlm_step"] / m["torch_step"],
                "per step at batch 1, dlm / bare onnxruntime": m["dlm_step"] / m["bare1_step"],
                "cold start to first sentence, dlm / PyTorch": m["dlm_cold"] / m["torch_cold"],
                "peak RSS, dlm / PyTorch": m["dlm_rss"] / m["torch_rss"],
                "batch 2 step time, dlm / bare onnxruntime": m["dlm16_step"] / m["bare16_step"],
                "host work share of a step, batch 2": m["dlm16_host"]}
    for name, value in expected.items():
        assert float(rows[name][0]) == pytest.approx(value, abs=5e-4), (name, rows)
    assert result["paired"]["dlm_step/torch_step"] == pytest.approx(m["dlm_step"] / m["torch_step"])
    assert result["per_round"]["dlm_step"] == [m["dlm_step"]] and f"dlm {m['dlm_step']:.3f}" in report(result)
    assert result["paired"]["fp32_step/torch_step"] == pytest.approx(m["fp32_step"] / m["torch_step"])
    floor = "best MatMul rate share, fp32, batch 2 (floor)"
    assert rows[floor][2] == ("yes" if float(rows[floor][0]) >= 0.5 else "NO")
    # met as the printed figure reads, except within its rounding of the limit (either way then)
    assert len(rows) == 9 and all(met == ("yes" if float(v) <= float(lim) else "NO") or abs(float(v) - float(lim)) < 1e-4
                                  for name, (v, lim, met) in rows.items() if name != floor)


def test_ratios_are_taken_within_each_round_then_the_median():
    # round 2 ran at a slower moment for both engines: the ratio of medians (3 / 1) would be off
    r = {"dlm": [2.0, 10.0, 3.0], "torch": [1.0, 10.0, 1.0]}
    assert paired_ratios(r, [("dlm", "torch")]) == {"dlm/torch": 2.0}
    with pytest.raises(ValueError):
        paired_ratios({"dlm": [1.0], "torch": []}, [("dlm", "torch")])


def test_a_dlm_step_costs_at_most_a_tenth_more_than_its_denoiser_call():
    """The regression guard (issue 24): at batch 16, a step's wall time over the time of its
    denoiser call, both measured in the same `dlm profile` run (so a ratio, not a speed), stays
    within 1.1. On one thread, so that host work and ONNX Runtime share one core as on a small
    board (with two, ONNX Runtime's share halves and the host's does not: 1.13 on a quiet 2-core
    VM). A busy neighbour can inflate one run's host share: the best of three counts."""
    from export.bench import dlm_profile

    if not DLM.is_file():
        pytest.fail(f"{DLM} not found: run `cargo build --release` first")
    ratios = []
    for _ in range(3):
        case = dlm_profile(DLM, MODEL, 20, 16, 1, 3, ["--threads", "1"])
        assert case["guidance_share"] == 0 and 0 < case["denoiser_share"] <= 1
        ratios.append(1 / case["denoiser_share"])
        if ratios[-1] <= 1.1:
            break
    assert min(ratios) <= 1.1, f"step / denoiser call at batch 16: {ratios} (host work grew)"


def test_a_commands_peak_rss_is_its_own_not_its_large_parents():
    """Linux keeps the RSS high-water mark across exec: a child forked straight from a large
    pytest process would report the parent's size (and dlm_rss < torch_rss failed after the
    pipeline tests had loaded torch). run_process forks the command from a small launcher."""
    import sys

    from export.bench import run_process

    ballast = bytearray(400 * 1024 * 1024)  # this process grows by 400 MiB, touched
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    out, wall, rss = run_process([sys.executable, "-c", "print('small')"])
    assert out.strip() == "small" and wall > 0
    assert rss < 100, f"{rss:.0f} MiB: the parent's size, not the command's"
    with pytest.raises(RuntimeError, match="failed"):
        run_process([sys.executable, "-c", "import sys; sys.exit(3)"])
    del ballast
