"""The proxy's old ``{cache, models, totals}`` snapshots (until 2025-11-15). Pure.

No events: spend is the growth of each model's cumulative totals. Its own state: the last
per-model totals (``old_models``). A restart re-baselines: with no event window, spend
between a restart and the next snapshot cannot be told from the reloaded totals.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cco_cost_monitor.facts import AccountedEvent, Accounting, Unattributed, digest
from cco_cost_monitor.formats.base import COST_EPSILON, Context, SourceState, format_changed
from cco_cost_monitor.pricing import tier_of
from cco_cost_monitor.wire import Frame, OldSnapshot

__all__ = ["LegacyStrategy"]


class LegacyStrategy:
    """Per-model deltas of the old format's cumulative totals."""

    def __init__(self, ctx: Context, book: SourceState, saved: dict[str, Any]) -> None:
        self.ctx = ctx
        self.book = book
        self.old_models: dict[str, list[float]] = dict(saved.get("old_models", {}))
        # The proxy reads totals and per-model figures under separate locks: growth the models
        # show before the totals do is carried (never booked as negative spend).
        self.carry: list[float] = list(saved.get("old_carry", [0.0, 0.0]))

    def to_dict(self) -> dict[str, Any]:
        return {"old_models": self.old_models, "old_carry": self.carry}

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        assert isinstance(frame, OldSnapshot)
        return self._apply_old(frame, observed_at)

    def _apply_old(self, snap: OldSnapshot, observed_at: datetime) -> Accounting:
        book = self.book
        totals = {
            entry.model: [float(entry.requests), float(entry.cache_hits), float(entry.actual_cost)]
            for entry in snap.models
        }
        requests = snap.totals.requests
        cost = float(snap.totals.actual_cost)
        if not book.baseline_set:
            book.baseline_set = True
            book.baseline_cost = cost
            book.baseline_calls = requests
            self.old_models = totals
            book.last_cost, book.last_calls, book.proxy_cost = cost, requests, cost
            book.last_snapshot_at = observed_at.isoformat()
            book.signature = "old"
            return Accounting(self.ctx.source, observed_at, first_contact=True)
        # One process's cumulative counters never fall: any that does is a new process,
        # even when queued traffic lifted the totals above the last seen.
        fell = any(
            values[0] < self.old_models.get(model, [0.0])[0]
            or values[2] < self.old_models.get(model, [0.0, 0.0, 0.0])[2] - COST_EPSILON
            for model, values in totals.items()
        )
        restart = (
            (book.last_calls is not None and requests < book.last_calls)
            or fell
            or format_changed(book.signature, "old")
        )
        events: list[AccountedEvent] = []
        if restart:
            # The old format has no event window: spend between the restart and this
            # snapshot cannot be told from the reloaded totals. Re-baseline.
            book.proxy_restarts += 1
            self.carry = [0.0, 0.0]
        else:
            for model, (model_requests, hits, model_cost) in totals.items():
                before = self.old_models.get(model, [0.0, 0.0, 0.0])
                delta_requests = int(model_requests - before[0])
                delta_hits = int(hits - before[1])
                delta_cost = model_cost - before[2]
                if delta_requests <= 0 and abs(delta_cost) < COST_EPSILON:
                    continue
                events.append(
                    AccountedEvent(
                        source=self.ctx.source,
                        key=digest(f"old\x1f{model}\x1f{observed_at.isoformat()}"),
                        occurred_at=observed_at,
                        event_type="aggregate",
                        model=model,
                        tier=tier_of(model),
                        requests=delta_requests,
                        cache_hits=delta_hits,
                        tokens=None,
                        input_tokens=None,
                        output_tokens=None,
                        latency_ms=None,
                        status=None,
                        cost_usd=delta_cost,
                        recorded_cost_usd=delta_cost,
                        calculated_cost_usd=None,
                        cost_basis="recorded",
                        priced=self.ctx.prices.match(model) is not None,
                        price_version=self.ctx.prices.version,
                    )
                )
        unattributed = None
        if not restart and book.last_calls is not None and book.last_cost is not None:
            missing_requests = (requests - book.last_calls) - sum(e.requests for e in events)
            missing_cost = (cost - book.last_cost) - sum(e.cost_usd for e in events)
            missing_requests += int(self.carry[0])
            missing_cost += self.carry[1]
            self.carry = [float(min(0, missing_requests)), min(0.0, missing_cost)]
            missing_requests = max(0, missing_requests)
            missing_cost = max(0.0, missing_cost)
            if abs(missing_cost) < COST_EPSILON:
                missing_cost = 0.0
            if abs(self.carry[1]) < COST_EPSILON:
                self.carry[1] = 0.0
            if missing_requests or missing_cost:
                book.gaps += 1
                unattributed = Unattributed(
                    self.ctx.source, observed_at, missing_requests, missing_cost, 0, "gap"
                )
        self.old_models = totals
        book.last_cost, book.last_calls, book.proxy_cost = cost, requests, cost
        book.last_snapshot_at = observed_at.isoformat()
        book.signature = "old"
        accounting = Accounting(
            self.ctx.source, observed_at, tuple(events), unattributed, proxy_restart=restart
        )
        self.book.count(accounting)
        return accounting
