"""dlm_client against the real `dlm serve` (target/release/dlm on models/e2e), over HTTP, TCP,
a Unix socket and a spawned server's stdio: answers, order, streams, errors by code."""
import select
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from dlm_client import (BadRequest, Client, DlmError, Generation, InvalidArgument, Step, TooLarge,
                        TransportError)

ROOT = Path(__file__).resolve().parents[3]
DLM, MODEL = ROOT / "target" / "release" / "dlm", ROOT / "models" / "e2e"
MAX_LINE = 2000  # --max-line of the test server: a longer request is too_large
TOO_LONG = "x" * (2 * MAX_LINE)

pytestmark = pytest.mark.skipif(not DLM.is_file(), reason=f"{DLM} not built: run `cargo build --release`")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(log, *flags):
    """`dlm serve FLAGS...` until its HTTP health says serving (the first --http of `flags`
    is probed); stopped with SIGTERM, which must exit 0."""
    url = "http://" + flags[flags.index("--http") + 1]
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(DLM), "serve", "--model", str(MODEL), *flags], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client.http(url, timeout=10) as c:
                    if c.health().status == "serving":
                        break
            except DlmError:  # not listening yet (TransportError), or loading
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `dlm serve` on HTTP, TCP and a Unix socket: {"http", "tcp", "unix"} client factories."""
    tcp, unix = free_port(), tmp_path_factory.mktemp("sock") / "dlm.sock"
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with serving(log, "--http", f"127.0.0.1:{free_port()}", "--tcp", f"127.0.0.1:{tcp}", "--unix", str(unix),
                 "--max-line", str(MAX_LINE), "--timeout-ms", "600000") as url:
        yield {"http": lambda: Client.http(url), "tcp": lambda: Client.tcp(f"127.0.0.1:{tcp}"),
               "unix": lambda: Client.unix(unix)}


def spawned():
    return Client.spawn(DLM, MODEL, flags=["--timeout-ms", "600000"])


def transports(server):
    return [("http", server["http"]), ("tcp", server["tcp"]), ("unix", server["unix"]), ("stdio", spawned)]


REQUESTS = [{"steps": 1 + k % 3, "seed": 100 + k, "num": 1 + k % 2} for k in range(7)]


def test_generate_gives_the_same_sentences_on_every_transport(server):
    outs = {}
    for name, connect in transports(server):
        with connect() as c:
            g = c.generate(steps=3, seed=11, num=2, content="food=Italian")
            assert isinstance(g, Generation) and g.seed == 11 and g.timings.steps == 3, name
            assert [r.text for r in g.results] == g.texts and len(g.texts) == 2, name
            assert all(r.text == " ".join(r.tokens) for r in g.results), name
            outs[name] = g.texts
            assert c.health().engine_alive and c.health().model["dir"], name
            assert "dlm_requests_total" in c.metrics(), name
    assert len({tuple(t) for t in outs.values()}) == 1, outs
    with server["http"]() as c:
        info = c.info()
        assert info["version"] and set(info["controls"]) >= {"content", "pos"}


def test_generate_many_answers_in_request_order_with_progress(server):
    with server["tcp"]() as c:  # each request alone: the reference
        alone = [c.generate(**r).texts for r in REQUESTS]
    assert len({tuple(t) for t in alone}) == len(REQUESTS)  # distinct seeds, distinct answers
    for name, connect in transports(server):
        seen = []
        with connect() as c:
            many = c.generate_many(REQUESTS, in_flight=3, progress=lambda i, g: seen.append((i, g.seed)))
        assert [g.texts for g in many] == alone, name
        assert sorted(seen) == [(i, r["seed"]) for i, r in enumerate(REQUESTS)], name


@pytest.mark.parametrize("fields, error, status, says", [
    ({"no_such_field": 1}, BadRequest, 400, "no_such_field"),
    ({"steps": "five"}, BadRequest, 400, "steps"),
    ({"steps": 0}, InvalidArgument, 422, "steps must be between 1 and"),
    ({"pos": TOO_LONG}, TooLarge, 413, str(MAX_LINE)),
])
def test_each_refusal_raises_its_code_and_the_connection_goes_on(server, fields, error, status, says):
    for name, connect in transports(server)[:3]:
        with connect() as c:
            with pytest.raises(error, match=says) as caught:
                c.generate(**fields)
            assert caught.value.code == error.code and caught.value.status == (status if name == "http" else None)
            assert c.generate(steps=1, seed=1).timings.steps == 1, name  # still usable
            with pytest.raises(error) as caught:  # generate_many names the request refused
                c.generate_many([{"steps": 1, "seed": 1}, fields, {"steps": 1, "seed": 2}], in_flight=1)
            assert caught.value.request == fields, name


def test_the_stdio_server_refuses_by_code_too():
    with spawned() as c:
        with pytest.raises(BadRequest, match="no_such_field"):
            c.generate(no_such_field=1)
        with pytest.raises(InvalidArgument, match="every"):
            list(c.stream(steps=2, every=3))  # a stream refused before its first step
        assert c.generate(steps=1, seed=1).texts


def test_fields_the_client_owns_are_refused_before_sending(server):
    with server["tcp"]() as c:
        for owned in ("id", "op", "stream"):
            with pytest.raises(TypeError, match=owned):
                c.generate(steps=1, **{owned: 1})
        with pytest.raises(ValueError, match="in_flight"):
            c.generate_many([{}], in_flight=0)


def test_a_server_that_dies_is_a_transport_error_with_its_stderr(tmp_path):
    with Client.spawn(DLM, tmp_path) as c:  # no model there: it exits at load
        with pytest.raises(TransportError, match="exited with status 1") as caught:
            c.generate(steps=1)
    assert "manifest.json" in caught.value.message
    with pytest.raises(TransportError, match="cannot connect"):
        Client.tcp(f"127.0.0.1:{free_port()}")
    with pytest.raises(TransportError):
        Client.http(f"http://127.0.0.1:{free_port()}").health()


def check_stream(items, steps, every, num):
    *events, final = items
    assert isinstance(final, Generation) and all(isinstance(e, Step) for e in events)
    assert [e.step for e in events] == [s for s in range(1, steps + 1) if s % every == 0 or s == steps]
    assert all(e.of == steps and len(e.texts) == num for e in events)
    assert events[-1].t == 0 and all(a.t > b.t for a, b in zip(events, events[1:]))
    return final


def test_stream_gives_every_reported_step_then_the_answer(server):
    for name, connect in transports(server):
        with connect() as c:
            final = check_stream(list(c.stream(steps=5, every=2, seed=7, num=2)), 5, 2, 2)
            # the same answer as without streaming, and the connection serves on
            assert final.texts == c.generate(steps=5, seed=7, num=2).texts, name
            assert check_stream(list(c.stream(steps=3, every=1, seed=8)), 3, 1, 1).seed == 8, name


def test_a_stream_left_early_does_not_disturb_the_next_call(server):
    for name, connect in transports(server)[:2]:
        with connect() as c:
            events = c.stream(steps=5, every=1, seed=3)
            assert isinstance(next(events), Step)
            events.close()
            assert c.generate(steps=2, seed=3).seed == 3, name
            with pytest.raises(InvalidArgument):
                list(c.stream(steps=0))


def test_http_reopens_a_keep_alive_connection_the_server_closed_while_idle(tmp_path):
    with serving(tmp_path / "serve.log", "--http", f"127.0.0.1:{free_port()}", "--idle-timeout-ms", "200") as url:
        with Client.http(url) as c:
            first = c.generate(steps=1, seed=5)
            idle = c._conn.sock  # the keep-alive connection, until the server closes it
            assert select.select([idle], [], [], 60)[0] and idle.recv(1) == b""
            assert c.generate(steps=1, seed=5).texts == first.texts
