"""The client's parsers on canned bytes: answers, errors, Server-Sent Events (also through
http.client's chunked decoding), the line protocol's step events, and HTTP answers from a
loopback socket that replays canned responses (what the client sends, how it reads statuses)."""
import http.client
import io
import json
import socket
import threading

import pytest

from dlm_client import (BadRequest, Client, DlmError, Generation, Internal, InvalidArgument, ProtocolError, Step,
                        Timeout, TooLarge, TransportError, Unauthorized)
from dlm_client.answers import generation_of, health_of
from dlm_client.wire import Event, LineBuffer, sse_events, stream_of_lines, stream_of_sse

ANSWER = {"id": 3, "ok": True, "results": [{"text": "The Eagle is cheap .", "tokens": ["The", "Eagle", "is", "cheap", "."],
                                            "lm_nll": 3.5}],
          "seed": 5071228713301846427, "texts": ["The Eagle is cheap ."],
          "timings": {"denoiser_ms": 13.7, "guidance_ms": 0.0, "host_ms": 2.0, "queue_ms": 0.2, "run_ms": 16.2,
                      "steps": 2, "total_ms": 16.4}}
STEP = {"id": 3, "event": "step", "step": 1, "of": 2, "t": 1000, "texts": ["The is a", None]}
ERROR = {"id": 3, "ok": False, "error": {"code": "timeout", "message": "deadline passed after step 1"}}


def test_an_answer_is_a_generation_with_every_field_typed():
    g = generation_of(ANSWER)
    assert g.texts == ["The Eagle is cheap ."] and g.seed == 5071228713301846427
    assert g.results[0].tokens == ["The", "Eagle", "is", "cheap", "."] and g.results[0].lm_nll == 3.5
    assert (g.timings.steps, g.timings.run_ms, g.timings.denoiser_ms) == (2, 16.2, 13.7)
    assert g.raw is ANSWER
    without = {**ANSWER, "results": [{"text": "a", "tokens": ["a"]}]}
    assert generation_of(without).results[0].lm_nll is None


def test_an_error_answer_raises_its_codes_exception():
    with pytest.raises(Timeout) as caught:
        generation_of(ERROR, 504)
    assert (caught.value.code, caught.value.message, caught.value.status) == ("timeout", ERROR["error"]["message"], 504)
    with pytest.raises(InvalidArgument):
        generation_of({"ok": False, "error": {"code": "invalid_argument", "message": "steps"}})
    # a code this client does not know yet still carries it
    with pytest.raises(DlmError) as caught:
        generation_of({"ok": False, "error": {"code": "overheated", "message": "later"}})
    assert type(caught.value) is DlmError and caught.value.code == "overheated"


@pytest.mark.parametrize("broken", [
    {"ok": True},
    {**ANSWER, "seed": "5"},
    {**ANSWER, "timings": {**ANSWER["timings"], "steps": True}},
    {**ANSWER, "results": ["text"]},
    {"ok": False, "error": "busy"},
    {"health": 3},
])
def test_an_answer_out_of_the_wire_format_is_a_protocol_error(broken):
    with pytest.raises(ProtocolError):
        generation_of(broken)


def test_health_is_typed_and_keeps_what_it_does_not_know():
    h = {"status": "serving", "engine_alive": True, "busy": False, "queue_depth": 0, "queue_capacity": 8,
         "active_sequences": 0, "max_batch": 16, "served": 12, "uptime_s": 73, "model": {"seq_len": 64}, "new": 1}
    health = health_of({"id": None, "ok": True, "health": h})
    assert (health.status, health.served, health.uptime_s, health.model) == ("serving", 12, 73.0, {"seq_len": 64})
    assert health.raw["new"] == 1


def sse(*events):
    return b"".join(f"event: {kind}\ndata: {json.dumps(obj)}\n\n".encode() for kind, obj in events)


def test_sse_fields_as_the_standard_parses_them():
    raw = (b": a comment\r\nevent: step\r\ndata: {\"a\":\r\ndata:1}\r\nid: 7\r\nretry: 10\r\n\r\n"
           b"data: plain\n\n\n\nevent: cut\ndata: never dispatched")
    assert list(sse_events(raw.splitlines(keepends=True))) == [Event("step", '{"a":\n1}'), Event("message", "plain")]


def test_an_sse_stream_is_its_steps_then_its_generation():
    raw = sse(("step", STEP), ("ping", {}), ("step", {**STEP, "step": 2, "t": 0, "texts": ["a", "b"]}), ("done", ANSWER))
    items = list(stream_of_sse(sse_events(raw.splitlines(keepends=True))))
    assert items[:2] == [Step(1, 2, 1000, ["The is a", None]), Step(2, 2, 0, ["a", "b"])]
    assert isinstance(items[2], Generation) and items[2].texts == ANSWER["texts"] and len(items) == 3


