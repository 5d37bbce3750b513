"""A typed client for `dlm serve` (docs/serve.md): HTTP, or the line protocol over TCP, a Unix
socket or a spawned server's stdio; sync calls, pipelined batches, streamed denoising steps,
and the server's error codes as exceptions.

    from dlm_client import Client
    with Client.http("http://127.0.0.1:8080") as dlm:
        print(dlm.generate(steps=50, content="food=Italian", seed=1).texts)
"""
from .answers import Generation, Health, Result, Step, Timings
from .client import Client, Progress
from .errors import (BadRequest, Busy, DlmError, Internal, InvalidArgument, Loading, ProtocolError,
                     ShuttingDown, Timeout, TooLarge, TransportError, Unauthorized)
from .http import HttpClient
from .lines import LineClient

__version__ = "0.1.0"

__all__ = ["BadRequest", "Busy", "Client", "DlmError", "Generation", "Health", "HttpClient", "Internal",
           "InvalidArgument", "LineClient", "Loading", "Progress", "ProtocolError", "Result", "ShuttingDown",
           "Step", "Timeout", "Timings", "TooLarge", "TransportError", "Unauthorized"]
