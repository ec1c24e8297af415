"""The JSON documents the daemon serves: ``/health`` and ``/api/summary``. Pure, no I/O.

Both are built from the live objects (engine, reconcilers, connection states) at the
moment of the request, so they are never staler than the data. Field names follow the
contract; extensions are documented in docs/api.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cco_cost_monitor import __version__
from cco_cost_monitor.config import SourceSpec
from cco_cost_monitor.engine import Engine
from cco_cost_monitor.reconciler import PROXY_WINDOW, Reconciler
from cco_cost_monitor.redact import redact_url
from cco_cost_monitor.source import ConnectionState

__all__ = ["SourceView", "build_health", "build_summary", "health_status"]

HealthStatus = Literal["pass", "warn", "fail"]
PERIODS = ("this_hour", "today", "this_week", "this_month")
# periods.last_5m: the trailing window of the 5-minute burn rate.
LAST_5M_SECONDS = 300.0
# A source is fresh while its last snapshot is younger than this many intervals.
FRESH_INTERVALS = 3
DISK_LAG_WARN_SECONDS = 5.0
#: A window longer than the proxy sends warns for this long after the last one.
OVERSIZED_WARN_SECONDS = 600.0
# /api/summary totals: the SourceTotals counters summed over sources (float or int).
TOTAL_FIELDS: dict[str, float | int] = {
    "cost_usd": 0.0,
    "requests": 0,
    "cache_hits": 0,
    "model_overrides": 0,
    "events": 0,
    "unattributed_cost_usd": 0.0,
    "unattributed_requests": 0,
    "lost_events": 0,
}


@dataclass(frozen=True)
class SourceView:
    """Everything the documents need to know about one source."""

    spec: SourceSpec
    connection: ConnectionState
    reconciler: Reconciler


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _source_check(
    view: SourceView, now: datetime, interval: float, grace: float
) -> tuple[HealthStatus, str]:
    """The health of one source and a short reason."""
    connection = view.connection
    if connection.auth_rejected:
        return "fail", connection.reason or "credentials rejected"
    if connection.status == "connected":
        if view.spec.effective_kind == "gateway":
            return "pass", "connected"
        last = connection.last_snapshot_at
        if last is None:
            return "warn", "connected, no snapshot yet"
        age = (now - last).total_seconds()
        if age > FRESH_INTERVALS * interval:
            return "warn", f"stale: last snapshot {age:.0f} s ago"
        oversized = view.reconciler.state.last_oversized_at
        if (
            oversized is not None
            and (now - datetime.fromisoformat(oversized)).total_seconds() < OVERSIZED_WARN_SECONDS
        ):
            return "warn", (
                f"{view.reconciler.state.oversized_windows} windows longer than the proxy's "
                f"{PROXY_WINDOW} events refused (their events not believed; counted from totals)"
            )
        return "pass", "connected"
    down_for = (now - (connection.down_since or connection.since)).total_seconds()
    reason = connection.reason or connection.status
    if down_for > grace:
        return "fail", f"{connection.status} for {down_for:.0f} s: {reason}"
    return "warn", f"{connection.status}: {reason}"


def health_status(
    source_checks: Sequence[HealthStatus], disk_lag_seconds: float | None
) -> HealthStatus:
    """pass: all sources fresh. fail: every source down past the grace period (or a
    credential rejected). warn: anything in between, or the disk falling behind."""
    if not source_checks:
        return "warn"
    if all(check == "fail" for check in source_checks):
        return "fail"
    if any(check != "pass" for check in source_checks):
        return "warn"
    if disk_lag_seconds is not None and disk_lag_seconds > DISK_LAG_WARN_SECONDS:
        return "warn"
    return "pass"


def _connection_status(views: Sequence[SourceView]) -> str:
    statuses = [view.connection.status for view in views]
    for status in ("connected", "connecting", "error", "disconnected"):
        if status in statuses:
            return status
    return "disconnected"


def build_health(
    *,
    engine: Engine,
    views: Sequence[SourceView],
    now: datetime,
    started_at: datetime,
    snapshot_interval: float,
    grace_seconds: float,
    store: Mapping[str, Any] | None = None,
    store_problem: str | None = None,
    uptime_seconds: float | None = None,
) -> dict[str, Any]:
    """The ``application/health+json`` document.

    ``store_problem`` (the database file deleted or replaced under the daemon) fails it.
    """
    checks: dict[str, list[dict[str, Any]]] = {}
    statuses: list[HealthStatus] = []
    sources = []
    for view in views:
        status, output = _source_check(view, now, snapshot_interval, grace_seconds)
        statuses.append(status)
        connection = view.connection
        checks[f"source:{view.spec.name}"] = [
            {
                "componentType": "datastore",
                "status": status,
                "output": output,
                "time": _iso(connection.since),
            }
        ]
        sources.append(
            {
                "name": view.spec.name,
                "url": redact_url(view.spec.url),
                "status": status,
                "connection_status": connection.status,
                "reason": connection.reason,
                "since": _iso(connection.since),
                "last_snapshot_at": _iso(connection.last_snapshot_at),
                "last_frame_at": _iso(connection.last_frame_at),
                "snapshots": connection.snapshots,
                "frames": connection.frames,
                "reconnects": connection.reconnects,
                "bad_frames": dict(connection.bad_frames),
                "last_bad_frame": connection.last_bad_frame,
                "proxy_restarts": view.reconciler.state.proxy_restarts,
                "gaps": view.reconciler.state.gaps,
            }
        )
    disk_lag = None
    if store is not None:
        disk_lag = float(store.get("lag_seconds") or 0.0)
        checks["store:lag"] = [
            {
                "componentType": "datastore",
                "observedValue": round(disk_lag, 3),
                "observedUnit": "s",
                "status": "warn" if disk_lag > DISK_LAG_WARN_SECONDS else "pass",
            }
        ]
    status = health_status(statuses, disk_lag)
    if store_problem is not None:
        status = "fail"
        checks["store:file"] = [
            {"componentType": "datastore", "status": "fail", "output": store_problem}
        ]
    last_events = list(engine.last_event_at.values())
    last_snapshots = [
        view.connection.last_snapshot_at for view in views if view.connection.last_snapshot_at
    ]
    return {
        "status": status,
        "version": __version__,
        "uptime_seconds": round(
            (now - started_at).total_seconds() if uptime_seconds is None else uptime_seconds, 3
        ),
        "connection_status": _connection_status(views),
        "events_processed": engine.events_processed(),
        "snapshots_processed": sum(view.connection.snapshots for view in views),
        "total_cost_usd": engine.total_cost(),
        "last_event_at": _iso(max(last_events) if last_events else None),
        "last_snapshot_at": _iso(max(last_snapshots) if last_snapshots else None),
        "reconnects": sum(view.connection.reconnects for view in views),
        "sources": sources,
        "checks": checks,
        "store": dict(store) if store is not None else None,
    }


def build_summary(
    *,
    engine: Engine,
    views: Sequence[SourceView],
    now: datetime,
    projections: Mapping[str, Any] | None = None,
    budgets: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``/api/summary`` document."""
    totals = {
        name: sum((getattr(source, name) for source in engine.sources.values()), start)
        for name, start in TOTAL_FIELDS.items()
    }
    start_5m = now - timedelta(seconds=LAST_5M_SECONDS)
    periods: dict[str, dict[str, Any]] = {
        "last_5m": {
            "cost_usd": engine.window_cost(now, LAST_5M_SECONDS),
            "requests": engine.window_requests(now, LAST_5M_SECONDS),
            "start": start_5m.isoformat(),
            "end": now.isoformat(),
        }
    }
    for period in PERIODS:
        cost, requests = engine.period_totals(now, period)
        start, end = engine.period_bounds(now, period)
        periods[period] = {
            "cost_usd": cost,
            "requests": requests,
            "start": start.isoformat(),
            "end": end.isoformat(),
        }
    savings = engine.cache_savings()
    sources = []
    for view in views:
        state = view.reconciler.state
        sources.append(
            {
                "name": view.spec.name,
                "url": redact_url(view.spec.url),
                "kind": view.spec.effective_kind,
                "connection_status": view.connection.status,
                "reason": view.connection.reason,
                "proxy_restarts": state.proxy_restarts,
                "gaps": state.gaps,
                "baseline_cost_usd": state.baseline_cost,
                "baseline_calls": state.baseline_calls,
                "proxy_reported_cost_usd": state.proxy_cost,
                "proxy_reported_calls": state.last_calls,
                "accounted_cost_usd": state.attributed_cost + state.unattributed_cost,
                "accounted_requests": state.attributed_requests + state.unattributed_requests,
                "proxy_errors": state.proxy_errors,
                "oversized_windows": state.oversized_windows,
                "bad_frames": dict(view.connection.bad_frames),
            }
        )
    return {
        "generated_at": now.isoformat(),
        "currency": "USD",
        "timezone": str(engine.zone),
        "totals": totals,
        "by_tier": engine.by_tier(),
        "by_model": engine.by_model(),
        "unpriced_models": dict(engine.unpriced_models),
        "periods": periods,
        "cache_savings_usd": savings,
        "cache_savings_percent": (
            savings / (savings + totals["cost_usd"]) * 100.0
            if savings + totals["cost_usd"] > 0
            else None
        ),
        "events_per_second": {
            "1m": engine.events_per_second(now, 60),
            "5m": engine.events_per_second(now, 300),
        },
        "burn_rate_usd_per_hour": {
            "5m": engine.burn_rate(now, 300),
            "1h": engine.burn_rate(now, 3600),
        },
        "projections": dict(projections) if projections is not None else None,
        "budgets": list(budgets) if budgets is not None else [],
        "sources": sources,
    }
