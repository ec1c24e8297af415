"""Builders of accounted facts for tests that need them without a reconciler."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

from cco_cost_monitor import store as store_module
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


def schema_2_database(path: Path, events: Sequence[AccountedEvent], observed_at: datetime) -> None:
    """A database as the schema-2 release wrote it, holding ``events`` (one batch each)."""
    migrations, version = store_module.MIGRATIONS, store_module.SCHEMA_VERSION
    store_module.MIGRATIONS, store_module.SCHEMA_VERSION = migrations[:2], 2
    try:
        store_module.Store.open(path).close()
    finally:
        store_module.MIGRATIONS, store_module.SCHEMA_VERSION = migrations, version
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for batch, event in enumerate(events, start=1):
            conn.execute(
                "INSERT INTO events (source, key, occurred_at, occurred_at_iso, "
                "observed_at_iso, event_type, model, tier, requests, cache_hits, tokens, "
                "input_tokens, output_tokens, latency_ms, status, cost_usd, recorded_cost_usd, "
                "calculated_cost_usd, cost_basis, priced, price_version, batch, result) "
                "VALUES (?,?,?,?,?,?,?,?,1,0,NULL,NULL,NULL,NULL,NULL,?,?,NULL,'recorded',1,'t',"
                "?,0)",
                (
                    event.source,
                    event.key,
                    event.occurred_at.timestamp(),
                    event.occurred_at.isoformat(),
                    observed_at.isoformat(),
                    event.event_type,
                    event.model,
                    event.tier,
                    event.cost_usd,
                    event.cost_usd,
                    batch,
                ),
            )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_batch', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(len(events)),),
        )
