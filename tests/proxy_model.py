"""A minimal, independent model of the CCO proxy for pure accounting tests.

Deliberately separate from the simulator: it is the oracle the reconciler is checked
against, so it must not share code with what it checks. It models what the proxy's code
does (wire-format spec, "What a snapshot does not promise"): a request writes its record
(``calls``/``cost``) and then its ring event; a snapshot reads ``calls``, then ``cost``,
then the ring, with requests finishing in between; a save holds a snapshot so that it reads
old ``calls`` next to a newer ring, and the missed snapshots then fire back to back;
restarts reload the last save (or nothing) with or without an uptime drop.

The truth it keeps is the contract's: the growth of the proxy's counters since the monitor's
first snapshot read them, requests against ``calls`` and dollars against ``cost``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

EPOCH = datetime(2025, 11, 17, 22, 0, tzinfo=UTC)
MODELS = (
    ("claude-opus-4-1-20250805", 15.0, 75.0),
    ("claude-sonnet-4-5-20250929", 3.0, 15.0),
    ("claude-3-5-haiku-20241022", 0.8, 4.0),
    ("gpt-4", 30.0, 60.0),
)
SNAPSHOT_INTERVAL = 5.0


def rfc3339(moment: datetime, nanos: int) -> str:
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{moment.microsecond:06d}{nanos % 1000:03d}+00:00"


@dataclass
class Request:
    """One request: its ring events (an override may come first) and what it records."""

    events: list[dict[str, Any]]
    records: bool
    cost: float


@dataclass
class ProxyModel:
    """Ring of 100, window of 20, cumulative totals, uptime, saves and restarts."""

    ring: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    cost: float = -0.0  # a sum over no records, as the proxy prints it
    saved_calls: int = 0
    saved_cost: float = 0.0
    clock: datetime = EPOCH
    started: datetime = EPOCH
    counter: int = 0
    # Every request ever recorded, across restarts: the ground truth.
    true_calls: int = 0
    true_cost: float = 0.0
    # Recorded, ring event not written yet.
    lagging: list[Request] = field(default_factory=list)
    # The truth when the last snapshot read ``calls`` and when it read ``cost``.
    read_calls_truth: int = 0
    read_cost_truth: float = 0.0
    # Ring events ever written (a window of 20 misses some when more come between reads).
    pushed: int = 0

    def tick(self, seconds: float = 0.25) -> None:
        self.clock += timedelta(seconds=seconds)

    def _push(self, event: dict[str, Any]) -> None:
        self.pushed += 1
        self.ring.append(event)
        if len(self.ring) > 100:
            self.ring.pop(0)

    # -- requests ----------------------------------------------------------------------

    def request(self, model_index: int, tokens: int, kind: str) -> Request:
        """Build a request (not yet recorded). ``kind``: api, cache_hit, override (an
        override then its api_call), override_only (rewritten to an unpriced model: only the
        override is recorded in the ring, nothing in ``calls``), failed (tokens 0, cost 0.0),
        twin (100/50 tokens, latency 0: the same bytes as the previous twin)."""
        model, price_in, price_out = MODELS[model_index % len(MODELS)]
        events: list[dict[str, Any]] = []
        if kind in ("override", "override_only"):
            self.counter += 1
            self.tick(0.001)
            events.append(
                {
                    "timestamp": rfc3339(self.clock, self.counter),
                    "event_type": "model_override",
                    "agent_name": None,
                    "model": "claude-opus-4",
                    "tokens": None,
                    "latency_ms": None,
                    "status": "success",
                    "cost": None,
                }
            )
            if kind == "override_only":
                return Request(events, records=False, cost=0.0)
        if kind != "twin":
            self.counter += 1
            self.tick(0.001)
        stamp = rfc3339(self.clock, 0 if kind == "twin" else self.counter)
        if kind in ("cache_hit", "failed_hit"):
            cost = 0.0
            event = {
                "timestamp": stamp,
                "event_type": "cache_hit",
                "agent_name": None,
                "model": model,
                "tokens": 0 if kind == "failed_hit" else tokens,
                "latency_ms": 0,
                "status": "success",
                "cost": 0.0,
            }
        elif kind == "failed":
            cost = 0.0
            event = {
                "timestamp": stamp,
                "event_type": "api_call",
                "agent_name": None,
                "model": model,
                "tokens": 0,
                "latency_ms": 120,
                "status": "success",
                "cost": 0.0,
            }
        else:
            if kind == "twin":
                tokens = 150
            cost = (tokens * 0.75 * price_in + tokens * 0.25 * price_out) / 1_000_000
            event = {
                "timestamp": stamp,
                "event_type": "api_call",
                "agent_name": None,
                "model": model,
                "tokens": tokens,
                "latency_ms": 0 if kind == "twin" else 100 + tokens % 900,
                "status": "success",
                "cost": cost,
            }
        events.append(event)
        return Request(events, records=True, cost=cost)

    def record(self, request: Request) -> None:
        """The request's record: moves ``calls`` and ``cost`` (and the truth)."""
        if request.records:
            self.calls += 1
            self.cost += request.cost
            self.true_calls += 1
            self.true_cost += request.cost

    def write_ring(self, request: Request) -> None:
        for event in request.events:
            self._push(event)

    def call(self, model_index: int, tokens: int, kind: str) -> dict[str, Any]:
        """One whole request (record, then ring event); returns its last event."""
        request = self.request(model_index, tokens, kind)
        self.record(request)
        self.write_ring(request)
        return request.events[-1]

    def start_lagging(self, model_index: int, tokens: int, kind: str) -> None:
        """A request whose record is written now and whose ring event comes later."""
        request = self.request(model_index, tokens, kind)
        self.record(request)
        self.lagging.append(request)

    def finish_lagging(self) -> None:
        for request in self.lagging:
            self.write_ring(request)
        self.lagging = []

    # -- process -----------------------------------------------------------------------

    def save(self) -> None:
        self.saved_calls, self.saved_cost = self.calls, self.cost

    def restart(self, *, uptime_drops: bool = True, reload: bool = True) -> None:
        """A new process: the ring starts empty, the totals are the last save (or nothing).

        ``uptime_drops=False``: a slow start after a short life, so uptime goes on rising.
        """
        self.finish_lagging()
        self.tick(1.0)
        self.ring = []
        if reload:
            self.calls, self.cost = self.saved_calls, self.saved_cost
        else:
            self.calls, self.cost, self.saved_calls, self.saved_cost = 0, 0.0, 0, 0.0
        if uptime_drops:
            self.started = self.clock

    # -- snapshots ---------------------------------------------------------------------

    def uptime(self) -> int:
        return int((self.clock - self.started).total_seconds())

    def snapshot(
        self,
        between_calls_and_cost: list[Request] | None = None,
        between_cost_and_ring: list[Request] | None = None,
    ) -> dict[str, Any]:
        """One snapshot, its three reads apart, requests finishing in between."""
        self.tick(0.01)
        calls = self.calls
        self.read_calls_truth = self.true_calls
        for request in between_calls_and_cost or ():
            self.record(request)
            self.write_ring(request)
        cost = self.cost
        self.read_cost_truth = self.true_cost
        for request in between_cost_and_ring or ():
            self.record(request)
            self.write_ring(request)
        return {
            "project": {
                "name": "Claude Orchestra",
                "cost": cost,
                "tokens": 0,
                "calls": calls,
                "last_updated": rfc3339(self.clock, 0),
            },
            "machine": {"cpu": "N/A", "memory": "N/A", "uptime": self.uptime(), "process_count": 1},
            "activity": list(self.ring[-20:]),
        }

    def snapshot_json(self) -> str:
        return orjson.dumps(self.snapshot()).decode()
