"""A minimal, independent model of the CCO proxy for pure accounting tests.

Deliberately separate from the simulator: it is the oracle the reconciler is checked
against, so it must not share code with what it checks.
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


def rfc3339(moment: datetime, nanos: int) -> str:
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{moment.microsecond:06d}{nanos % 1000:03d}+00:00"


@dataclass
class ProxyModel:
    """Ring of 100, window of 20, cumulative totals, uptime, saves and restarts."""

    ring: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    cost: float = 0.0
    saved_calls: int = 0
    saved_cost: float = 0.0
    clock: datetime = EPOCH
    started: datetime = EPOCH
    counter: int = 0
    true_calls: int = 0
    true_cost: float = 0.0

    def tick(self, seconds: float = 0.25) -> None:
        self.clock += timedelta(seconds=seconds)

    def _push(self, event: dict[str, Any]) -> None:
        self.ring.append(event)
        if len(self.ring) > 100:
            self.ring.pop(0)

    def call(self, model_index: int, tokens: int, kind: str) -> dict[str, Any]:
        """One proxied request; returns the request event."""
        self.counter += 1
        self.tick(0.001)
        model, price_in, price_out = MODELS[model_index % len(MODELS)]
        stamp = rfc3339(self.clock, self.counter)
        if kind == "override":
            self._push(
                {
                    "timestamp": stamp,
                    "event_type": "model_override",
                    "agent_name": None,
                    "model": "claude-opus-4",
                    "tokens": None,
                    "latency_ms": None,
                    "status": "success",
                    "cost": None,
                }
            )
            self.counter += 1
            self.tick(0.001)
            stamp = rfc3339(self.clock, self.counter)
        if kind == "cache_hit":
            cost = 0.0
            event = {
                "timestamp": stamp,
                "event_type": "cache_hit",
                "agent_name": None,
                "model": model,
                "tokens": tokens,
                "latency_ms": 0,
                "status": "success",
                "cost": 0.0,
            }
        else:
            cost = (tokens * 0.75 * price_in + tokens * 0.25 * price_out) / 1_000_000
            event = {
                "timestamp": stamp,
                "event_type": "api_call",
                "agent_name": None,
                "model": model,
                "tokens": tokens,
                "latency_ms": 100 + tokens % 900,
                "status": "success",
                "cost": cost,
            }
        self._push(event)
        self.calls += 1
        self.cost += cost
        self.true_calls += 1
        self.true_cost += cost
        return event

    def save(self) -> None:
        self.saved_calls, self.saved_cost = self.calls, self.cost

    def restart(self) -> None:
        self.tick(1.0)
        self.ring = []
        self.calls, self.cost = self.saved_calls, self.saved_cost
        self.started = self.clock

    def snapshot(self) -> dict[str, Any]:
        self.tick(0.01)
        uptime = int((self.clock - self.started).total_seconds())
        return {
            "project": {
                "name": "Claude Orchestra",
                "cost": self.cost,
                "tokens": 0,
                "calls": self.calls,
                "last_updated": rfc3339(self.clock, 0),
            },
            "machine": {"cpu": "N/A", "memory": "N/A", "uptime": uptime, "process_count": 1},
            "activity": list(self.ring[-20:]),
        }

    def snapshot_json(self) -> str:
        return orjson.dumps(self.snapshot()).decode()
