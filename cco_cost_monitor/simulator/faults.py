"""The simulator's scriptable faults: their names, parameters and defaults. Pure, no I/O.

A fault arrives either as JSON (``POST /_sim/fault`` with ``{"kind": ..., ...params}``) or
as a command-line spec ``AT:KIND[:ARG]`` (``--fault 30:restart:0.5``), where ``ARG`` is the
kind's main parameter. :class:`Fault` is the validated form; the server applies it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

__all__ = [
    "FAULT_HELP",
    "Fault",
    "FaultKind",
    "ScheduledFault",
    "parse_fault_spec",
    "parse_size",
]

FaultKind = Literal[
    "restart",
    "burst",
    "drop",
    "http_500",
    "http_401",
    "garbage",
    "bad_json",
    "stall",
    "huge_line",
    "many_lines",
    "error_event",
    "wrong_content_type",
    "lag",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

DEFAULT_HUGE_LINE = 10 * 1024 * 1024
DEFAULT_ERROR_MESSAGE = "Serialization failed: key must be a string"

# kind -> (main parameter that ARG sets, one-line help)
FAULT_HELP: dict[str, tuple[str | None, str]] = {
    "restart": (
        "down_seconds",
        "proxy restart after a snapshot: refused for ARG s, totals reloaded",
    ),
    "burst": ("count", "ARG extra requests (default 50) inside one interval"),
    "drop": (None, "close every open stream connection"),
    "http_500": ("count", "the next ARG connection attempts (default 1) get HTTP 500 + JSON"),
    "http_401": ("count", "the next ARG connection attempts (default 1) get HTTP 401 + JSON"),
    "garbage": (None, "one malformed frame"),
    "bad_json": (None, "an analytics event whose data is not valid JSON"),
    "stall": ("seconds", "send nothing at all, not even keep-alives, for ARG s (default 60)"),
    "huge_line": ("size", "one data: line of ARG bytes (default 10M; K/M suffixes), chunked"),
    "many_lines": ("size", "one event of ARG bytes (default 10M) in short data: lines, one blank"),
    "error_event": ("message", "event:error with the proxy's serialization-failure body"),
    "wrong_content_type": ("count", "the next ARG connection attempts get 200 text/html"),
    "lag": ("skipped", "gateway subscribers lose ARG events (default 3), then get event:lag"),
}


def parse_size(text: str) -> int:
    """Bytes from ``"123"``, ``"64K"``, ``"10M"`` (binary units)."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024}
    factor = 1
    if cleaned and cleaned[-1] in units:
        factor = units[cleaned[-1]]
        cleaned = cleaned[:-1]
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use bytes, or a K/M suffix)") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"size must be at least 1 byte: {text!r}")
    return int(value * factor)


@dataclass(frozen=True, slots=True)
class Fault:
    """One validated fault. Only the parameters of its kind matter."""

    kind: FaultKind
    count: int = 1
    seconds: float = 60.0
    down_seconds: float | None = None
    size: int = DEFAULT_HUGE_LINE
    message: str = DEFAULT_ERROR_MESSAGE
    skipped: int = 3
    abort: bool = False
    save_first: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        for name, limit in (("count", 1_000_000), ("skipped", 1_000_000), ("size", 1 << 30)):
            value = getattr(self, name)
            if not 1 <= value <= limit:
                raise ValueError(f"{name} must be between 1 and {limit}, not {value}")
        for name in ("seconds", "down_seconds"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 86_400:
                raise ValueError(f"{name} must be between 0 and 86400 seconds")

    @classmethod
    def from_json(cls, body: object) -> Fault:
        """Validate a ``POST /_sim/fault`` body; ``burst`` defaults to 50 events."""
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
            raise ValueError('expected a JSON object with a string "kind"')
        params = dict(body)
        kind = params.pop("kind")
        allowed = {f for f in cls.__dataclass_fields__ if f != "kind"}
        unknown = set(params) - allowed
        if unknown:
            raise ValueError(f"unknown parameter(s) for {kind}: {', '.join(sorted(unknown))}")
        if kind == "burst":
            params.setdefault("count", 50)
        typed: dict[str, Any] = {}
        for name, value in params.items():
            typed[name] = _coerce(name, value)
        return cls(kind=cast(FaultKind, kind), **typed)

    def to_json(self) -> dict[str, Any]:
        """The fault with only its own kind's parameters."""
        main = FAULT_HELP[self.kind][0]
        extra = {"drop": ("abort",), "restart": ("save_first",)}.get(self.kind, ())
        data = asdict(self)
        return {"kind": self.kind} | {k: data[k] for k in (main, *extra) if k is not None}


def _coerce(name: str, value: object) -> object:
    if name in ("abort", "save_first"):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if name == "message":
        if not isinstance(value, str):
            raise ValueError("message must be a string")
        return value
    if name in ("seconds", "down_seconds"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if name == "size" and isinstance(value, str):
        return parse_size(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    """A fault to apply ``at`` seconds after the simulator started."""

    at: float
    fault: Fault


def parse_fault_spec(spec: str) -> ScheduledFault:
    """Parse ``AT:KIND[:ARG]``, e.g. ``30:restart``, ``10:burst:80``, ``5:huge_line:1M``."""
    parts = spec.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"expected AT:KIND[:ARG], got {spec!r}")
    at_text, kind = parts[0].strip(), parts[1].strip()
    try:
        at = float(at_text)
    except ValueError:
        raise ValueError(f"AT must be seconds after start, got {at_text!r}") from None
    if not (math.isfinite(at) and at >= 0):
        raise ValueError(f"AT must be >= 0, got {at_text!r}")
    if kind not in FAULT_HELP:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
    body: dict[str, object] = {"kind": kind}
    if len(parts) == 3:
        main = FAULT_HELP[kind][0]
        if main is None:
            raise ValueError(f"fault {kind} takes no argument")
        arg = parts[2]
        value: object
        if main == "message":
            value = arg
        elif main == "size":
            value = parse_size(arg)
        elif main in ("seconds", "down_seconds"):
            try:
                value = float(arg)
            except ValueError:
                raise ValueError(f"{kind}: {main} must be a number, got {arg!r}") from None
        else:
            try:
                value = int(arg)
            except ValueError:
                raise ValueError(f"{kind}: {main} must be an integer, got {arg!r}") from None
        body[main] = value
    return ScheduledFault(at=at, fault=Fault.from_json(body))
