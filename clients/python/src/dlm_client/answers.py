"""What the server answers, typed: a `Generation` (the final answer of a generate request),
each `Step` of a streamed one, and `Health`. Each keeps the object it was read from as `raw`,
so a field a newer server adds is not lost."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import DlmError, ProtocolError, error_of


@dataclass(frozen=True)
class Result:
    """One output sequence: its text, its tokens and, when a rerank scored fluency, the mean
    token NLL under the model's language model."""
    text: str
    tokens: list[str]
    lm_nll: Optional[float] = None


@dataclass(frozen=True)
class Timings:
    """Where the request's time went, in milliseconds (`steps`: the budget it ran)."""
    queue_ms: float
    run_ms: float
    total_ms: float
    steps: int
    denoiser_ms: float
    guidance_ms: float
    host_ms: float


@dataclass(frozen=True)
class Generation:
    """The answer of a generate request; `seed` replays it."""
    texts: list[str]
    results: list[Result]
    seed: int
    timings: Timings
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


@dataclass(frozen=True)
class Step:
    """A streamed step: `step` of `of` steps done, at model timestep `t`; `texts` holds the
    rounded x0_hat of every sequence the request draws (None for one not started yet)."""
    step: int
    of: int
    t: int
    texts: list[Optional[str]]


@dataclass(frozen=True)
class Health:
    """The service's state (`status`: "serving" or "shutting_down"); `model` as the server
    describes it (dir, controls, seq_len, max_steps, precision, provider)."""
    status: str
    engine_alive: bool
    busy: bool
    queue_depth: int
    queue_capacity: int
    active_sequences: int
    max_batch: int
    served: int
    uptime_s: float
    model: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)


def _get(obj: dict[str, Any], key: str, kind: Union[type, tuple[type, ...]], what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):  # JSON true is no number
        raise ProtocolError(f"{what} has no valid {key!r}: {obj!r:.300}")
    return value


def generation_of(obj: dict[str, Any], status: Optional[int] = None) -> Generation:
    """A final answer object as a Generation, or the DlmError its error carries."""
    if obj.get("ok") is not True:
        raise failure_of(obj, status)
    results = []
    for r in _get(obj, "results", list, "an answer"):
        if not isinstance(r, dict):
            raise ProtocolError(f"an answer's result is not an object: {r!r:.300}")
        nll = r.get("lm_nll")
        results.append(Result(_get(r, "text", str, "a result"), list(_get(r, "tokens", list, "a result")),
                              float(nll) if isinstance(nll, (int, float)) else None))
    t = _get(obj, "timings", dict, "an answer")
    ms = {k: float(_get(t, k, (int, float), "timings"))
          for k in ("queue_ms", "run_ms", "total_ms", "denoiser_ms", "guidance_ms", "host_ms")}
    timings = Timings(steps=_get(t, "steps", int, "timings"), **ms)
    return Generation(list(_get(obj, "texts", list, "an answer")), results, _get(obj, "seed", int, "an answer"),
                      timings, obj)


def failure_of(obj: dict[str, Any], status: Optional[int] = None) -> DlmError:
    """The exception of an error answer ({"ok": false, "error": {"code", "message"}})."""
    error = obj.get("error")
    if obj.get("ok") is not False or not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return ProtocolError(f"neither an answer nor an error: {obj!r:.300}", status)
    return error_of(error["code"], str(error.get("message", "")), status)


def step_of(obj: dict[str, Any]) -> Step:
    """A step event object ({"event": "step", "step", "of", "t", "texts"})."""
    texts = _get(obj, "texts", list, "a step event")
    if not all(t is None or isinstance(t, str) for t in texts):
        raise ProtocolError(f"a step event's texts are not strings or null: {obj!r:.300}")
    return Step(_get(obj, "step", int, "a step event"), _get(obj, "of", int, "a step event"),
                _get(obj, "t", int, "a step event"), texts)


def health_of(obj: dict[str, Any]) -> Health:
    """The `health` object of a health answer."""
    h = obj.get("health")
    if not isinstance(h, dict):
        raise failure_of(obj)
    ints = {k: _get(h, k, int, "health") for k in ("queue_depth", "queue_capacity", "active_sequences",
                                                    "max_batch", "served")}
    return Health(status=_get(h, "status", str, "health"), engine_alive=_get(h, "engine_alive", bool, "health"),
                  busy=_get(h, "busy", bool, "health"), uptime_s=float(_get(h, "uptime_s", (int, float), "health")),
                  model=_get(h, "model", dict, "health"), raw=h, **ints)
