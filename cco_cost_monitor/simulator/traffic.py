"""The simulated proxy's traffic and framing: pure, no I/O, no clock.

Owns the requests a CCO proxy sees and how its frames look on the wire:

- the proxy's price table and model mix (model names the proxy really records);
- :class:`TrafficGenerator` -- seeded, realistic requests (a Poisson process), bursts and
  flood batches, with strictly increasing, hence unique, timestamps;
- :class:`ActivityEvent` -- one ring entry and its wire object (eight or six keys);
- the proxy's odd records: byte-identical simulated-era responses, overrides with no
  following ``api_call`` (client model strings, some non-ASCII), failed calls (tokens 0,
  cost 0.0) and their cached repeats;
- :func:`format_timestamp` (chrono's AutoSi RFC 3339), :func:`sse_frame` (axum 0.7's
  ``name: value`` framing, or the older ``name:value``), :func:`split_frame` (a frame cut
  into chunks inside a multi-byte UTF-8 character) and the gateway's ``stream_event`` frames.

Every time is an argument (integer nanoseconds since the epoch), so all of it is testable.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = [
    "CLIENT_MODELS",
    "KEEPALIVE_FRAME",
    "KEEPALIVE_FRAME_SPACED",
    "MODEL_MIX",
    "OVERRIDES",
    "PING_FRAME",
    "PROXY_PRICES",
    "ActivityEvent",
    "ModelPrice",
    "TrafficGenerator",
    "TrafficProfile",
    "WireFormat",
    "format_timestamp",
    "gateway_frames",
    "split_frame",
    "sse_frame",
]

WireFormat = Literal["current", "early", "old"]

KEEPALIVE_FRAME = b":keep-alive\n\n"
# axum 0.7's KeepAlive writes the comment with one space, like its fields.
KEEPALIVE_FRAME_SPACED = b": keep-alive\n\n"
PING_FRAME = b":ping\n\n"
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens, as in the proxy's own price table."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """The proxy's figure: input plus output at this price, no cache tokens."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


# The proxy records an event only for a model that is a key of its table, so every name the
# generator uses is here. List prices from the pricing spec; gpt-4 at OpenAI's list price.
PROXY_PRICES: dict[str, ModelPrice] = {
    "claude-opus-4-5-20251101": ModelPrice(5.0, 25.0),
    "claude-opus-4-1-20250805": ModelPrice(15.0, 75.0),
    "claude-opus-4": ModelPrice(15.0, 75.0),
    "claude-sonnet-4-5-20250929": ModelPrice(3.0, 15.0),
    "claude-sonnet-4.5": ModelPrice(3.0, 15.0),
    "claude-sonnet-4": ModelPrice(3.0, 15.0),
    "claude-3-5-haiku-20241022": ModelPrice(0.8, 4.0),
    "claude-haiku-4.5": ModelPrice(1.0, 5.0),
    "claude-3-haiku-20240307": ModelPrice(0.25, 1.25),
    "gpt-4": ModelPrice(30.0, 60.0),
}

# Relative request weights of the ordinary mix (tiny-cost and unpriced traffic are separate).
MODEL_MIX: tuple[tuple[str, float], ...] = (
    ("claude-sonnet-4-5-20250929", 30.0),
    ("claude-sonnet-4", 12.0),
    ("claude-sonnet-4.5", 4.0),
    ("claude-opus-4-1-20250805", 10.0),
    ("claude-opus-4", 5.0),
    ("claude-opus-4-5-20251101", 6.0),
    ("claude-3-5-haiku-20241022", 14.0),
    ("claude-haiku-4.5", 12.0),
    ("gpt-4", 3.0),
)

