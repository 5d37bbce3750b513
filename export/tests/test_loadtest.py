"""The serving load test on the committed model: a short run of both schedules and the targets."""
from pathlib import Path

import pytest

from export.loadtest import BUDGETS, loadtest, requests_of, table

MODEL = Path("models/e2e")
DLM = Path("target/release/dlm")


def test_requests_cycle_budgets_and_guidance_with_distinct_seeds():
    requests = [r for c in range(4) for r in requests_of(c, 6)]
    assert {r["steps"] for r in requests} == set(BUDGETS)
    assert sum("content" in r for r in requests) == len(requests) // 2
    assert len({r["seed"] for r in requests}) == len(requests)


def test_short_loadtest_runs_both_schedules_and_reports_every_target():
    if not DLM.is_file():  # scripts/test.sh builds it first; a missing binary is a failure, not a skip
        pytest.fail(f"{DLM} not found: run `cargo build --release` first")
    report = loadtest(MODEL, DLM, clients=3, per_client=3, max_batch=4, repeat=1, rounds=1)
    for schedule in ("fifo", "batched"):
        s = report["schedules"][schedule]
        assert s["sentences_per_s"] > 0
        assert sum(b["n"] for b in s["by_budget"].values()) == 9
        assert set(s["alone_ms"]) == {f"{b}{g}" for b in BUDGETS for g in ("", " guided")}
    # the targets as computed from the measurements, each met exactly when within its limit
    text = table(report)
    fifo, batched = report["schedules"]["fifo"], report["schedules"]["batched"]
    speedup = batched["sentences_per_s"] / fifo["sentences_per_s"]
    assert f"batched / fifo = {speedup:.2f}x (>= 1.2x: {'met' if speedup >= 1.2 else 'missed'})" in text, text
    slower = max(batched["alone_ms"][k] / fifo["alone_ms"][k] - 1 for k in fifo["alone_ms"])
    assert f"at most {100 * slower:+.1f} % (within 5 %: {'met' if slower <= 0.05 else 'missed'})" in text, text
    host = report["host_share_batch"]
    assert f"{100 * host:.1f} % (<= 5 %: {'met' if host <= 0.05 else 'missed'})" in text, text


def test_transport_latency_times_each_transport_on_one_server():
    if not DLM.is_file():
        pytest.fail(f"{DLM} not found: run `cargo build --release` first")
    from export.loadtest import latency_table, transport_latency

    report = transport_latency(MODEL, DLM, requests=6, warmup=2)
    assert report["http"]["n"] == report["tcp"]["n"] == 6
    assert report["ratio_p50"] == report["http"]["p50_ms"] / report["tcp"]["p50_ms"]
    text = latency_table(report)
    assert f"= {report['ratio_p50']:.2f}x (<= 1.2x: {'met' if report['ratio_p50'] <= 1.2 else 'missed'})" in text, text
