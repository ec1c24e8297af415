"""One simulated proxy process: ring, totals, saves, restarts and snapshots. Pure, no I/O.

:class:`ProxyState` holds what a CCO proxy holds in memory: the 100-entry activity ring,
cumulative totals (``project.cost``/``calls``, reloaded from the last *save* after a
restart, so the unsaved tail is lost), the uptime, and the snapshot JSON of each wire
format (``current``, ``early``, ``old``).

A snapshot is not an atomic picture (the wire-format spec, "What a snapshot does not
promise"): the proxy reads ``calls``, then ``cost``, then the ring, while requests finish.
:class:`Read` says how far one snapshot's reads lag behind the records: the newest
``calls_lag`` requests are not yet in ``calls``, the newest ``cost_lag`` not yet in
``cost``, and the newest ``hidden`` ring entries are not yet in the window. The lagged
``cost`` is the exact running total the proxy had then, never a float difference.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cco_cost_monitor.simulator.traffic import ActivityEvent, WireFormat, format_timestamp

__all__ = [
    "ACTIVITY_WINDOW",
    "ATOMIC",
    "RING_SIZE",
    "ModelTotals",
    "ProxyState",
    "ProxyTotals",
    "Read",
]

RING_SIZE = 100
ACTIVITY_WINDOW = 20
PROJECT_NAME = "Claude Orchestra"
_NS = 1_000_000_000


# How many running (calls, cost) totals a process remembers for lagged reads.
_RUNNING_TOTALS = 64


@dataclass(frozen=True, slots=True)
class Read:
    """How one snapshot's reads lag behind the records (all zero: an atomic picture)."""

    calls_lag: int = 0
    cost_lag: int = 0
    hidden: int = 0


ATOMIC = Read()


@dataclass(slots=True)
class ModelTotals:
    """Cumulative per-model counters, as the old ``models`` list reports them."""

    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    actual_cost: float = 0.0
    would_be_cost: float = 0.0
    savings: float = 0.0


@dataclass(slots=True)
class ProxyTotals:
    """The proxy's cumulative totals (what it saves to and reloads from its metrics file)."""

    cost: float = 0.0
    calls: int = 0
    would_be_cost: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    savings: float = 0.0
    models: dict[str, ModelTotals] = field(default_factory=dict)

    def add(self, event: ActivityEvent) -> None:
        """Count one event as the proxy does (overrides change no total)."""
        if not event.counts_as_call:
            return
        per_model = self.models.setdefault(event.model, ModelTotals())
        cost = event.cost or 0.0
        self.cost += cost
        self.calls += 1
        self.would_be_cost += event.would_be_cost
        per_model.requests += 1
        per_model.actual_cost += cost
        per_model.would_be_cost += event.would_be_cost
        if event.event_type == "cache_hit":
            self.cache_hits += 1
            self.savings += event.would_be_cost
            per_model.cache_hits += 1
            per_model.savings += event.would_be_cost
        else:
            self.cache_misses += 1
            per_model.cache_misses += 1

    def copy(self) -> ProxyTotals:
        """A deep copy (a save must not alias the live counters)."""
        return replace(self, models={m: replace(t) for m, t in self.models.items()})


