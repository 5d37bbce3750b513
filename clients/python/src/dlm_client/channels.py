"""Byte channels under the line protocol: a socket (TCP or Unix), or the stdin and stdout of
a `dlm serve --stdio` this process started. Every failure comes out as TransportError."""
from __future__ import annotations

import os
import select
import socket
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from .errors import TransportError


class Channel(ABC):
    @abstractmethod
    def send(self, data: bytes) -> None:
        """Write all of `data`."""

    @abstractmethod
    def recv(self) -> bytes:
        """The next bytes that arrive; b"" at the end of input."""

    @abstractmethod
    def ended(self) -> str:
        """Why input ended: what the client's TransportError says."""

    @abstractmethod
    def close(self) -> None:
        """Close; a second call does nothing."""


class SocketChannel(Channel):
    def __init__(self, sock: socket.socket, name: str, timeout: Optional[float]) -> None:
        self.sock, self.name, self.timeout = sock, name, timeout

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise TransportError(f"{self.name}: sending failed: {e}") from e

    def recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise TransportError(f"{self.name}: no answer within {self.timeout} s") from None
        except OSError as e:
            raise TransportError(f"{self.name}: receiving failed: {e}") from e

    def ended(self) -> str:
        return f"{self.name} closed the connection"

    def close(self) -> None:
        self.sock.close()


class ProcessChannel(Channel):
    """`cmd` started with its stdin and stdout as the channel; its stderr goes to a file (not
    a pipe: a chatty server never blocks on it)."""

    def __init__(self, cmd: list[str], timeout: Optional[float]) -> None:
        self.cmd, self.timeout = cmd, timeout
        self.log = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        except OSError as e:
            self.log.close()
            raise TransportError(f"{cmd[0]}: cannot start it: {e}") from e
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both piped above
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout.fileno()

    def send(self, data: bytes) -> None:
        try:
            self.stdin.write(data)
            self.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: stdin already closed
            raise TransportError(self.ended()) from None

    def recv(self) -> bytes:
        if self.timeout is not None and not select.select([self.stdout], [], [], self.timeout)[0]:
            raise TransportError(f"{' '.join(self.cmd)}: no answer within {self.timeout} s")
        return os.read(self.stdout, 65536)

    def ended(self) -> str:
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            return f"{' '.join(self.cmd)} closed its stdout but still runs"
        self.log.seek(0)
        tail = self.log.read()[-4000:].decode("utf-8", errors="replace").strip()
        return f"{' '.join(self.cmd)} exited with status {code}: {tail or '(nothing on stderr)'}"

    def close(self) -> None:
        if self.log.closed:
            return
        try:
            try:
                self.stdin.close()  # end of input: the server answers what it read and exits
            except BrokenPipeError:  # it had exited: what was buffered for it is dropped
                pass
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()  # type: ignore[union-attr]
            self.log.close()


def tcp_channel(address: Union[str, tuple[str, int]], timeout: Optional[float]) -> Channel:
    """A TCP connection to "host:port" (or (host, port)), with TCP_NODELAY."""
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a TCP address is host:port, got {address!r}")
        address = (host.strip("[]"), int(port))
    name = f"tcp {address[0]}:{address[1]}"
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except OSError as e:
        raise TransportError(f"{name}: cannot connect: {e}") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a request line goes out at once
    return SocketChannel(sock, name, timeout)


def unix_channel(path: Union[str, Path], timeout: Optional[float]) -> Channel:
    """A connection to the Unix socket at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise TransportError(f"unix {path}: cannot connect: {e}") from e
    return SocketChannel(sock, f"unix {path}", timeout)


def spawn_channel(dlm_path: Union[str, Path], model_dir: Union[str, Path], flags: Sequence[str],
                  timeout: Optional[float]) -> Channel:
    """`dlm serve --stdio --model MODEL_DIR FLAGS...`, started."""
    if isinstance(flags, str):
        raise TypeError("flags is a sequence of arguments, not one string")
    cmd = [str(dlm_path), "serve", "--stdio", "--model", str(model_dir), *map(str, flags)]
    return ProcessChannel(cmd, timeout)