# model_override: the model the proxy really called -> the requested (original) model.
OVERRIDES: dict[str, str] = {
    "claude-sonnet-4": "claude-sonnet-4.5",
    "claude-sonnet-4-5-20250929": "claude-opus-4",
    "claude-haiku-4.5": "claude-sonnet-4-5-20250929",
    "claude-3-5-haiku-20241022": "claude-opus-4-1-20250805",
}
# What clients ask for when an agent rule rewrites to a bare name the price table lacks
# (``haiku``/``sonnet``/``opus``): only the ``model_override`` is recorded, with the client's
# original string -- any string, including pasted en dashes, non-breaking hyphens, emoji.
CLIENT_MODELS: tuple[str, ...] = (
    "claude-sonnet-4.5",
    "claude-opus-4",
    "claude-opus-4\u20131",
    "claude\u2011sonnet\u20114.5",
    "claude-haiku-4.5 \U0001f680",
    "sonnet",
)
# Simulated-era responses (until the proxy forwarded real traffic): 100 in / 50 out, latency 0.
SIMULATED_SPLIT = (100, 50)
_MIX_NAMES = [m for m, _ in MODEL_MIX]
_MIX_CUMULATIVE = list(itertools.accumulate(w for _, w in MODEL_MIX))
_TINY_MODEL = "claude-3-haiku-20240307"
_UNPRICED_PROXY_PRICE = ModelPrice(2.0, 8.0)

# (median input tokens, median output tokens, median latency ms) by tier.
_SHAPES: dict[str, tuple[float, float, float]] = {
    "opus": (6000.0, 900.0, 7000.0),
    "sonnet": (4000.0, 600.0, 3500.0),
    "haiku": (1500.0, 250.0, 900.0),
    "other": (2500.0, 400.0, 2500.0),
}


def _tier(model: str) -> str:
    lowered = model.lower()
    return next((t for t in ("opus", "sonnet", "haiku") if t in lowered), "other")


@functools.lru_cache(maxsize=64)
def _whole_seconds(secs: int) -> str:
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_timestamp(ns: int, digits: int | None = None) -> str:
    """RFC 3339 with ``+00:00``, like chrono's ``to_rfc3339_opts(AutoSi, false)``.

    ``digits=None`` prints 0, 3, 6 or 9 fractional digits, the fewest that are exact;
    ``digits=6`` always prints microseconds (the early proxy's form).
    """
    secs, frac = divmod(ns, _NS)
    base = _whole_seconds(secs)
    if digits == 6:
        return f"{base}.{frac // 1000:06d}+00:00"
    if frac == 0:
        fraction = ""
    elif frac % 1_000_000 == 0:
        fraction = f".{frac // 1_000_000:03d}"
    elif frac % 1000 == 0:
        fraction = f".{frac // 1000:06d}"
    else:
        fraction = f".{frac:09d}"
    return f"{base}{fraction}+00:00"


def sse_frame(event: str, data: bytes, *, spaced: bool = False) -> bytes:
    """One SSE event as axum 0.7 writes it (``name: value``), or unspaced as axum before 0.7."""
    sep = b": " if spaced else b":"
    return b"event" + sep + event.encode() + b"\ndata" + sep + data + b"\n\n"


def split_frame(frame: bytes) -> list[bytes]:
    """``frame`` cut into chunks the way a network may deliver it (joined, they are ``frame``).

    Cuts after the first byte (inside the field name), inside the first multi-byte UTF-8
    character if there is one (right after its lead byte), and between the two newlines
    that end the frame. A reader that decodes chunk by chunk breaks on the second cut.
    """
    cuts = {1}
    lead = next((i for i, b in enumerate(frame) if b >= 0xC0), None)
    if lead is not None:
        cuts.add(lead + 1)
    if frame.endswith(b"\n\n"):
        cuts.add(len(frame) - 1)
    points = sorted(c for c in cuts if 0 < c < len(frame))
    return [frame[a:b] for a, b in itertools.pairwise([0, *points, len(frame)])]


