"""The simulator's scriptable faults: their names, parameters and defaults. Pure, no I/O.

A fault arrives either as JSON (``POST /_sim/fault`` with ``{"kind": ..., ...params}``) or
as a command-line spec ``AT:KIND[:ARG]`` (``--fault 30:restart:0.5``), where ``ARG`` is the
kind's main parameter, or ``key=value`` pairs separated by commas, optionally after the main
value (``--fault 30:restart:0.5,hidden=true,reload=nothing``). Each kind takes only its own
parameters (:data:`FAULT_PARAMS`); an unknown one is refused with the list of valid ones.
:class:`Fault` is the validated form; the server applies it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

__all__ = [
    "FAULT_HELP",
    "FAULT_PARAMS",
    "RACE_MODES",
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
    "save",
    "race",
    "identical",
    "orphan_override",
    "failed_call",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

DEFAULT_HUGE_LINE = 10 * 1024 * 1024
DEFAULT_ERROR_MESSAGE = "Serialization failed: key must be a string"
# event_ahead: new events in the window, in neither total; cost_ahead: in the window and in
# cost, not yet in calls; event_late: in both totals, the events only in the next snapshot.
RACE_MODES = ("event_ahead", "cost_ahead", "event_late")
RELOADS = ("saved", "nothing")

# kind -> (main parameter that ARG sets, one-line help)
FAULT_HELP: dict[str, tuple[str | None, str]] = {
    "restart": (
        "down_seconds",
        "proxy restart after a snapshot: down ARG s, totals reloaded from the last save; "
        "reload=nothing (from zero), hidden=true (uptime does not drop), queued=N "
        "(requests before the first snapshot), save_first=true",
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
    "save": (
        "seconds",
        "a save now that holds snapshots back ARG s (default: --save-hold) while "
        "keep-alives flow, then the missed ones fire back to back",
    ),
    "race": (
        "mode",
        "the next snapshot is read while count=N (default 2) requests finish: "
        "event_ahead (default), cost_ahead or event_late",
    ),
    "identical": ("count", "ARG (default 2) byte-identical simulated 100/50-token api_calls"),
    "orphan_override": (
        "count",
        "ARG (default 1) model_override events with no api_call (model=... sets the string)",
    ),
    "failed_call": ("count", "a failed api_call (tokens 0, cost 0.0) and ARG cached repeats"),
}

# kind -> every parameter it takes (the main one first).
FAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "restart": ("down_seconds", "save_first", "hidden", "reload", "queued"),
    "burst": ("count",),
    "drop": ("abort",),
    "http_500": ("count",),
    "http_401": ("count",),
    "garbage": (),
    "bad_json": (),
    "stall": ("seconds",),
    "huge_line": ("size",),
    "many_lines": ("size",),
    "error_event": ("message",),
    "wrong_content_type": ("count",),
    "lag": ("skipped",),
    "save": ("seconds",),
    "race": ("mode", "count"),
    "identical": ("count",),
    "orphan_override": ("count", "model"),
    "failed_call": ("count",),
}
_DEFAULT_COUNTS = {"burst": 50, "identical": 2, "race": 2, "failed_call": 2}
_BOOLS = ("abort", "save_first", "hidden")
_STRINGS = ("message", "mode", "reload", "model")


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
    # stall: 60 s; save: None = the simulator's save_hold.
    seconds: float | None = 60.0
    down_seconds: float | None = None
    size: int = DEFAULT_HUGE_LINE
    message: str = DEFAULT_ERROR_MESSAGE
    skipped: int = 3
    abort: bool = False
    save_first: bool = False
    hidden: bool = False
    reload: str = "saved"
    queued: int = 0
    mode: str = "event_ahead"
    model: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        count_limit = 20 if self.kind == "race" else 1_000_000
        for name, low, limit in (
            ("count", 1, count_limit),
            ("skipped", 1, 1_000_000),
            ("size", 1, 1 << 30),
            ("queued", 0, 1000),
        ):
            value = getattr(self, name)
            if not low <= value <= limit:
                raise ValueError(f"{name} must be between {low} and {limit}, not {value}")
        for name in ("seconds", "down_seconds"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 86_400:
                raise ValueError(f"{name} must be between 0 and 86400 seconds")
        if self.mode not in RACE_MODES:
            raise ValueError(f"mode must be one of {', '.join(RACE_MODES)}, not {self.mode!r}")
        if self.reload not in RELOADS:
            raise ValueError(f"reload must be one of {', '.join(RELOADS)}, not {self.reload!r}")
        if self.model is not None and not 0 < len(self.model) <= 200:
            raise ValueError("model must be 1 to 200 characters")

    @classmethod
    def from_json(cls, body: object) -> Fault:
        """Validate a ``POST /_sim/fault`` body; ``burst`` defaults to 50 events."""
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
            raise ValueError('expected a JSON object with a string "kind"')
        params = dict(body)
        kind = params.pop("kind")
        if kind not in FAULT_PARAMS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        allowed = FAULT_PARAMS[kind]
        unknown = set(params) - set(allowed)
        if unknown:
            valid = ", ".join(allowed) if allowed else "none"
            raise ValueError(
                f"unknown parameter(s) for {kind}: {', '.join(sorted(unknown))}; valid: {valid}"
            )
        if kind in _DEFAULT_COUNTS:
            params.setdefault("count", _DEFAULT_COUNTS[kind])
        if kind == "save":
            params.setdefault("seconds", None)
        typed: dict[str, Any] = {}
        for name, value in params.items():
            typed[name] = _coerce(name, value)
        return cls(kind=cast(FaultKind, kind), **typed)

    def to_json(self) -> dict[str, Any]:
        """The fault with only its own kind's parameters."""
        data = asdict(self)
        return {"kind": self.kind} | {k: data[k] for k in FAULT_PARAMS[self.kind]}


