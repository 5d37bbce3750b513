"""The line protocol (newline-delimited JSON) over a TCP or Unix socket or a spawned server's
stdio: requests numbered by the client, answers matched by id, many in flight on one
connection."""
from __future__ import annotations

import json
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from typing import Any, Optional, Union

from .answers import Generation, Health, Step, failure_of, generation_of, health_of
from .channels import Channel
from .client import Client, Progress, check_in_flight, generate_fields
from .errors import DlmError, TransportError
from .wire import LineBuffer, object_of, stream_of_lines


class LineClient(Client):
    """`Client.tcp`, `Client.unix` or `Client.spawn`: the line protocol over `channel`."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._lines = LineBuffer(channel.recv)
        self._next_id = 0
        # what arrived for each request still awaited, by id; lines of others are dropped
        self._inbox: dict[int, deque[dict[str, Any]]] = {}

    def generate(self, **fields: Any) -> Generation:
        rid = self._send(generate_fields(fields, stream=False))
        return generation_of(self._final(rid))

    def stream(self, **fields: Any) -> Iterator[Union[Step, Generation]]:
        rid = self._send(generate_fields(fields, stream=True))  # sent now, not at the first next()
        return self._events(rid)

    def generate_many(self, requests: Sequence[dict[str, Any]], in_flight: int = 16,
                      progress: Optional[Progress] = None) -> list[Generation]:
        check_in_flight(in_flight)
        for i, r in enumerate(requests):
            if not isinstance(r, dict):
                raise TypeError(f"request {i} is a {type(r).__name__}, not a dict of fields")
        bodies = [generate_fields(r, stream=False) for r in requests]
        answers: list[Optional[Generation]] = [None] * len(bodies)
        index: dict[int, int] = {}  # id -> request, for those in flight
        sent = done = 0
        try:
            while done < len(bodies):
                while sent < len(bodies) and len(index) < in_flight:
                    index[self._send(bodies[sent])] = sent
                    sent += 1
                rid, obj = self._receive(index)
                if "event" in obj:
                    continue
                i = index.pop(rid)
                try:
                    answer = answers[i] = generation_of(obj)
                except DlmError as e:
                    e.request = requests[i]
                    raise
                done += 1
                if progress is not None:
                    progress(i, answer)
        finally:
            self._abandon(index)
        return [a for a in answers if a is not None]

    def health(self) -> Health:
        return health_of(self._final(self._send({"op": "health"})))

    def metrics(self) -> str:
        answer = self._final(self._send({"op": "metrics"}))
        if not isinstance(answer.get("metrics"), str):
            raise failure_of(answer)
        return str(answer["metrics"])

    def close(self) -> None:
        self._channel.close()

    def _send(self, body: dict[str, Any]) -> int:
        rid = self._next_id
        line = json.dumps({**body, "id": rid}, allow_nan=False) + "\n"  # TypeError/ValueError: not JSON
        self._next_id += 1
        self._inbox[rid] = deque()
        try:
            self._channel.send(line.encode())
        except TransportError:
            del self._inbox[rid]
            raise
        return rid

    def _events(self, rid: int) -> Iterator[Union[Step, Generation]]:
        def objects() -> Iterator[dict[str, Any]]:
            while True:
                yield self._receive((rid,))[1]
        try:
            yield from stream_of_lines(objects())
        finally:
            self._abandon((rid,))

    def _final(self, rid: int) -> dict[str, Any]:
        """The final answer of request `rid` (its step events, if any, skipped)."""
        try:
            while True:
                obj = self._receive((rid,))[1]
                if "event" not in obj:
                    return obj
        finally:
            self._abandon((rid,))

    def _receive(self, ids: Collection[int]) -> tuple[int, dict[str, Any]]:
        """The next object for one of `ids`, reading lines (and keeping those of the other
        requests awaited) until one comes; a final answer ends its request's wait."""
        while True:
            for rid in ids:
                waiting = self._inbox.get(rid)
                if waiting:
                    obj = waiting.popleft()
                    if "event" not in obj:
                        del self._inbox[rid]
                    return rid, obj
            self._route(self._read())

    def _read(self) -> dict[str, Any]:
        line = self._lines.readline()
        if not line:
            raise TransportError(self._channel.ended())
        return object_of(line, "an answer line")

    def _route(self, obj: dict[str, Any]) -> None:
        rid = obj.get("id")
        if rid is None and obj.get("ok") is False:
            # a line the server could not read an id from (over --max-line): whose is known
            # only when one request is awaited
            if len(self._inbox) != 1:
                raise failure_of(obj)
            rid = next(iter(self._inbox))
        if isinstance(rid, int) and not isinstance(rid, bool) and rid in self._inbox:
            self._inbox[rid].append(obj)

    def _abandon(self, ids: Collection[int]) -> None:
        for rid in list(ids):
            self._inbox.pop(rid, None)