def test_an_sse_error_event_raises_after_the_steps_before_it():
    items = stream_of_sse(sse_events(sse(("step", STEP), ("error", ERROR)).splitlines(keepends=True)))
    assert next(items) == Step(1, 2, 1000, ["The is a", None])
    with pytest.raises(Timeout):
        next(items)


@pytest.mark.parametrize("raw", [sse(("step", STEP)), sse(("step", STEP), ("done", ANSWER))[:-2]])
def test_an_sse_stream_cut_before_its_end_is_a_transport_error(raw):
    with pytest.raises(TransportError, match="ended before"):
        list(stream_of_sse(sse_events(raw.splitlines(keepends=True))))


def test_an_sse_event_that_is_not_json_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="step event"):
        list(stream_of_sse([Event("step", "{not json")]))
    with pytest.raises(ProtocolError, match="texts"):
        list(stream_of_sse([Event("step", json.dumps({**STEP, "texts": [1]}))]))


class _Canned:
    """A socket whose whole input is `data` (what http.client reads a response from)."""

    def __init__(self, data):
        self.data = data

    def makefile(self, mode):
        return io.BufferedReader(io.BytesIO(self.data))


@pytest.mark.parametrize("size", [1, 7, 64, 100000])
def test_sse_through_chunked_http_whatever_the_chunk_sizes(size):
    body = sse(("step", STEP), ("done", ANSWER))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    response = http.client.HTTPResponse(_Canned(head + chunks + b"0\r\n\r\n"))
    response.begin()
    items = list(stream_of_sse(sse_events(iter(response.readline, b""))))
    assert items[0] == Step(1, 2, 1000, ["The is a", None]) and items[1].seed == ANSWER["seed"]
    assert response.read() == b""


def test_the_line_protocols_stream_is_its_events_then_its_final_line():
    items = list(stream_of_lines([STEP, {**STEP, "event": "later"}, ANSWER, STEP]))
    assert items[0] == Step(1, 2, 1000, ["The is a", None]) and isinstance(items[1], Generation) and len(items) == 2
    with pytest.raises(BadRequest):
        list(stream_of_lines([{"id": 3, "ok": False, "error": {"code": "bad_request", "message": "stream"}}]))
    with pytest.raises(TransportError):
        list(stream_of_lines([STEP]))


@pytest.mark.parametrize("size", [1, 2, 5, 4096])
def test_lines_come_whole_whatever_the_read_sizes(size):
    data = b'{"a": 1}\r\n\n  \n{"b": 2}\nlast'
    pieces = iter([data[i:i + size] for i in range(0, len(data), size)])
    lines = LineBuffer(lambda: next(pieces, b""))
    assert [lines.readline() for _ in range(4)] == [b'{"a": 1}', b'{"b": 2}', b"last", b""]
    assert lines.readline() == b""


def answering(*responses):
    """A loopback listener that answers each connection's first request with the next of
    `responses` (raw bytes) and closes it: (url, the request heads it read)."""
    listener = socket.create_server(("127.0.0.1", 0))
    heads = []

    def serve():
        with listener:
            for response in responses:
                conn, _ = listener.accept()
                with conn:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    heads.append(data.split(b"\r\n\r\n")[0].decode())
                    conn.sendall(response)
    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", heads


def canned(status, body, extra=""):
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n{body}").encode()


def test_the_api_key_goes_out_as_a_bearer_header_and_a_401_is_unauthorized():
    refusal = json.dumps({"id": None, "ok": False, "error": {"code": "unauthorized", "message": "no key"}})
    url, heads = answering(canned("401 Unauthorized", refusal), canned("200 OK", json.dumps(ANSWER)))
    with pytest.raises(Unauthorized) as caught:
        Client.http(url, api_key="s3cret").generate(steps=1)
    assert caught.value.status == 401 and "authorization: bearer s3cret" in heads[0].lower()
    assert Client.http(url).generate(steps=1).seed == ANSWER["seed"]
    assert "authorization" not in heads[1].lower()


@pytest.mark.parametrize("status, body, error", [
    ("431 Request Header Fields Too Large", "", TooLarge),  # hyper's own answer: an empty body
    ("400 Bad Request", "", BadRequest),
    ("502 Bad Gateway", "<html>proxy</html>", Internal),
    ("418 I'm a teapot", "tea", ProtocolError),
])
def test_an_http_error_without_a_code_gets_one_by_its_status(status, body, error):
    url, _ = answering(canned(status, body))
    with pytest.raises(error) as caught:
        Client.http(url).generate(steps=1)
    assert caught.value.status == int(status.split()[0])


def test_a_url_that_is_not_http_host_port_is_refused():
    for url in ("https://127.0.0.1:8080", "127.0.0.1:8080", "http://127.0.0.1:8080/v1", "http://:80"):
        with pytest.raises(ValueError, match="http://HOST:PORT"):
            Client.http(url)
