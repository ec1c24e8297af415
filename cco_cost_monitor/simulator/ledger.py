"""Ground truth: everything the simulator generated, over every proxy process. Pure.

:class:`Ledger` keeps aggregates (true cost and calls, per model), counters (snapshots,
restarts, lost totals, saves, gateway) and bounded recent lists (events, faults, the first
and the latest stream connections with what their first snapshot said), so memory stays
bounded however long it runs. Each ``record_*`` method returns the JSONL record(s) that
the server appends to the ``--ledger`` file, which holds everything.

What counts, for the monitor's invariant: a request is an ``api_call`` or ``cache_hit``
(what the proxy counts in ``project.calls``, failed calls and their cached repeats
included); a ``model_override`` is never one, followed by an ``api_call`` or not. The
baseline of a connection (``first_snapshot.true_calls``/``true_cost_usd``) is what its
first snapshot's counters included: requests that finished while that snapshot was read,
and were not yet in its ``calls`` (or ``cost``), count as after first contact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cco_cost_monitor.simulator.proxy import ProxyTotals, Read
from cco_cost_monitor.simulator.traffic import ActivityEvent

__all__ = ["Ledger"]


@dataclass(slots=True)
class _ModelTruth:
    cost_usd: float = 0.0
    requests: int = 0
    tokens: int = 0


class Ledger:
    """Ground truth: everything generated, over every proxy process, in bounded memory.

    Each ``record_*`` method returns the JSONL records to append to the ledger file.
    """

    RECENT_EVENTS = 200
    FIRST_CONNECTIONS = 100
    RECENT_CONNECTIONS = 100
    RECENT_FAULTS = 100
    # Running true costs remembered for a lagged baseline (a read lags at most 20 records).
    RUNNING = 64

    def __init__(self) -> None:
        self.true_cost_usd = 0.0
        self.true_calls = 0
        self.events_generated = 0
        self.events_by_type: dict[str, int] = {}
        # Odd records by kind: identical (twins beyond the first), orphan_override, failed,
        # failed_repeat.
        self.odd_records: dict[str, int] = {}
        self._running_cost: deque[float] = deque([0.0], maxlen=self.RUNNING)
        self.by_model: dict[str, _ModelTruth] = {}
        self.snapshots_sent = 0
        self.restarts = 0
        self.lost_cost_usd = 0.0
        self.lost_calls = 0
        self.saves = 0
        self.gateway_requests = 0
        self.gateway_cost_usd = 0.0
        self.gateway_frames_skipped = 0
        self.connections_total = 0
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=self.RECENT_EVENTS)
        self.faults: deque[dict[str, Any]] = deque(maxlen=self.RECENT_FAULTS)
        self._first_connections: list[dict[str, Any]] = []
        self._recent_connections: deque[dict[str, Any]] = deque(maxlen=self.RECENT_CONNECTIONS)

    def record_events(
        self, events: Iterable[ActivityEvent], incarnation: int
    ) -> list[dict[str, Any]]:
        """Count generated events; return their ledger records."""
        records: list[dict[str, Any]] = []
        for event in events:
            self.events_generated += 1
            self.events_by_type[event.event_type] = self.events_by_type.get(event.event_type, 0) + 1
            if event.note:
                self.odd_records[event.note] = self.odd_records.get(event.note, 0) + 1
            if event.counts_as_call:
                truth = self.by_model.setdefault(event.model, _ModelTruth())
                cost = event.cost or 0.0
                self.true_cost_usd += cost
                self.true_calls += 1
                truth.cost_usd += cost
                truth.requests += 1
                truth.tokens += event.tokens or 0
                self._running_cost.append(self.true_cost_usd)
            record = {"kind": "event", "incarnation": incarnation, **event.to_wire("current")}
            self.recent_events.append(record)
            records.append(record)
        return records

    def record_restart(
        self,
        *,
        at: str,
        before: ProxyTotals,
        reloaded: ProxyTotals,
        down_seconds: float,
        hidden: bool = False,
        queued: int = 0,
    ) -> dict[str, Any]:
        """A proxy restart; the unsaved tail of the totals is lost (all of it: reload nothing)."""
        self.restarts += 1
        lost_cost = before.cost - reloaded.cost
        lost_calls = before.calls - reloaded.calls
        self.lost_cost_usd += lost_cost
        self.lost_calls += lost_calls
        return {
            "kind": "restart",
            "at": at,
            "restart": self.restarts,
            "down_seconds": down_seconds,
            "cost_before": before.cost,
            "calls_before": before.calls,
            "reloaded_cost": reloaded.cost,
            "reloaded_calls": reloaded.calls,
            "lost_cost_usd": lost_cost,
            "lost_calls": lost_calls,
            "hidden": hidden,
            "queued": queued,
        }

    def record_save(self, at: str, totals: ProxyTotals) -> dict[str, Any]:
        """A periodic save of the proxy's totals."""
        self.saves += 1
        return {"kind": "save", "at": at, "cost": totals.cost, "calls": totals.calls}

    def record_fault(self, at: str, fault: dict[str, Any]) -> dict[str, Any]:
        """A fault that was applied."""
        params = {k: v for k, v in fault.items() if k != "kind"}
        record = {"kind": "fault", "at": at, "fault": fault["kind"], **params}
        self.faults.append(record)
        return record

    def record_gateway(self, event: ActivityEvent, *, failed: bool) -> None:
        """A request published on the gateway stream."""
        self.gateway_requests += 1
        if not failed:
            self.gateway_cost_usd += event.cost or 0.0

    def open_connection(
        self, *, opened_at: str, path: str, calls: int, cost: float, read: Read | None = None
    ) -> dict[str, Any]:
        """A stream connection got its first snapshot, which says ``calls`` and ``cost``.

        ``read``: how that snapshot's counters lagged behind the records (the newest
        ``calls_lag`` requests not in ``calls``, ``cost_lag`` not in ``cost``); the baseline
        truth leaves those requests out.
        """
        read = read if read is not None else Read()
        cost_lag = min(read.cost_lag, len(self._running_cost) - 1)
        record: dict[str, Any] = {
            "index": self.connections_total,
            "path": path,
            "opened_at": opened_at,
            "first_snapshot": {
                "true_cost_usd": self._running_cost[-1 - cost_lag],
                "true_calls": self.true_calls - read.calls_lag,
                "proxy_cost": cost,
                "proxy_calls": calls,
                "calls_lag": read.calls_lag,
                "cost_lag": read.cost_lag,
                "hidden": read.hidden,
            },
            "snapshots_sent": 0,
            "closed_at": None,
        }
        self.connections_total += 1
        if len(self._first_connections) < self.FIRST_CONNECTIONS:
            self._first_connections.append(record)
        else:
            self._recent_connections.append(record)
        return record

    def connections(self) -> list[dict[str, Any]]:
        """The first 100 connections and the most recent 100, in order."""
        return [*self._first_connections, *self._recent_connections]

    def since_first_contact(self) -> dict[str, Any] | None:
        """True requests and dollars since the first stream connection's first snapshot.

        What a monitor connected from then on must count (``None`` before any connection).
        """
        connections = self.connections()
        if not connections:
            return None
        first = connections[0]["first_snapshot"]
        return {
            "requests": self.true_calls - first["true_calls"],
            "cost_usd": self.true_cost_usd - first["true_cost_usd"],
        }

    def to_json(self, *, totals: ProxyTotals, extra: dict[str, Any]) -> dict[str, Any]:
        """The ``GET /_sim/ledger`` document."""
        return {
            "true_cost_usd": self.true_cost_usd,
            "true_calls": self.true_calls,
            "since_first_contact": self.since_first_contact(),
            "odd_records": dict(sorted(self.odd_records.items())),
            "true_by_model": {
                model: {"cost_usd": t.cost_usd, "requests": t.requests, "tokens": t.tokens}
                for model, t in sorted(self.by_model.items())
            },
            "events_generated": self.events_generated,
            "events_by_type": dict(sorted(self.events_by_type.items())),
            "snapshots_sent": self.snapshots_sent,
            "restarts": self.restarts,
            "saves": self.saves,
            "lost_cost_usd": self.lost_cost_usd,
            "lost_calls": self.lost_calls,
            "proxy_cost": totals.cost,
            "proxy_calls": totals.calls,
            "gateway": {
                "requests": self.gateway_requests,
                "cost_usd": self.gateway_cost_usd,
                "frames_skipped": self.gateway_frames_skipped,
            },
            "connections_total": self.connections_total,
            "connections": self.connections(),
            "recent_events": list(self.recent_events),
            "faults": list(self.faults),
            **extra,
        }