@dataclass(frozen=True, slots=True)
class ActivityEvent:
    """One entry of the proxy's ring, plus generator-side facts that never go on the wire."""

    timestamp: str
    ts_ns: int
    event_type: str
    model: str
    tokens: int | None
    latency_ms: int | None
    status: str | None
    cost: float | None
    # What the request would have cost without the response cache (cache_hit: its price).
    would_be_cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    # Which odd record this is: "" (ordinary), "identical" (a byte-identical twin of the
    # previous event), "orphan_override", "failed" or "failed_repeat".
    note: str = ""

    @property
    def counts_as_call(self) -> bool:
        """``project.calls`` counts proxied calls and cache hits, not overrides."""
        return self.event_type in ("api_call", "cache_hit")

    def to_wire(self, fmt: WireFormat = "current") -> dict[str, Any]:
        """The event object in the proxy's key order (eight keys; six in the early format)."""
        wire: dict[str, Any] = {
            "timestamp": self.timestamp,
            "event_type": self.event_type,
            "agent_name": None,
            "model": self.model,
            "tokens": self.tokens,
            "latency_ms": self.latency_ms,
        }
        if fmt != "early":
            wire["status"] = self.status
            wire["cost"] = self.cost
        return wire


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    """What the traffic looks like; changeable at run time (``POST /_sim/traffic``)."""

    rate: float = 0.5
    cache_hit_rate: float = 0.1
    override_rate: float = 0.05
    unpriced_rate: float = 0.0
    unpriced_model: str = "acme-nova-1"
    coarse_timestamp_rate: float = 0.05
    tiny_cost_rate: float = 0.02
    gateway_error_rate: float = 0.02
    # The proxy's odd records (realistic mode; 0 turns each off).
    identical_rate: float = 0.02
    orphan_override_rate: float = 0.02
    failed_rate: float = 0.02

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            expected = str if name == "unpriced_model" else (int, float)
            if isinstance(value, bool) or not isinstance(value, expected):
                raise TypeError(f"{name} has the wrong type: {value!r}")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"rate must be a finite number >= 0, not {self.rate!r}")
        for name in (
            "cache_hit_rate",
            "override_rate",
            "unpriced_rate",
            "coarse_timestamp_rate",
            "tiny_cost_rate",
            "gateway_error_rate",
            "identical_rate",
            "orphan_override_rate",
            "failed_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        if not self.unpriced_model:
            raise ValueError("unpriced_model must not be empty")


class TrafficGenerator:
    """Seeded requests with strictly increasing timestamps (except identical twins).

    Arrivals form a Poisson process of ``profile.rate`` per second; a request is one
    ``api_call`` or ``cache_hit``, preceded by a ``model_override`` now and then. Now and
    then, too (the profile's rates): two byte-identical simulated responses with one
    microsecond timestamp, an override that no ``api_call`` follows (not a request), or a
    failed call (``api_call`` tokens 0, cost 0.0) followed by its cached repeats.
    """

    # Caps the work of one catch-up (a huge rate or a long gap cannot freeze the server).
    MAX_EVENTS_PER_STEP = 20_000

    def __init__(
        self, profile: TrafficProfile, seed: int | None = None, *, timestamp_digits: int | None
    ) -> None:
        self.profile = profile
        self._rng = random.Random(seed)
        # Arrival times and gateway details have their own streams: the sequence of requests
        # does not depend on when steps happen or on who subscribes.
        self._arrival_rng = random.Random(None if seed is None else f"{seed}-arrivals")
        self._gateway_rng = random.Random(None if seed is None else f"{seed}-gateway")
        self._digits = timestamp_digits
        self._resolution = 1000 if timestamp_digits == 6 else 1
        self._last_ns = 0
        self._next_arrival: int | None = None
        self._request_no = 0
        self._flood_pool: list[ActivityEvent] = []
        self._twin: ActivityEvent | None = None
        # Models whose last request failed: the proxy's cache answers their repeats.
        self._failed_models: deque[str] = deque(maxlen=4)
        self._flood_cycle: Iterator[ActivityEvent] = iter(())

    def set_profile(self, profile: TrafficProfile) -> None:
        """Switch the profile; a new rate takes effect from the next step."""
        self.profile = profile
        self._next_arrival = None

    @property
    def last_ns(self) -> int:
        """The newest timestamp issued (0 before the first)."""
        return self._last_ns

    def reset_clock(self, now_ns: int) -> None:
        """Forget pending arrivals (the proxy was down; nothing arrived meanwhile)."""
        self._next_arrival = None
        self._last_ns = max(self._last_ns, now_ns)

    def step(self, start_ns: int, end_ns: int, *, extra: int = 0) -> list[ActivityEvent]:
        """The events of the requests arriving in ``(start_ns, end_ns]``, oldest first.

        Arrivals are the Poisson process of ``profile.rate`` plus ``extra`` requests (a
        burst) placed uniformly in the same span.
        """
        if end_ns <= start_ns:
            return []
        arrivals = self._poisson(start_ns, end_ns)
        span = end_ns - start_ns
        spread = self._arrival_rng
        arrivals.extend(start_ns + 1 + int(spread.random() * (span - 1)) for _ in range(extra))
        arrivals.sort()
        events: list[ActivityEvent] = []
        for at in arrivals:
            events.extend(self._request(at))
        return events

    def _gap(self, mean_gap: float) -> int:
        return 1 + int(self._arrival_rng.expovariate(1.0) * mean_gap)

    def _poisson(self, start_ns: int, end_ns: int) -> list[int]:
        rate = self.profile.rate
        if rate <= 0:
            self._next_arrival = None
            return []
        mean_gap = _NS / rate
        # Integer nanoseconds: a float epoch time is only exact to ~256 ns.
        arrival = self._next_arrival
        if arrival is None or arrival <= start_ns:
            arrival = start_ns + self._gap(mean_gap)
        arrivals: list[int] = []
        while arrival <= end_ns:
            if len(arrivals) >= self.MAX_EVENTS_PER_STEP:
                arrival = end_ns + self._gap(mean_gap)
                break
            arrivals.append(arrival)
            arrival += self._gap(mean_gap)
        self._next_arrival = arrival
        return arrivals

    def flood(self, count: int, now_ns: int) -> list[ActivityEvent]:
        """``count`` brand-new ``api_call`` events ending about ``now_ns`` (benchmark load).

        Shapes cycle through a pool drawn once, so that the simulator outruns a monitor;
        only the (unique) timestamps are new.
        """
        if not self._flood_pool:
            self._flood_pool = [self._api_call(0, self._pick_model()) for _ in range(997)]
            self._flood_cycle = itertools.cycle(self._flood_pool)
        events = []
        for i in range(count):
            ns = self._unique(now_ns - count + i, coarse=False)
            t = next(self._flood_cycle)
            events.append(
                ActivityEvent(
                    format_timestamp(ns, self._digits),
                    ns,
                    t.event_type,
                    t.model,
                    t.tokens,
                    t.latency_ms,
                    t.status,
                    t.cost,
                    t.would_be_cost,
                    t.input_tokens,
                    t.output_tokens,
                )
            )
        return events

    def identical(self, count: int, now_ns: int) -> list[ActivityEvent]:
        """``count`` byte-identical simulated-era ``api_call`` events, one microsecond stamp."""
        return self._identical(now_ns, count)

    def orphan_override(
        self, count: int, now_ns: int, model: str | None = None
    ) -> list[ActivityEvent]:
        """``count`` ``model_override`` events that no ``api_call`` follows (no request)."""
        return [self._orphan(now_ns, model) for _ in range(count)]

    def failed_call(self, repeats: int, now_ns: int) -> list[ActivityEvent]:
        """A failed call (``api_call`` tokens 0, cost 0.0) and ``repeats`` cached repeats."""
        return self._failed(now_ns, repeats)

    def agent_type(self) -> str | None:
        """The optional ``agent_type`` of a gateway ``started`` frame."""
        return self._gateway_rng.choice(("python-specialist", "code-reviewer", "general", None))

    def gateway_error_due(self) -> bool:
        """Whether the next gateway request fails (from the gateway's own seeded stream)."""
        return self._gateway_rng.random() < self.profile.gateway_error_rate

    def next_request_id(self) -> str:
        """A unique gateway request id."""
        self._request_no += 1
        return f"req_{self._request_no:010X}"

    # -- internals -----------------------------------------------------------------------

    def _unique(self, candidate_ns: int, *, coarse: bool = True) -> int:
        ns = candidate_ns - candidate_ns % self._resolution
        if (
            coarse
            and self._digits is None
            and self._rng.random() < self.profile.coarse_timestamp_rate
        ):
            unit = self._rng.choice((1000, 1_000_000, _NS))
            coarser = ns - ns % unit
            if coarser > self._last_ns:
                ns = coarser
        if ns <= self._last_ns:
            ns = self._last_ns + self._resolution
        self._last_ns = ns
        return ns

    def _pick_model(self) -> str:
        roll = self._rng.random()
        if roll < self.profile.unpriced_rate:
            return self.profile.unpriced_model
        return self._rng.choices(_MIX_NAMES, cum_weights=_MIX_CUMULATIVE)[0]

    def _price(self, model: str) -> ModelPrice:
        return PROXY_PRICES.get(model, _UNPRICED_PROXY_PRICE)

    def _split(self, model: str) -> tuple[int, int, int]:
        median_in, median_out, median_latency = _SHAPES[_tier(model)]
        input_tokens = max(1, int(self._rng.lognormvariate(math.log(median_in), 0.8)))
        output_tokens = max(1, int(self._rng.lognormvariate(math.log(median_out), 0.7)))
        latency = max(50, int(self._rng.lognormvariate(math.log(median_latency), 0.5)))
        return min(input_tokens, 400_000), min(output_tokens, 64_000), latency

    def _event(
        self, ns: int, event_type: str, model: str, split: tuple[int, int], latency: int | None
    ) -> ActivityEvent:
        input_tokens, output_tokens = split
        price_cost = self._price(model).cost(input_tokens, output_tokens)
        return ActivityEvent(
            timestamp=format_timestamp(ns, self._digits),
            ts_ns=ns,
            event_type=event_type,
            model=model,
            tokens=input_tokens + output_tokens,
            latency_ms=latency if event_type == "api_call" else 0,
            status="success",
            cost=price_cost if event_type == "api_call" else 0.0,
            would_be_cost=price_cost,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    def _api_call(self, ns: int, model: str) -> ActivityEvent:
        input_tokens, output_tokens, latency = self._split(model)
        return self._event(ns, "api_call", model, (input_tokens, output_tokens), latency)

    def _micro(self, candidate_ns: int) -> int:
        """A microsecond-aligned stamp later than every stamp so far (macOS clocks)."""
        ns = max(candidate_ns, self._last_ns + 1)
        ns += -ns % 1000
        self._last_ns = ns
        return ns

    def _identical(self, at_ns: int, count: int) -> list[ActivityEvent]:
        ns = self._micro(at_ns)
        model = self._rng.choices(_MIX_NAMES, cum_weights=_MIX_CUMULATIVE)[0]
        event = replace(self._event(ns, "api_call", model, SIMULATED_SPLIT, 0), note="identical")
        return [event] * count

    def _orphan(self, at_ns: int, model: str | None) -> ActivityEvent:
        ns = self._unique(at_ns)
        return ActivityEvent(
            timestamp=format_timestamp(ns, self._digits),
            ts_ns=ns,
            event_type="model_override",
            model=model if model is not None else self._rng.choice(CLIENT_MODELS),
            tokens=None,
            latency_ms=None,
            status="success",
            cost=None,
            note="orphan_override",
        )

    def _failed(self, at_ns: int, repeats: int) -> list[ActivityEvent]:
        model = self._rng.choices(_MIX_NAMES, cum_weights=_MIX_CUMULATIVE)[0]
        latency = max(50, int(self._rng.lognormvariate(math.log(800.0), 0.7)))
        first = replace(
            self._event(self._unique(at_ns), "api_call", model, (0, 0), latency), note="failed"
        )
        events = [first]
        for i in range(repeats):
            ns = self._unique(at_ns + (i + 1) * self._rng.randint(1_000, 200_000_000))
            repeat = self._event(ns, "cache_hit", model, (0, 0), 0)
            events.append(replace(repeat, note="failed_repeat"))
        return events

    def _request(self, at_ns: int) -> list[ActivityEvent]:
        """One arrival: one request (one counted event), or an override that is none."""
        profile = self.profile
        if self._twin is not None:
            # The second of two concurrent simulated calls: the same bytes, the same stamp
            # (it may land after a snapshot that already showed the first).
            twin, self._twin = self._twin, None
            return [twin]
        odd = self._rng.random()
        if odd < profile.identical_rate:
            first = self._identical(at_ns, 1)
            self._twin = first[0]
            return first
        odd -= profile.identical_rate
        if odd < profile.orphan_override_rate:
            return [self._orphan(at_ns, None)]
        odd -= profile.orphan_override_rate
        if odd < profile.failed_rate:
            failed = self._failed(at_ns, 0)
            self._failed_models.append(failed[0].model)
            return failed
        if self._failed_models and self._rng.random() < 0.3:
            # A repeat of a failed request, answered from the cache: cache_hit, tokens 0.
            model = self._rng.choice(self._failed_models)
            if self._rng.random() < 0.5:
                self._failed_models.remove(model)
            repeat = self._event(self._unique(at_ns), "cache_hit", model, (0, 0), 0)
            return [replace(repeat, note="failed_repeat")]
        if self._rng.random() < profile.tiny_cost_rate:
            # A few tokens on the cheapest model: a cost like 1e-6 that orjson prints
            # in exponent form.
            split = (self._rng.randint(1, 6), self._rng.randint(0, 2))
            return [self._event(self._unique(at_ns), "api_call", _TINY_MODEL, split, 120)]
        model = self._pick_model()
        if self._rng.random() < profile.cache_hit_rate:
            input_tokens, output_tokens, _ = self._split(model)
            ns = self._unique(at_ns)
            return [self._event(ns, "cache_hit", model, (input_tokens, output_tokens), 0)]
        events: list[ActivityEvent] = []
        original = OVERRIDES.get(model)
        if original is not None and self._rng.random() < profile.override_rate:
            override_ns = self._unique(at_ns - self._rng.randint(1_000, 900_000))
            events.append(
                ActivityEvent(
                    timestamp=format_timestamp(override_ns, self._digits),
                    ts_ns=override_ns,
                    event_type="model_override",
                    model=original,
                    tokens=None,
                    latency_ms=None,
                    status="success",
                    cost=None,
                )
            )
        events.append(self._api_call(self._unique(at_ns), model))
        return events


def gateway_frames(
    event: ActivityEvent, request_id: str, *, agent_type: str | None = None, failed: bool = False
) -> list[bytes]:
    """The gateway's ``stream_event`` frames for one proxied call, in order."""
    started: dict[str, Any] = {"type": "started", "request_id": request_id, "model": event.model}
    if agent_type is not None:
        started["agent_type"] = agent_type
    frames = [started]
    if failed:
        frames.append(
            {"type": "error", "request_id": request_id, "message": "upstream 529 overloaded"}
        )
    else:
        frames.append({"type": "text_delta", "request_id": request_id, "text": "Hello"})
        frames.append(
            {
                "type": "completed",
                "request_id": request_id,
                "input_tokens": event.input_tokens,
                "output_tokens": event.output_tokens,
                "cost_usd": event.cost,
            }
        )
    return [sse_frame("stream_event", orjson.dumps(f)) for f in frames]
