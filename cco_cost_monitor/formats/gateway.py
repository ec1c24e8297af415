"""The CCO gateway's per-request ``stream_event`` stream. Pure.

``request_id`` is the identity (remembered in a bounded set); ``started`` gives the model and
waits in a bounded pending map for ``completed`` (tokens and cost) or ``error``; ``lag``
(events dropped for a slow subscriber) is counted as lost events. Its own state: the pending
map, its evictions, and the request ids counted (``seen``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cco_cost_monitor.facts import AccountedEvent, Accounting, Unattributed, counted_cost, digest
from cco_cost_monitor.formats.base import BoundedKeySet, Context, SourceState
from cco_cost_monitor.pricing import tier_of
from cco_cost_monitor.wire import (
    Frame,
    GatewayCompleted,
    GatewayError,
    GatewayLag,
    GatewayStarted,
    GatewayTextDelta,
)

__all__ = ["PERSISTED_KEYS", "GatewayStrategy"]

#: Request ids saved with the state: enough for any replay after a monitor restart.
PERSISTED_KEYS = 512


class GatewayStrategy:
    """Exactly-once accounting of gateway requests by ``request_id``."""

    def __init__(self, ctx: Context, book: SourceState, saved: dict[str, Any]) -> None:
        self.ctx = ctx
        self.book = book
        self.pending: dict[str, list[str | None]] = dict(saved.get("pending", {}))
        self.pending_evicted: int = int(saved.get("pending_evicted", 0))
        keys = saved.get("seen", []) if book.kind == "gateway" else []
        self.seen = BoundedKeySet(ctx.capacity, keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "pending_evicted": self.pending_evicted,
            "seen": self.seen.newest(PERSISTED_KEYS),
        }

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        assert isinstance(
            frame, GatewayStarted | GatewayTextDelta | GatewayCompleted | GatewayError | GatewayLag
        )
        return self._apply_gateway(frame, observed_at)

    def _apply_gateway(
        self,
        frame: GatewayStarted | GatewayTextDelta | GatewayCompleted | GatewayError | GatewayLag,
        observed_at: datetime,
    ) -> Accounting:
        book = self.book
        book.baseline_set = True
        if isinstance(frame, GatewayLag):
            if frame.skipped == 0:
                return Accounting(self.ctx.source, observed_at)
            book.gaps += 1
            accounting = Accounting(
                self.ctx.source,
                observed_at,
                unattributed=Unattributed(
                    self.ctx.source, observed_at, 0, 0.0, frame.skipped, "lag"
                ),
            )
            self.book.count(accounting)
            return accounting
        if isinstance(frame, GatewayTextDelta):
            return Accounting(self.ctx.source, observed_at)
        key = digest(f"gw\x1f{frame.request_id}")
        if key in self.seen:
            return Accounting(self.ctx.source, observed_at)
        if isinstance(frame, GatewayStarted):
            self.pending[frame.request_id] = [frame.model, observed_at.isoformat()]
            while len(self.pending) > self.ctx.pending_capacity:
                del self.pending[next(iter(self.pending))]
                self.pending_evicted += 1
            return Accounting(self.ctx.source, observed_at)
        started = self.pending.pop(frame.request_id, None)
        model = started[0] if started else None
        self.seen.add(key)
        if isinstance(frame, GatewayError):
            event = self._gateway_event(key, "error", model, observed_at, 0, 0, 0.0, "error")
        else:
            event = self._gateway_event(
                key,
                "api_call",
                model,
                observed_at,
                frame.input_tokens,
                frame.output_tokens,
                None if frame.cost_usd is None else float(frame.cost_usd),
                "success",
            )
        accounting = Accounting(self.ctx.source, observed_at, (event,))
        self.book.count(accounting)
        return accounting

    def _gateway_event(
        self,
        key: str,
        event_type: str,
        model: str | None,
        observed_at: datetime,
        input_tokens: int,
        output_tokens: int,
        recorded: float | None,
        status: str,
    ) -> AccountedEvent:
        estimate = (
            self.ctx.prices.cost(model, input_tokens=input_tokens, output_tokens=output_tokens)
            if event_type == "api_call"
            else None
        )
        calculated = estimate.usd if estimate else None
        cost, basis = counted_cost(recorded, calculated)
        return AccountedEvent(
            source=self.ctx.source,
            key=key,
            occurred_at=observed_at,
            event_type=event_type,
            model=model,
            tier=tier_of(model),
            requests=1,
            cache_hits=0,
            tokens=input_tokens + output_tokens,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_ms=None,
            status=status,
            cost_usd=cost,
            recorded_cost_usd=recorded,
            calculated_cost_usd=calculated,
            cost_basis=basis,
            priced=event_type != "api_call" or estimate is not None,
            price_version=self.ctx.prices.version,
        )
