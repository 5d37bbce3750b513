"""`Client`: one `dlm serve`, over HTTP (`Client.http`) or the line protocol (`Client.tcp`,
`Client.unix`, or `Client.spawn`: the stdio of a server it starts). The same calls on each."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from .answers import Generation, Health, Step

if TYPE_CHECKING:
    from .http import HttpClient
    from .lines import LineClient

Progress = Callable[[int, Generation], None]
"""Called as each answer of `generate_many` arrives: the request's index and its answer."""

# a read may wait this long (seconds) by default: longer than the server's own default deadline
DEFAULT_TIMEOUT = 300.0

C = TypeVar("C", bound="Client")


class Client(ABC):
    """A connection to `dlm serve`. Not for use from several threads at once (open one per
    thread). Request fields are those of docs/serve.md and pass through unchecked: the server
    refuses what it does not know (`BadRequest`)."""

    @staticmethod
    def http(url: str, api_key: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT) -> HttpClient:
        """`dlm serve --http` at `url` ("http://127.0.0.1:8080"), on one keep-alive connection;
        `api_key` goes out as `Authorization: Bearer KEY`; `timeout`: seconds a connect or a
        read may wait (None: forever)."""
        from .http import HttpClient
        return HttpClient(url, api_key=api_key, timeout=timeout)

    @staticmethod
    def tcp(address: Union[str, tuple[str, int]], timeout: Optional[float] = DEFAULT_TIMEOUT) -> LineClient:
        """The line protocol of `dlm serve --tcp` at "host:port" (or (host, port))."""
        from .channels import tcp_channel
        from .lines import LineClient
        return LineClient(tcp_channel(address, timeout))

    @staticmethod
    def unix(path: Union[str, Path], timeout: Optional[float] = DEFAULT_TIMEOUT) -> LineClient:
        """The line protocol of `dlm serve --unix PATH`."""
        from .channels import unix_channel
        from .lines import LineClient
        return LineClient(unix_channel(path, timeout))

    @staticmethod
    def spawn(dlm_path: Union[str, Path], model_dir: Union[str, Path], flags: Sequence[str] = (),
              timeout: Optional[float] = None) -> LineClient:
        """Start `dlm serve --stdio --model MODEL_DIR FLAGS...` and speak the line protocol
        over its stdin and stdout; its stderr goes to a file, quoted when it exits. Closing the
        client closes its stdin (the server then answers what it has and exits)."""
        from .channels import spawn_channel
        from .lines import LineClient
        return LineClient(spawn_channel(dlm_path, model_dir, flags, timeout))

    @abstractmethod
    def generate(self, **fields: Any) -> Generation:
        """One generate request (fields as in docs/serve.md: steps, seed, num, content...)."""

    @abstractmethod
    def stream(self, **fields: Any) -> Iterator[Union[Step, Generation]]:
        """A generate request with `"stream": true` (`every` among the fields sets how often):
        its `Step`s as they come, then its `Generation`; an error raises its DlmError.
        Leaving the iterator early abandons the request's answer."""

    @abstractmethod
    def generate_many(self, requests: Sequence[dict[str, Any]], in_flight: int = 16,
                      progress: Optional[Progress] = None) -> list[Generation]:
        """Every request's answer, in request order, with up to `in_flight` of them at the
        server at once; the first error raises, with `.request` the request it answers."""

    @abstractmethod
    def health(self) -> Health:
        """The service's state."""

    @abstractmethod
    def metrics(self) -> str:
        """The OpenMetrics text of `GET /metrics`."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (and, for `spawn`, wait for the server to exit)."""

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()


def generate_fields(fields: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The body of a generate request: the caller's fields, `stream` set by the call; the
    fields that the client itself owns are refused (TypeError)."""
    for owned, why in (("id", "the client numbers its requests"), ("op", "each call is its own op"),
                       ("stream", "stream() streams, generate() does not")):
        if owned in fields:
            raise TypeError(f"generate fields may not include {owned!r}: {why}")
    return {**fields, "stream": True} if stream else dict(fields)


def check_in_flight(in_flight: int) -> None:
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise ValueError(f"in_flight must be an integer >= 1, got {in_flight!r}")
