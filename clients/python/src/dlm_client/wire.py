"""The two framings of the stream: Server-Sent Events (HTTP) and newline-delimited JSON (the
line protocol), parsed from bytes as they arrive, with nothing about sockets."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Callable, Union

from .answers import Generation, Step, failure_of, generation_of, step_of
from .errors import ProtocolError, TransportError


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its type ("message" when it names none) and its data."""
    event: str
    data: str


def sse_events(lines: Iterable[bytes]) -> Iterator[Event]:
    """The events of an event stream given line by line (each with or without its line end),
    as the HTML standard parses them: `field: value` lines, data lines joined by newlines,
    comments (`:`) and other fields (`id`, `retry`) skipped, an event dispatched at a blank
    line; one left unfinished at the end of the stream is dropped."""
    kind, data = "", list[str]()
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield Event(kind or "message", "\n".join(data))
            kind, data = "", list[str]()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def object_of(text: Union[str, bytes], what: str) -> dict[str, Any]:
    """A JSON object, or ProtocolError naming `what` it was."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ProtocolError(f"{what} is not JSON ({e}): {text!r:.300}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object: {text!r:.300}")
    return obj


def stream_of_sse(events: Iterable[Event]) -> Iterator[Union[Step, Generation]]:
    """A streamed generate request's SSE events as Steps, then its Generation (a `done`
    event) or the DlmError of its `error` event. Events of other types are skipped."""
    for e in events:
        if e.event == "step":
            yield step_of(object_of(e.data, "a step event"))
        elif e.event == "done":
            yield generation_of(object_of(e.data, "the done event"))
            return
        elif e.event == "error":
            raise failure_of(object_of(e.data, "the error event"))
    raise TransportError("the event stream ended before its done or error event")


def stream_of_lines(objects: Iterable[dict[str, Any]]) -> Iterator[Union[Step, Generation]]:
    """One request's objects on the line protocol (its step events, then its final answer,
    which has no "event" field) as Steps, then its Generation or DlmError."""
    for obj in objects:
        event = obj.get("event")
        if event is None:
            yield generation_of(obj)
            return
        if event == "step":
            yield step_of(obj)
    raise TransportError("the connection ended before the request's final answer")


class LineBuffer:
    """Complete lines out of the chunks `read` returns (b"" at the end of input)."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read, self._buf, self._start = read, bytearray(), 0

    def readline(self) -> bytes:
        """The next non-blank line without its line end; b"" at the end of input (a last line
        without a newline is still returned first)."""
        while True:
            end = self._buf.find(b"\n", self._start)
            if end < 0:
                chunk = self._read()
                if chunk:
                    self._buf += chunk
                    continue
                end = len(self._buf)
                if end == self._start:
                    return b""
            line = bytes(self._buf[self._start:end]).rstrip(b"\r")
            self._start = end + 1
            if self._start > 65536 or self._start >= len(self._buf):  # drop what was read now and then
                del self._buf[:self._start]
                self._start = 0
            if line.strip():
                return line
