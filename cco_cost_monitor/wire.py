"""Parsing of every frame the CCO proxy and gateway send: pure, no I/O.

Formats (see the wire-format spec): the current ``analytics`` snapshot
(``project``/``machine``/``activity``), the early six-field activity events (same
snapshot, no ``status``/``cost``), the old ``{cache, models, totals}`` snapshot, the
``error`` event, and the gateway's ``stream_event`` / ``lag`` stream.

Models ignore unknown keys and accept missing optional fields, but are strict about
types: a token count sent as a string is an error, not a guess. :func:`parse_frame`
turns one SSE event (name + data) into one of the frame types or raises
:class:`~cco_cost_monitor.errors.WireError` with a short, bounded ``kind`` for counters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from cco_cost_monitor.errors import WireError

__all__ = [
    "ActivityEvent",
    "Frame",
    "GatewayCompleted",
    "GatewayError",
    "GatewayEvent",
    "GatewayLag",
    "GatewayStarted",
    "GatewayTextDelta",
    "OldModelTotals",
    "OldSnapshot",
    "ProxyError",
    "Snapshot",
    "event_key",
    "parse_frame",
    "parse_timestamp",
]

#: The largest cost in USD a frame may carry, of one event or a proxy's whole history: a
#: billion dollars is absurd for either, and sums of values this size stay finite. A value
#: outside [-MAX_COST_USD, MAX_COST_USD] (1e308, NaN) refuses its frame as ``invalid_value``
#: instead of poisoning the totals, the saved state and every later start. (A literal too
#: large for a double, 1e400, is already ``invalid_json``.)
MAX_COST_USD = 1e9
#: The largest count a frame may carry (calls, requests, uptime in seconds, latency in ms):
#: 10**12, so that even millions of sums of maxima stay inside SQLite's and JSON's 64-bit
#: integers (2**63 - 1 is 9.2 million times larger) and exact in a double (2**53).
MAX_COUNT = 10**12
#: The most tokens one request may carry: no model reads or writes a billion.
MAX_TOKENS = 10**9

# Integers are accepted where floats are expected (JSON writes 0 for 0.0 in some encoders)
# and read as floats, but never strings or booleans. A strict ``float`` checks its bounds
# inside pydantic-core: as fast as the unbounded ``StrictFloat | StrictInt`` it replaces
# (26.6 vs 26.9 us per 20-event snapshot, best of 4), where the same bounds on that union
# cost 40 % more (31 vs 22 us).
Number = Annotated[
    float, Field(strict=True, ge=-MAX_COST_USD, le=MAX_COST_USD, allow_inf_nan=False)
]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
Tokens = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]
#: Pydantic's error types for a value of the right type outside its bounds.
_BOUND_ERRORS = frozenset(
    {"less_than_equal", "greater_than_equal", "finite_number", "less_than", "greater_than"}
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ActivityEvent(_Lenient):
    """One entry of the proxy's activity ring. Has no id: identity is its full content."""

    timestamp: str
    event_type: str
    agent_name: str | None = None
    model: str | None = None
    tokens: Tokens | None = None
    latency_ms: Count | None = None
    status: str | None = None
    cost: Number | None = None


class ProjectTotals(_Lenient):
    """Cumulative totals since the proxy's history began (reloaded at proxy start-up)."""

    name: str | None = None
    cost: Number | None = None
    calls: Count | None = None
    last_updated: str | None = None


class MachineInfo(_Lenient):
    """Only ``uptime`` means anything; it restarts from 0 when the proxy restarts."""

    uptime: Count | None = None


class Snapshot(_Lenient):
    """The current (and early six-field) ``analytics`` snapshot."""

    project: ProjectTotals = Field(default_factory=ProjectTotals)
    machine: MachineInfo = Field(default_factory=MachineInfo)
    activity: list[ActivityEvent] = Field(default_factory=list)


class OldModelTotals(_Lenient):
    """Cumulative per-model totals of the old snapshot format."""

    model: str
    requests: Count = 0
    cache_hits: Count = 0
    cache_misses: Count = 0
    actual_cost: Number = 0.0
    would_be_cost: Number = 0.0
    savings: Number = 0.0


class OldTotals(_Lenient):
    requests: Count = 0
    actual_cost: Number = 0.0
    would_be_cost: Number = 0.0
    total_savings: Number = 0.0


class OldSnapshot(_Lenient):
    """The snapshot format before 2025-11-15 20:45: totals only, no events."""

    models: list[OldModelTotals] = Field(default_factory=list)
    totals: OldTotals


class ProxyError(_Lenient):
    """An ``error`` event: the proxy failed to serialise a snapshot."""

    error: str = ""


class GatewayStarted(_Lenient):
    type: Literal["started"]
    request_id: str
    model: str
    agent_type: str | None = None


class GatewayTextDelta(_Lenient):
    type: Literal["text_delta"]
    request_id: str


class GatewayCompleted(_Lenient):
    type: Literal["completed"]
    request_id: str
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cost_usd: Number | None = None


