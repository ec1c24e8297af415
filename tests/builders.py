"""Builders of accounted facts for tests that need them without a reconciler."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cco_cost_monitor.reconciler import AccountedEvent


def accounted_event(
    *, key: str, occurred_at: datetime, cost: float, **fields: Any
) -> AccountedEvent:
    """A recorded-cost api_call of one request; any field can be overridden."""
    values: dict[str, Any] = {
        "source": "default",
        "key": key,
        "occurred_at": occurred_at,
        "event_type": "api_call",
        "model": "claude-sonnet-4-5",
        "tier": "sonnet",
        "requests": 1,
        "cache_hits": 0,
        "tokens": 100,
        "input_tokens": None,
        "output_tokens": None,
        "latency_ms": 100,
        "status": "success",
        "cost_usd": cost,
        "recorded_cost_usd": cost,
        "calculated_cost_usd": None,
        "cost_basis": "recorded",
        "priced": True,
        "price_version": "test",
    }
    values.update(fields)
    return AccountedEvent(**values)
