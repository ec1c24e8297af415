"""Prometheus exposition: a collector that reads the running service at scrape time.

Nothing here runs on the ingestion path. :class:`ServiceCollector` is registered in a
dedicated :class:`~prometheus_client.CollectorRegistry` (never the global one) and, on
each scrape, turns the engine's counters, the connection states, the reconcilers and
the summary document (burn rates, projections, budgets) into metric families. Labels
are bounded: sources come from the configuration, tiers and event types from closed
sets, and the engine folds models beyond ``MAX_MODELS`` per source into
``"(other models)"``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from cco_cost_monitor import __version__
from cco_cost_monitor.budgets import BUDGET_STATES
from cco_cost_monitor.service_parts import ServiceParts
from cco_cost_monitor.summary import PERIODS

__all__ = ["ServiceCollector", "make_registry", "metrics_handler"]


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (not a bool, not None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class ServiceCollector(Collector):
    """Builds every ``cco_*`` metric family from the service's state on demand."""

    def __init__(self, service: ServiceParts) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at registration time.
        return []

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        yield from self._counters()
        yield from self._connections()
        yield from self._summary()
        yield from self._store()
        build = GaugeMetricFamily(
            "cco_monitor_build_info",
            "Version of the running cco-monitor (always 1).",
            labels=["version"],
        )
        build.add_metric([__version__], 1.0)
        yield build
        start_time = GaugeMetricFamily(
            "cco_monitor_start_time_seconds", "When this monitor process started (Unix time)."
        )
        start_time.add_metric([], self.service.started_at.timestamp())
        yield start_time
        duration = GaugeMetricFamily(
            "cco_monitor_scrape_duration_seconds",
            "Time spent building this scrape's metrics (excluding this one).",
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    # -- accounting counters -----------------------------------------------------------

    def _counters(self) -> Iterable[Metric]:
        engine = self.service.engine
        cost = CounterMetricFamily(
            "cco_cost_usd",
            "Attributed spend in USD since the monitor first connected.",
            labels=["source", "tier", "model"],
        )
        tokens_by: dict[tuple[str, str], int] = {}
        cache_by: dict[tuple[str, str], int] = {}
        for (source, tier, model), aggregate in sorted(engine.models.items()):
            cost.add_metric([source, tier, model], aggregate.cost_usd)
            key = (source, tier)
            tokens_by[key] = tokens_by.get(key, 0) + aggregate.tokens
            cache_by[key] = cache_by.get(key, 0) + aggregate.cache_hits
        yield cost

        tokens = CounterMetricFamily(
            "cco_tokens", "Tokens of accounted requests.", labels=["source", "tier"]
        )
        cache_hits = CounterMetricFamily(
            "cco_cache_hits",
            "Requests the proxy answered from its cache.",
            labels=["source", "tier"],
        )
        for pair in sorted(tokens_by):
            tokens.add_metric(list(pair), float(tokens_by[pair]))
            cache_hits.add_metric(list(pair), float(cache_by[pair]))
        yield tokens
        yield cache_hits

        requests = CounterMetricFamily(
            "cco_requests",
            "Accounted requests by tier and event type.",
            labels=["source", "tier", "event_type"],
        )
        unattributed = CounterMetricFamily(
            "cco_unattributed_cost_usd",
            "Spend the proxy reported that no event explains (USD).",
            labels=["source"],
        )
        unattributed_requests = CounterMetricFamily(
            "cco_unattributed_requests",
            "Requests the proxy reported that no event explains.",
            labels=["source"],
        )
        events = CounterMetricFamily("cco_events_processed", "Accounted events.", labels=["source"])
        lost = CounterMetricFamily(
            "cco_lost_events",
            "Events known to be lost (covered by unattributed spend).",
            labels=["source"],
        )
        savings = CounterMetricFamily(
            "cco_cache_savings_usd",
            "What the proxy's cache hits would have cost (USD): each cache_hit priced by its "
            "model and tokens.",
            labels=["source"],
        )
        for source, totals in sorted(engine.sources.items()):
            savings.add_metric([source], totals.cache_savings_usd)
            for (tier, event_type), count in sorted(totals.requests_by_type.items()):
                requests.add_metric([source, tier, event_type], float(count))
            unattributed.add_metric([source], totals.unattributed_cost_usd)
            unattributed_requests.add_metric([source], float(totals.unattributed_requests))
            events.add_metric([source], float(totals.events))
            lost.add_metric([source], float(totals.lost_events))
        yield from (requests, unattributed, unattributed_requests, events, lost, savings)

        last_event = GaugeMetricFamily(
            "cco_last_event_timestamp_seconds",
            "Time of the newest accounted event (Unix time).",
            labels=["source"],
        )
        for source, moment in sorted(engine.last_event_at.items()):
            last_event.add_metric([source], moment.timestamp())
        yield last_event

    # -- connections -------------------------------------------------------------------

    def _connections(self) -> Iterable[Metric]:
        connected = GaugeMetricFamily(
            "cco_sse_connected",
            "1 while the SSE stream of the source is connected.",
            labels=["source"],
        )
        reconnects = CounterMetricFamily(
            "cco_sse_reconnects", "Reconnect attempts to the source.", labels=["source"]
        )
        frames = CounterMetricFamily(
            "cco_sse_frames", "SSE frames received from the source.", labels=["source"]
        )
        snapshots = CounterMetricFamily(
            "cco_sse_snapshots",
            "Analytics snapshots received from the source.",
            labels=["source"],
        )
        bad_frames = CounterMetricFamily(
            "cco_sse_bad_frames", "Malformed frames skipped, by kind.", labels=["source", "kind"]
        )
        last_snapshot = GaugeMetricFamily(
            "cco_last_snapshot_timestamp_seconds",
            "Time of the newest snapshot (Unix time).",
            labels=["source"],
        )
        restarts = CounterMetricFamily(
            "cco_proxy_restarts",
            "Proxy restarts detected (its counters went back).",
            labels=["source"],
        )
        gaps = CounterMetricFamily(
            "cco_accounting_gaps",
            "Accounting gaps closed with unattributed spend.",
            labels=["source"],
        )
        for name, source in sorted(self.service.sources.items()):
            state = source.state
            connected.add_metric([name], 1.0 if state.status == "connected" else 0.0)
            reconnects.add_metric([name], float(state.reconnects))
            frames.add_metric([name], float(state.frames))
            snapshots.add_metric([name], float(state.snapshots))
            for kind, count in sorted(state.bad_frames.items()):
                bad_frames.add_metric([name, kind], float(count))
            if state.last_snapshot_at is not None:
                last_snapshot.add_metric([name], state.last_snapshot_at.timestamp())
            reconciler = self.service.reconcilers.get(name)
            if reconciler is not None:
                restarts.add_metric([name], float(reconciler.state.proxy_restarts))
                gaps.add_metric([name], float(reconciler.state.gaps))
        yield from (connected, reconnects, frames, snapshots, bad_frames, last_snapshot)
        yield from (restarts, gaps)

    # -- derived figures ---------------------------------------------------------------

    def _summary(self) -> Iterable[Metric]:
        document = self.service.summary()
        burn = GaugeMetricFamily(
            "cco_burn_rate_usd_per_hour",
            "Spend rate over a trailing window (USD per hour).",
            labels=["window"],
        )
        for window, value in sorted((document.get("burn_rate_usd_per_hour") or {}).items()):
            number = _number(value)
            if number is not None:
                burn.add_metric([str(window)], number)
        yield burn

        period_cost = GaugeMetricFamily(
            "cco_period_cost_usd",
            "Spend so far in the current calendar period, or in the last 5 minutes "
            '(period="last_5m") (USD).',
            labels=["period"],
        )
        for period in ("last_5m", *PERIODS):
            row = (document.get("periods") or {}).get(period) or {}
            number = _number(row.get("cost_usd"))
            if number is not None:
                period_cost.add_metric([period], number)
        yield period_cost

        rate = GaugeMetricFamily(
            "cco_events_per_second",
            "Accounted events per second over a trailing window.",
            labels=["window"],
        )
        for window, value in sorted((document.get("events_per_second") or {}).items()):
            number = _number(value)
            if number is not None:
                rate.add_metric([str(window)], number)
        yield rate

        yield from self._projections(document.get("projections"))
        yield from self._budgets(document.get("budgets"))

    def _projections(self, projections: Mapping[str, Any] | None) -> Iterable[Metric]:
        projected = GaugeMetricFamily(
            "cco_projected_cost_usd",
            "Projected spend at the end of the horizon (USD).",
            labels=["horizon"],
        )
        low = GaugeMetricFamily(
            "cco_projected_cost_low_usd",
            "Lower band of the projection (USD).",
            labels=["horizon"],
        )
        high = GaugeMetricFamily(
            "cco_projected_cost_high_usd",
            "Upper band of the projection (USD).",
            labels=["horizon"],
        )
        for horizon, row in sorted((projections or {}).items()):
            if not isinstance(row, Mapping):
                continue
            for family, key in ((projected, "cost_usd"), (low, "low_usd"), (high, "high_usd")):
                number = _number(row.get(key))
                if number is not None:
                    family.add_metric([str(horizon)], number)
        yield from (projected, low, high)

    def _budgets(self, budgets: Iterable[Any] | None) -> Iterable[Metric]:
        used = GaugeMetricFamily(
            "cco_budget_used_ratio",
            "Share of the budget spent (1 = limit reached).",
            labels=["period", "tier"],
        )
        limit = GaugeMetricFamily(
            "cco_budget_limit_usd", "Configured budget limit (USD).", labels=["period", "tier"]
        )
        state = GaugeMetricFamily(
            "cco_budget_state",
            "The budget's state: 1 for the current one, 0 for the others.",
            labels=["period", "tier", "state"],
        )
        seen: set[tuple[str, str]] = set()
        for budget in budgets or []:
            if not isinstance(budget, Mapping) or budget.get("period") is None:
                continue
            key = (str(budget["period"]), str(budget.get("tier") or "all"))
            if key in seen:  # a duplicate series would make the whole scrape invalid
                continue
            seen.add(key)
            ratio = _number(budget.get("used_ratio"))
            if ratio is not None:
                used.add_metric(list(key), ratio)
            amount = _number(budget.get("limit_usd"))
            if amount is not None:
                limit.add_metric(list(key), amount)
            for name in BUDGET_STATES:
                state.add_metric([*key, name], 1.0 if budget.get("state") == name else 0.0)
        yield from (used, limit, state)
        alerts = CounterMetricFamily(
            "cco_alerts",
            "Budget alerts fired by this process (its history, also restored, is /api/alerts).",
            labels=["kind"],
        )
        for kind, number in sorted(self.service.dispatcher.fired_by_kind().items()):
            alerts.add_metric([kind], float(number))
        yield alerts

    def _store(self) -> Iterable[Metric]:
        status = self.service.store_status()
        if status is None:
            return
        lag = _number(status.get("lag_seconds"))
        if lag is not None:
            family = GaugeMetricFamily(
                "cco_store_lag_seconds", "How far the database writer is behind (seconds)."
            )
            family.add_metric([], lag)
            yield family


def make_registry(service: ServiceParts) -> CollectorRegistry:
    """A dedicated registry holding only the service collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service))
    return registry


def metrics_handler(service: ServiceParts) -> Handler:
    """The aiohttp handler for ``GET /metrics`` (text format; OpenMetrics on request)."""
    inner = make_aiohttp_handler(make_registry(service))

    async def handler(request: web.Request) -> web.StreamResponse:
        response = await inner(request)
        response.headers["Cache-Control"] = "no-store"
        return response

    return handler
