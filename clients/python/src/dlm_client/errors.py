"""Errors as exceptions: the server's stable error code on every one (`DlmError.code`), a
subclass per code, and the client's own two for a server that is gone or speaks no protocol."""
from __future__ import annotations

from typing import Any, Optional


class DlmError(Exception):
    """An error answer of `dlm serve`: its stable `code` (switch on it, never on `message`),
    the server's `message`, the HTTP `status` (None on a line transport, or an error event of a
    stream) and, from `generate_many`, the `request` it answers (None when not known)."""

    code: str = "unknown"

    def __init__(self, code: str, message: str, status: Optional[int] = None,
                 request: Optional[dict[str, Any]] = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status, self.request = code, message, status, request


class BadRequest(DlmError):
    """Not JSON, not an object, an unknown field, a field of the wrong type (HTTP 400)."""
    code = "bad_request"


class InvalidArgument(DlmError):
    """Well-formed but not allowed: steps out of range, an unknown tag... (HTTP 422)."""
    code = "invalid_argument"


class TooLarge(DlmError):
    """A request line or body over the server's `--max-line` (HTTP 413)."""
    code = "too_large"


class Busy(DlmError):
    """The queue is full or every connection is taken; try again later (HTTP 429 or 503)."""
    code = "busy"


class Timeout(DlmError):
    """The request's deadline passed (HTTP 504, or 408 for a body that came too slowly)."""
    code = "timeout"


class ShuttingDown(DlmError):
    """The server is stopping and takes no more work (HTTP 503)."""
    code = "shutting_down"


class Internal(DlmError):
    """ONNX Runtime failed on this request (HTTP 500)."""
    code = "internal"


class Loading(DlmError):
    """The model is still loading (HTTP 503 on every path until it is)."""
    code = "loading"


class Unauthorized(DlmError):
    """A server started with `--api-key` got no key or a wrong one (HTTP 401)."""
    code = "unauthorized"


class TransportError(DlmError):
    """No answer: the server could not be reached, closed the connection, exited (the
    message then holds its exit status and the end of its stderr) or a read timed out."""
    code = "transport"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class ProtocolError(DlmError):
    """An answer that is not `dlm serve`'s wire format (not JSON, a field missing)."""
    code = "protocol"

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(self.code, message, status)


CODES: dict[str, type[DlmError]] = {cls.code: cls for cls in (
    BadRequest, InvalidArgument, TooLarge, Busy, Timeout, ShuttingDown, Internal, Loading, Unauthorized)}


def error_of(code: str, message: str, status: Optional[int] = None) -> DlmError:
    """The exception of an error code: its subclass, or DlmError itself for a code this client
    does not know yet (a newer server's)."""
    cls = CODES.get(code)
    if cls is None:
        return DlmError(code, message, status)
    return cls(code, message, status)