class GatewayError(_Lenient):
    type: Literal["error"]
    request_id: str
    message: str = ""


GatewayEvent = Annotated[
    GatewayStarted | GatewayTextDelta | GatewayCompleted | GatewayError,
    Field(discriminator="type"),
]


class _GatewayEnvelope(BaseModel):
    event: GatewayEvent


class GatewayLag(_Lenient):
    """The gateway dropped ``skipped`` events for a slow subscriber."""

    skipped: Count = 0


Frame = (
    Snapshot
    | OldSnapshot
    | ProxyError
    | GatewayStarted
    | GatewayTextDelta
    | GatewayCompleted
    | GatewayError
    | GatewayLag
)


def _load_object(data: str) -> dict[str, object]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WireError("invalid_json", str(exc)) from None
    if not isinstance(value, dict):
        raise WireError("invalid_shape", f"expected a JSON object, got {type(value).__name__}")
    return value


def _shape_error(exc: ValidationError) -> WireError:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    # A number of the right type but absurd (see MAX_COST_USD) is its own kind: a broken
    # or hostile proxy, not a format we do not know.
    kind = "invalid_value" if all(e["type"] in _BOUND_ERRORS for e in errors) else "invalid_shape"
    return WireError(kind, f"{where}: {first['msg']}")


def parse_frame(event: str, data: str) -> Frame:
    """Parse one SSE event. ``event`` is the SSE event name ('' means 'message')."""
    name = event or "message"
    body = _load_object(data)
    try:
        if name in ("analytics", "message"):
            if "project" in body or "activity" in body:
                return Snapshot.model_validate(body)
            if "totals" in body:
                return OldSnapshot.model_validate(body)
            if name == "message" and "type" in body:
                return _GatewayEnvelope.model_validate({"event": body}).event
            raise WireError("unknown_format", f"no project/totals key in {sorted(body)[:8]}")
        if name == "error":
            return ProxyError.model_validate(body)
        if name == "stream_event":
            return _GatewayEnvelope.model_validate({"event": body}).event
        if name == "lag":
            return GatewayLag.model_validate(body)
    except ValidationError as exc:
        raise _shape_error(exc) from None
    raise WireError("unknown_event", f"event {name[:40]!r}")


def event_key(event: ActivityEvent) -> str:
    """The identity of an activity event: every field, the timestamp at full precision.

    ``repr`` of the cost keeps the exact float the proxy printed, so two events differ
    in key whenever they differ on the wire.
    """
    return "\x1f".join(
        (
            event.timestamp,
            event.event_type,
            event.model or "",
            "" if event.tokens is None else str(event.tokens),
            "" if event.latency_ms is None else str(event.latency_ms),
            event.status or "",
            "" if event.cost is None else repr(float(event.cost)),
            event.agent_name or "",
        )
    )


#: Event times outside [EARLIEST, LATEST) are a clock gone wrong, not events: they count at
#: the time they were seen. Inside it, epoch seconds as a double keep every microsecond
#: (the store relies on that), and datetime arithmetic cannot leave its range.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def parse_timestamp(value: str | None) -> datetime | None:
    """RFC 3339 with 0-9 fractional digits; ``None`` when absent, unreadable or out of range.

    The proxy's own shape (nanoseconds, cut to microseconds) takes :func:`_parse_fast`, 5x
    faster than normalising first (190 vs 1,050 ns); anything else takes
    :func:`_parse_lenient`, which gives the same result for everything both read
    (tests/test_wire.py).
    """
    if not value:
        return None
    parsed = _parse_fast(value)
    if parsed is None:
        parsed = _parse_lenient(value)
    if parsed is None or not EARLIEST <= parsed < LATEST:
        return None
    return parsed


#: The separators of ``YYYY-MM-DD?HH:MM:SS`` (characters 4, 7, 10, 13 and 16), as read by
#: ``text[4:17:3]``: Python 3.11's ``fromisoformat`` also reads shortened times
#: (``18:27.01`` as 18:27:00.01) that RFC 3339 does not have, with a value nobody meant.
_PROXY_SHAPE = "--T::"
_RFC_3339_SHAPES = ("--T::", "--t::", "-- ::")


def _parse_fast(value: str) -> datetime | None:
    """``fromisoformat`` for the proxy's own shape (``T``, no padding), else ``None``."""
    if len(value) < 20 or value[4:17:3] != _PROXY_SHAPE:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _parse_lenient(value: str) -> datetime | None:
    """Normalise an RFC 3339 timestamp (``z``, whitespace, any fraction) before parsing."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if len(text) < 20 or text[4:17:3] not in _RFC_3339_SHAPES:
        return None
    # Python keeps microseconds: cut nanosecond digits before parsing (identity keeps them).
    dot = text.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        fraction = text[dot + 1 : end][:6]
        text = text[:dot] + ("." + fraction.ljust(6, "0") if fraction else "") + text[end:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed
