"""`dlm serve`'s Prometheus metrics, read by Prometheus' own Python parser (OpenMetrics), with
counts that match the requests this test sent, over HTTP and the line protocol."""
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

DLM = Path("target/release/dlm")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/generate", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_count_what_was_sent_over_http_and_the_line_protocol():
    if not DLM.is_file():  # scripts/test.sh builds it first; a missing binary is a failure, not a skip
        pytest.fail(f"{DLM} not found: run `cargo build --release` first")
    http, tcp = free_port(), free_port()
    server = subprocess.Popen([str(DLM), "serve", "--http", f"127.0.0.1:{http}", "--tcp", f"127.0.0.1:{tcp}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "dlm serve did not become healthy"
            time.sleep(0.1)
        statuses = [post(http, json.dumps({"steps": 5, "seed": k}).encode()) for k in range(2)]
        statuses += [post(http, b'{"steps": 0}'), post(http, b"not json")]
        assert statuses == [200, 200, 422, 400]
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            text = r.read().decode()
        got = families(text)
        answers = {s.labels["code"]: s.value for s in got["dlm_requests"].samples if s.name == "dlm_requests_total"}
        assert answers == {"ok": 2, "invalid_argument": 1, "bad_request": 1}
        for name in ("dlm_queue_seconds", "dlm_run_seconds", "dlm_denoiser_seconds", "dlm_host_seconds"):
            count = next(s.value for s in got[name].samples if s.name == f"{name}_count")
            assert count == 2, name
        steps = next(s.value for s in got["dlm_request_steps"].samples if s.name == "dlm_request_steps_sum")
        assert steps == 10
        assert got["dlm_engine_alive"].samples[0].value == 1
        build = got["dlm_build"].samples[0].labels
        assert build["provider"] == "cpu" and build["precision"] == "fp32" and len(build["manifest_sha256"]) == 64
        # the line protocol answers the same metrics as a JSON string
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            f = s.makefile("rwb")
            f.write(b'{"op": "metrics", "id": 1}\n')
            f.flush()
            answer = json.loads(f.readline())
        assert answer["ok"] and answer["id"] == 1
        assert "dlm_requests" in families(answer["metrics"])
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