class ProxyState:
    """One simulated proxy process: ring, live totals, saved totals, uptime."""

    def __init__(
        self,
        totals: ProxyTotals,
        started_ns: int,
        *,
        uptime_offset: int = 0,
        negative_zero: bool = True,
    ) -> None:
        self.totals = totals.copy()
        self.saved = totals.copy()
        self.started_ns = started_ns
        self.last_save_ns = started_ns
        self.uptime_offset = uptime_offset
        self.negative_zero = negative_zero
        self.ring: deque[ActivityEvent] = deque(maxlen=RING_SIZE)
        # (calls, cost) after each counted record, newest last: what a lagged read saw.
        self.running: deque[tuple[int, float]] = deque(
            [(self.totals.calls, self.totals.cost)], maxlen=_RUNNING_TOTALS
        )

    def record(self, event: ActivityEvent) -> None:
        """Append to the ring and count it."""
        self.ring.append(event)
        if event.counts_as_call:
            self.totals.add(event)
            self.running.append((self.totals.calls, self.totals.cost))

    def clamp(self, read: Read, new_calls: int, new_entries: int) -> Read:
        """``read`` limited to what is possible: lags only among the newest records."""
        calls_lag = min(read.calls_lag, new_calls, self.totals.calls)
        cost_lag = min(read.cost_lag, calls_lag, len(self.running) - 1)
        hidden = min(read.hidden, new_entries, len(self.ring))
        return Read(calls_lag, cost_lag, hidden)

    def read_totals(self, read: Read = ATOMIC) -> tuple[int, float]:
        """``(calls, cost)`` as a snapshot with this ``read`` reports them."""
        calls = self.totals.calls - read.calls_lag
        records, cost = self.running[-1 - read.cost_lag] if read.cost_lag else self.running[-1]
        if records == 0 and cost == 0.0 and self.negative_zero:
            # Rust's f64 sum over no records.
            cost = -0.0
        return calls, cost

    def save(self, now_ns: int) -> None:
        """Persist the totals (the proxy's periodic metrics-file save)."""
        self.saved = self.totals.copy()
        self.last_save_ns = now_ns

    def save_due(self, now_ns: int, save_interval: float) -> bool:
        """Whether ``save_interval`` seconds have passed since the last save."""
        return now_ns - self.last_save_ns >= save_interval * _NS

    def restarted(
        self, now_ns: int, *, reload_nothing: bool = False, uptime_offset: int = 0
    ) -> ProxyState:
        """The next process: totals reloaded from the last save, empty ring, uptime 0.

        ``reload_nothing``: the metrics file was cut by a crash, totals restart from zero.
        ``uptime_offset``: the new process reports this much uptime at start (a slow start
        after a short life: the uptime does not drop).
        """
        reloaded = ProxyTotals() if reload_nothing else self.saved
        return ProxyState(
            reloaded, now_ns, uptime_offset=uptime_offset, negative_zero=self.negative_zero
        )

    def uptime(self, now_ns: int) -> int:
        """Whole seconds since this process started."""
        return self.uptime_offset + max(0, now_ns - self.started_ns) // _NS

    def window(self, hidden: int = 0) -> list[ActivityEvent]:
        """The last (up to) 20 events of the ring, oldest first, minus the newest ``hidden``."""
        end = len(self.ring) - max(0, hidden)
        start = max(0, end - ACTIVITY_WINDOW)
        return [self.ring[i] for i in range(start, end)]

    def snapshot(
        self, now_ns: int, fmt: WireFormat = "current", read: Read = ATOMIC
    ) -> dict[str, Any]:
        """The ``analytics`` data object of the given wire format (``read``: current/early)."""
        if fmt == "old":
            return self._old_snapshot()
        totals = self.totals
        calls, cost = self.read_totals(read)
        snapshot: dict[str, Any] = {
            "project": {
                "name": PROJECT_NAME,
                "cost": cost,
                "tokens": int(totals.would_be_cost),
                "calls": calls,
                "last_updated": format_timestamp(now_ns, 6 if fmt == "early" else None),
            },
            "machine": {
                "cpu": "N/A",
                "memory": "N/A",
                "uptime": self.uptime(now_ns),
                "process_count": 1,
            },
            "activity": [event.to_wire(fmt) for event in self.window(read.hidden)],
        }
        if fmt == "current":
            # The charts print 0.0 where project.cost says -0.0 (see the axum 0.7 fixture).
            snapshot["chart_data"] = self._chart_data(now_ns, cost + 0.0)
        return snapshot

    def snapshot_bytes(
        self, now_ns: int, fmt: WireFormat = "current", read: Read = ATOMIC
    ) -> bytes:
        """The snapshot as the proxy serialises it: compact JSON on one line."""
        return orjson.dumps(self.snapshot(now_ns, fmt, read))

    def _chart_data(self, now_ns: int, total: float) -> dict[str, Any]:
        today = datetime.fromtimestamp(now_ns // _NS, UTC).date()
        per_day = total / 30
        requests = sum(t.requests for t in self.totals.models.values())
        distribution = sorted(
            ((m, t.requests) for m, t in self.totals.models.items() if t.requests),
            key=lambda item: (-item[1], item[0]),
        )
        return {
            "cost_over_time": [
                {"date": (today - timedelta(days=29 - i)).isoformat(), "cost": per_day}
                for i in range(30)
            ],
            "cost_by_project": [{"project": PROJECT_NAME, "cost": total}],
            "model_distribution": [
                {"model": m, "percentage": 100.0 * n / requests} for m, n in distribution
            ],
        }

    def _old_snapshot(self) -> dict[str, Any]:
        t = self.totals
        lookups = t.cache_hits + t.cache_misses
        return {
            "cache": {
                "hit_rate": 100.0 * t.cache_hits / lookups if lookups else 0.0,
                "hits": t.cache_hits,
                "misses": t.cache_misses,
                "entries": min(t.cache_misses, 1000),
                "total_savings": t.savings,
            },
            "models": [
                {
                    "model": model,
                    "requests": m.requests,
                    "cache_hits": m.cache_hits,
                    "cache_misses": m.cache_misses,
                    "actual_cost": m.actual_cost,
                    "would_be_cost": m.would_be_cost,
                    "savings": m.savings,
                }
                for model, m in sorted(t.models.items())
            ],
            "totals": {
                "requests": t.calls,
                "actual_cost": t.cost,
                "would_be_cost": t.would_be_cost,
                "total_savings": t.savings,
            },
        }