def _coerce(name: str, value: object) -> object:
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if name in _STRINGS:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    if name in ("seconds", "down_seconds"):
        if value is None and name == "seconds":
            return None
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


def _spec_value(kind: str, name: str, arg: str) -> object:
    """A spec's text value as the JSON value of parameter ``name``."""
    if name in _BOOLS:
        lowered = arg.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{kind}: {name} must be true or false, got {arg!r}")
        return lowered in ("true", "1", "yes")
    if name in _STRINGS:
        return arg
    if name == "size":
        return parse_size(arg)
    if name in ("seconds", "down_seconds"):
        try:
            return float(arg)
        except ValueError:
            raise ValueError(f"{kind}: {name} must be a number, got {arg!r}") from None
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"{kind}: {name} must be an integer, got {arg!r}") from None


def parse_fault_spec(spec: str) -> ScheduledFault:
    """Parse ``AT:KIND[:ARG]``, e.g. ``30:restart``, ``10:burst:80``, ``5:huge_line:1M``.

    ``ARG`` may also be ``key=value`` pairs separated by commas, after an optional main
    value: ``30:restart:0.5,hidden=true``, ``9:race:mode=cost_ahead,count=3``. The message
    of ``error_event`` is taken whole (it may contain commas and ``=``).
    """
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
        if main == "message":
            body[main] = arg
        else:
            for i, item in enumerate(arg.split(",")):
                name, sep, text = item.partition("=")
                if not sep:
                    if i:
                        raise ValueError(f"{kind}: expected key=value, got {item!r}")
                    name, text = main, item
                name = name.strip()
                if name not in FAULT_PARAMS[kind]:
                    valid = ", ".join(FAULT_PARAMS[kind])
                    raise ValueError(f"unknown parameter {name!r} for {kind}; valid: {valid}")
                body[name] = _spec_value(kind, name, text)
    return ScheduledFault(at=at, fault=Fault.from_json(body))
