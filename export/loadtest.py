"""loadtest: `dlm serve` under a mixed load over loopback TCP, iteration-level batching against
one request at a time (`--schedule fifo`), the same requests and seeds for both.

C clients each send R requests back to back (a closed loop); budgets cycle through 10/50/200
and every other request is content-guided; the two schedules alternate over several rounds. Reported per schedule: throughput (sentences/s) and
p50/p95 latency per budget; per budget, the latency of a request alone on an idle server; the
host share of an iteration at batch 16 (`dlm profile`); then the issue's targets.

`transport_latency` (`loadtest --transports`): one server on HTTP and the line protocol over TCP,
one keep-alive connection each (dlm_client), 1-step requests alternating between them: median and
p90 of each and their ratio.
"""
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from dlm_client import Client, DlmError, TransportError

from . import progress
from .bench import dlm_profile
from .errors import ExportError

BUDGETS = (10, 50, 200)
CONTENT = ("food=Italian", "area=riverside", "name=The Eagle", "customer rating=high", "price=cheap")


def requests_of(client, count):
    """Client `client`'s requests: budgets cycle, every other one guided, a seed each."""
    out = []
    for k in range(count):
        r = {"steps": BUDGETS[(client + k) % 3], "seed": client * 1000 + k}
        if (client + k) % 2 == 0:
            r["content"] = [CONTENT[(client + k) % len(CONTENT)]]
        out.append(r)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dlm serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, dlm, model_dir, schedule, max_batch, threads, http=False):
        self.port, self.http_port = free_port(), free_port() if http else None
        cmd = [str(dlm), "serve", "--model", str(model_dir), "--tcp", f"127.0.0.1:{self.port}", "--queue", "64",
               "--max-batch", str(max_batch), "--threads", str(threads), "--max-connections", "64",
               "--schedule", schedule]
        if http:
            cmd += ["--http", f"127.0.0.1:{self.http_port}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            try:
                with self.connect() as c:
                    c.health()
                return
            except TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise ExportError(f"{' '.join(cmd)} did not start: {self.proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)

    def connect(self):
        """A line-protocol connection (dlm_client) to this server."""
        return Client.tcp(("127.0.0.1", self.port))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=60) != 0:
            raise ExportError(f"dlm serve exited with {self.proc.returncode}")


def transport_latency(model_dir, dlm, requests=300, warmup=20, threads=0):
    """1-step requests on one server, alternating between one HTTP and one line (TCP) keep-alive
    connection, `warmup` each first: {transport: {"p50_ms", "p90_ms", "outside_p50_ms", "n"}} and the
    ratio of the medians; `outside`: the time outside the server's own `total_ms` (the transport, both
    ends)."""
    if not Path(dlm).is_file():
        raise ExportError(f"{dlm}: dlm binary not found; run `cargo build --release` first")
    server = Server(dlm, model_dir, "batched", 16, threads, http=True)
    times, outside = {"http": [], "tcp": []}, {"http": [], "tcp": []}
    try:
        with Client.http(f"http://127.0.0.1:{server.http_port}") as http, server.connect() as tcp:
            for k in range(warmup + requests):
                for name, client in (("http", http), ("tcp", tcp)) if k % 2 == 0 else (("tcp", tcp), ("http", http)):
                    start = time.perf_counter()
                    try:
                        answer = client.generate(steps=1, seed=k)
                    except DlmError as e:
                        raise ExportError(f"{name} request {k} failed: {e}") from None
                    elapsed = time.perf_counter() - start
                    if k >= warmup:
                        times[name].append(elapsed)
                        outside[name].append(elapsed - answer.timings.total_ms / 1e3)
    finally:
        server.stop()
    report = {name: {"p50_ms": 1e3 * float(np.percentile(t, 50)), "p90_ms": 1e3 * float(np.percentile(t, 90)),
                     "outside_p50_ms": 1e3 * float(np.percentile(outside[name], 50)), "n": len(t)}
              for name, t in times.items()}
    report["ratio_p50"] = report["http"]["p50_ms"] / report["tcp"]["p50_ms"]
    return report


def latency_table(report):
    ratio = report["ratio_p50"]
    return "\n".join([
        f"1-step requests, {report['http']['n']} per transport on one keep-alive connection each (alternating)", "",
        "| transport | p50 ms | p90 ms | p50 outside the server's total_ms |", "|---|---|---|---|",
        *(f"| {name} | {report[name]['p50_ms']:.3f} | {report[name]['p90_ms']:.3f} | {report[name]['outside_p50_ms']:.3f} |"
          for name in ("http", "tcp")),
        "", f"HTTP / line protocol median = {ratio:.2f}x (<= 1.2x: {'met' if ratio <= 1.2 else 'missed'})"])


def run_load(server, clients, per_client, done=None):
    """Every client's requests in a closed loop: [(budget, guided, seconds)], wall seconds.
    `done`: a progress.Counter advanced per answer."""
    results, errors = [], []

    def client(c):
        with server.connect() as conn:
            for r in requests_of(c, per_client):
                start = time.perf_counter()
                try:
                    conn.generate(**r)
                except DlmError as e:  # a refusal, or the connection lost
                    errors.append(e)
                results.append((r["steps"], "content" in r, time.perf_counter() - start))
                if done is not None:
                    done.update(1)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise ExportError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return results, wall


def alone(server, repeat, done=None):
    """Median latency of one request on an idle server, per (budget, guided); `done` advanced
    per answer."""
    out = {}
    with server.connect() as conn:
        for budget in BUDGETS:
            for guided in (False, True):
                times = []
                for k in range(repeat):
                    r = {"steps": budget, "seed": k}
                    if guided:
                        r["content"] = [CONTENT[k % len(CONTENT)]]
                    start = time.perf_counter()
                    conn.generate(**r)
                    times.append(time.perf_counter() - start)
                    if done is not None:
                        done.update(1)
                out[(budget, guided)] = float(np.median(times))
    return out


def loadtest(model_dir, dlm, clients=8, per_client=9, max_batch=16, threads=0, repeat=5, rounds=3):
    if not Path(dlm).is_file():
        raise ExportError(f"{dlm}: dlm binary not found; run `cargo build --release` first")
    report = {"clients": clients, "per_client": per_client, "max_batch": max_batch, "rounds": rounds, "schedules": {}}
    runs = {"fifo": [], "batched": []}
    per_run = clients * per_client + len(BUDGETS) * 2 * repeat  # requests of one server
    with progress.bar(total=rounds * len(runs) * per_run, desc="loadtest", unit="request") as bar:
        done = progress.Counter(bar)
        for k in range(rounds):  # the schedules alternate, so a slow spell of the machine hits both
            for schedule in runs:
                bar.set_postfix_str(f"round {k + 1}/{rounds}, {schedule}")
                server = Server(dlm, model_dir, schedule, max_batch, threads)
                try:
                    results, wall = run_load(server, clients, per_client, done)
                    runs[schedule].append((results, wall, alone(server, repeat, done)))
                finally:
                    server.stop()
    for schedule, measured in runs.items():
        results = [r for rs, _, _ in measured for r in rs]
        by_budget = {}
        for budget in BUDGETS:
            seconds = [s for b, _, s in results if b == budget]
            by_budget[budget] = {"p50_ms": 1e3 * float(np.percentile(seconds, 50)),
                                 "p95_ms": 1e3 * float(np.percentile(seconds, 95)), "n": len(seconds)}
        lonely = {key: float(np.median([a[key] for _, _, a in measured])) for key in measured[0][2]}
        report["schedules"][schedule] = {
            "sentences_per_s": float(np.median([len(rs) / wall for rs, wall, _ in measured])),
            "by_budget": by_budget,
            "alone_ms": {f"{b}{' guided' if g else ''}": 1e3 * s for (b, g), s in lonely.items()},
        }
    case = dlm_profile(dlm, model_dir, 50, max_batch, 2, 5)
    report["host_share_batch"] = case["host_share"]
    return report


def table(report):
    lines = [f"{report['clients']} clients x {report['per_client']} requests, budgets 10/50/200, every other one "
             f"content-guided, --max-batch {report['max_batch']}; {report['rounds']} rounds, schedules alternating "
             "(throughput: median of the rounds; latencies: all requests)", "",
             "| schedule | sentences/s | " + " | ".join(f"{b} steps p50 / p95 ms" for b in BUDGETS) + " |",
             "|---|---|" + "---|" * len(BUDGETS)]
    for name, s in report["schedules"].items():
        cells = [f"{s['by_budget'][b]['p50_ms']:.0f} / {s['by_budget'][b]['p95_ms']:.0f}" for b in BUDGETS]
        lines.append(f"| {name} | {s['sentences_per_s']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Alone on an idle server (median ms):", "",
              "| schedule | " + " | ".join(report["schedules"]["fifo"]["alone_ms"]) + " |",
              "|---|" + "---|" * len(report["schedules"]["fifo"]["alone_ms"])]
    for name, s in report["schedules"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in s["alone_ms"].values()) + " |")
    fifo, batched = report["schedules"]["fifo"], report["schedules"]["batched"]
    speedup = batched["sentences_per_s"] / fifo["sentences_per_s"]
    short_alone = (batched["alone_ms"]["10"] + batched["alone_ms"]["10 guided"]) / 2
    short_p95 = batched["by_budget"][10]["p95_ms"]
    slower = max(batched["alone_ms"][k] / fifo["alone_ms"][k] - 1 for k in fifo["alone_ms"])
    lines += ["", "Targets:",
              f"- throughput batched / fifo = {speedup:.2f}x (>= 1.2x: {'met' if speedup >= 1.2 else 'missed'})",
              f"- p95 of 10-step requests under load {short_p95:.0f} ms = {short_p95 / short_alone:.1f}x alone "
              f"({short_alone:.0f} ms, guided and not averaged) (<= 3x: {'met' if short_p95 <= 3 * short_alone else 'missed'})",
              "- alone, batched against fifo: at most "
              f"{100 * slower:+.1f} % (within 5 %: {'met' if slower <= 0.05 else 'missed'})",
              f"- host share of an iteration at batch {report['max_batch']} (50 steps, dlm profile): "
              f"{100 * report['host_share_batch']:.1f} % (<= 5 %: {'met' if report['host_share_batch'] <= 0.05 else 'missed'})"]
    return "\n".join(lines)
