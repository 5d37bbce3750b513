"""HTTP: `dlm serve --http` on one keep-alive connection (stdlib http.client, TCP_NODELAY),
streams as Server-Sent Events; `generate_many` runs a connection per request in flight."""
from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, Optional, Union
from urllib.parse import urlsplit

from .answers import Generation, Health, Step, failure_of, generation_of, health_of
from .client import DEFAULT_TIMEOUT, Client, Progress, check_in_flight, generate_fields
from .errors import DlmError, ProtocolError, TransportError, error_of
from .wire import object_of, sse_events, stream_of_sse

# the code of an error whose body names none (hyper's own 431, an empty 400, a proxy's page)
CODE_OF_STATUS = {400: "bad_request", 401: "unauthorized", 404: "bad_request", 405: "bad_request",
                  408: "timeout", 413: "too_large", 422: "invalid_argument", 429: "busy",
                  431: "too_large", 503: "shutting_down", 504: "timeout"}


class _NoDelay(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()  # then no Nagle delay behind the server's delayed ACK
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class HttpClient(Client):
    """`Client.http`."""

    def __init__(self, url: str, api_key: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"a server URL is http://HOST:PORT, got {url!r}")
        self.url, self.api_key, self.timeout = url, api_key, timeout
        self._host, self._port = parts.hostname, parts.port
        self._headers = {"Content-Type": "application/json"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._conn: Optional[http.client.HTTPConnection] = None

    def generate(self, **fields: Any) -> Generation:
        status, obj = self._json("POST", "/v1/generate", generate_fields(fields, stream=False))
        return generation_of(obj, status)

    def stream(self, **fields: Any) -> Iterator[Union[Step, Generation]]:
        response = self._request("POST", "/v1/generate", generate_fields(fields, stream=True))
        if not response.getheader("Content-Type", "").startswith("text/event-stream"):
            try:  # refused before its first step: an ordinary JSON answer
                return iter([generation_of(self._object(response), response.status)])
            except DlmError as e:
                return _raising(e)  # raised by the iterator, as on the line protocol
        conn, self._conn = self._conn, None  # the stream's own while it lasts: other calls open another
        assert conn is not None  # _request left the connection of its response there
        return self._events(conn, response)

    def generate_many(self, requests: Sequence[dict[str, Any]], in_flight: int = 16,
                      progress: Optional[Progress] = None) -> list[Generation]:
        check_in_flight(in_flight)
        for i, r in enumerate(requests):
            if not isinstance(r, dict):
                raise TypeError(f"request {i} is a {type(r).__name__}, not a dict of fields")
            generate_fields(r, stream=False)
        local, clients = threading.local(), []

        def one(i: int) -> Generation:
            if not hasattr(local, "client"):
                local.client = HttpClient(self.url, self.api_key, self.timeout)
                clients.append(local.client)
            try:
                return local.client.generate(**requests[i])  # type: ignore[no-any-return]
            except DlmError as e:
                e.request = requests[i]
                raise

        answers: list[Optional[Generation]] = [None] * len(requests)
        pool = ThreadPoolExecutor(max_workers=max(1, min(in_flight, len(requests))))
        try:
            futures: dict[Future[Generation], int] = {pool.submit(one, i): i for i in range(len(requests))}
            for future in as_completed(futures):
                i = futures[future]
                answer = answers[i] = future.result()  # the first error raises
                if progress is not None:
                    progress(i, answer)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for c in clients:
                c.close()
        return [a for a in answers if a is not None]

    def health(self) -> Health:
        """200 while serving; 503 with the same object while shutting down or with the
        inference thread dead (a Health, see its `status` and `engine_alive`), or with a
        `loading` error while the model loads (raised as `Loading`)."""
        status, obj = self._json("GET", "/health", None, ok=(200, 503))
        if "health" not in obj:
            raise failure_of(obj, status)
        return health_of(obj)

    def info(self) -> dict[str, Any]:
        """`GET /v1/info`: the version, the model, each graph's sha256, the provider and
        every control's labels."""
        return self._json("GET", "/v1/info", None)[1]

    def metrics(self) -> str:
        response = self._request("GET", "/metrics", None)
        data = self._read(response)
        if response.status != 200:
            raise self._failure(response.status, data)
        return data.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _events(self, conn: http.client.HTTPConnection,
                response: http.client.HTTPResponse) -> Iterator[Union[Step, Generation]]:
        def lines() -> Iterator[bytes]:
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise self._broken(e, conn) from e
                if not line:
                    return
                yield line
        held: Optional[http.client.HTTPConnection] = conn  # closed at the end unless handed back
        try:
            for item in stream_of_sse(sse_events(lines())):
                if isinstance(item, Generation) and not _rest(response) and self._conn is None:
                    self._conn, held = conn, None  # read to its end: the connection serves again
                yield item
        finally:
            if held is not None:
                held.close()

    def _json(self, method: str, path: str, body: Optional[dict[str, Any]],
              ok: tuple[int, ...] = (200,)) -> tuple[int, dict[str, Any]]:
        """The status and JSON object of a request; an error status outside `ok` raises."""
        response = self._request(method, path, body)
        data = self._read(response)
        if response.status not in ok:
            raise self._failure(response.status, data)
        return response.status, object_of(data, f"the answer of {method} {path}")

    def _object(self, response: http.client.HTTPResponse) -> dict[str, Any]:
        data = self._read(response)
        if response.status != 200:
            raise self._failure(response.status, data)
        return object_of(data, "the answer")

    def _request(self, method: str, path: str, body: Optional[dict[str, Any]]) -> http.client.HTTPResponse:
        payload = None if body is None else json.dumps(body, allow_nan=False).encode()  # TypeError: not JSON
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = _NoDelay(self._host, self._port, timeout=self.timeout)
            reused = self._conn.sock is not None
            try:
                self._conn.request(method, path, body=payload, headers=self._headers)
                return self._conn.getresponse()
            except (ConnectionResetError, BrokenPipeError) as e:  # RemoteDisconnected among them
                if reused and attempt == 1:  # the server had closed the idle keep-alive connection
                    self.close()
                    continue
                raise self._broken(e) from e
            except (OSError, http.client.HTTPException) as e:
                raise self._broken(e) from e
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._broken(e) from e

    def _broken(self, e: BaseException, conn: Optional[http.client.HTTPConnection] = None) -> TransportError:
        """The error of a failed connection (`conn`, else the client's own), closed."""
        if conn is None:
            self.close()
        else:
            conn.close()
        if isinstance(e, socket.timeout):
            return TransportError(f"{self.url}: no answer within {self.timeout} s")
        return TransportError(f"{self.url}: {type(e).__name__}: {e}")

    def _failure(self, status: int, data: bytes) -> DlmError:
        """The error of an answer with status `status`: its body's code, or one by status."""
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            return failure_of(obj, status)
        text = data.decode("utf-8", errors="replace").strip()[:300] or http.client.responses.get(status, "")
        if status not in CODE_OF_STATUS and status < 500:
            return ProtocolError(f"HTTP {status}: {text}", status)
        return error_of(CODE_OF_STATUS.get(status, "internal"), f"HTTP {status}: {text}", status)


def _rest(response: http.client.HTTPResponse) -> bytes:
    """What follows the last event (nothing, if the stream ended as it should), or b"?" when
    reading it failed: either way the connection is not reused."""
    try:
        return response.read()
    except (OSError, http.client.HTTPException):
        return b"?"


def _raising(error: DlmError) -> Iterator[Union[Step, Generation]]:
    raise error
    yield  # a generator: the error comes at the first next()
