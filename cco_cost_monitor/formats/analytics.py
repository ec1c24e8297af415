"""The proxy's current ``analytics`` snapshots (and the early six-field events). Pure.

Owns the accounting of snapshots: new events are what follows the end of the previous window
(:mod:`~cco_cost_monitor.ring`), counters are settled against them
(:mod:`~cco_cost_monitor.settlement`), restarts are recognised by the signs the wire-format
spec lists. Its own state: the previous window, the last uptime, the settlement and the
occurrence numbers of identical events. Also the proxy's ``error`` event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from cco_cost_monitor.facts import (
    AccountedEvent,
    Accounting,
    CostBasis,
    Unattributed,
    counted_cost,
    digest,
    replace_cost,
)
from cco_cost_monitor.formats.base import COST_EPSILON, Context, SourceState, format_changed
from cco_cost_monitor.pricing import tier_of
from cco_cost_monitor.ring import Occurrences, overlap
from cco_cost_monitor.settlement import Counters, Settlement, Shortfall
from cco_cost_monitor.wire import (
    ActivityEvent,
    Frame,
    ProxyError,
    Snapshot,
    event_key,
    parse_timestamp,
)

__all__ = ["PROXY_WINDOW", "REQUEST_EVENT_TYPES", "AnalyticsStrategy", "ProxyErrorStrategy"]

REQUEST_EVENT_TYPES = frozenset({"api_call", "cache_hit"})
PROXY_WINDOW = 20
#: Content keys whose occurrences are numbered (identical events are close in the ring).
OCCURRENCE_MEMORY = 256


class AnalyticsStrategy:
    """Exactly-once accounting of one proxy's snapshots."""

    def __init__(self, ctx: Context, book: SourceState, saved: dict[str, Any]) -> None:
        self.ctx = ctx
        self.book = book
        self.last_uptime: int | None = saved.get("last_uptime")
        # Content keys of the previous window, oldest first, duplicates kept: the next window
        # starts with its end (ring.overlap), and what follows is new.
        self.last_window: list[str] = list(saved.get("last_window", []))
        if "last_window" not in saved and saved.get("seen"):
            # Saved before windows were kept whole: the newest keys, in the order counted.
            self.last_window = list(saved["seen"])[-PROXY_WINDOW:]
        self.settlement = Settlement(saved.get("settlement"), settle_seconds=ctx.settle_seconds)
        self.occurrences = Occurrences(
            OCCURRENCE_MEMORY, (tuple(item) for item in saved.get("occurrences", []))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_uptime": self.last_uptime,
            "last_window": self.last_window,
            "settlement": self.settlement.to_dict(),
            "occurrences": self.occurrences.items(),
        }

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        assert isinstance(frame, Snapshot)
        return self._apply(frame, observed_at)

    def _restarted(self, snap: Snapshot, window: list[str], common: int, signature: str) -> bool:
        """The signs of a new proxy process the spec lists, and nothing a race can produce."""
        book = self.book
        previous = self.last_window
        if previous and len(window) < self.ctx.window and common < len(previous):
            return True  # a ring that has not wrapped always ends with the previous window
        if format_changed(book.signature, signature):
            return True  # another wire format: another binary
        calls, cost, uptime = snap.project.calls, snap.project.cost, snap.machine.uptime
        if uptime is not None and self.last_uptime is not None and uptime < self.last_uptime:
            return True
        if calls is not None and book.last_calls is not None and calls < book.last_calls:
            return True
        return (
            cost is not None
            and book.last_cost is not None
            and (cost < book.last_cost - COST_EPSILON)
        )

    def _window(self, snap: Snapshot, observed_at: datetime) -> tuple[list[ActivityEvent], bool]:
        """The window, never longer than the proxy's, and whether it was longer.

        The proxy sends at most 20 events. The events of a longer window are not believed (a
        hostile stream could make any number look new); its newest 20 are remembered as seen,
        so the counters account the requests it claims, as unattributed, exactly once.
        """
        activity = snap.activity
        if len(activity) > self.ctx.window:
            self.book.oversized_windows += 1
            self.book.last_oversized_at = observed_at.isoformat()
            return activity[-self.ctx.window :], True
        return activity, False

    def _apply(self, snap: Snapshot, observed_at: datetime) -> Accounting:
        book = self.book
        calls = snap.project.calls
        cost = None if snap.project.cost is None else float(snap.project.cost)
        uptime = snap.machine.uptime
        snapshot_at = parse_timestamp(snap.project.last_updated)
        activity, oversized = self._window(snap, observed_at)
        window = [digest(event_key(event)) for event in activity]
        signature = _signature(activity)

        if not book.baseline_set:
            book.baseline_set = True
            book.baseline_cost = cost or 0.0
            book.baseline_calls = calls or 0
            self._remember_totals(cost, calls, uptime, snapshot_at, observed_at)
            self._remember_window(window, signature)
            self.settlement.start(
                self._counters(calls, cost, snapshot_at, observed_at),
                book.unattributed_requests,
                book.unattributed_cost,
                estimated=False,
            )
            return Accounting(self.ctx.source, observed_at, first_contact=True)

        previous = self.last_window
        previous_at = book.last_snapshot_at
        common = overlap(previous, window)
        restart = self._restarted(snap, window, common, signature)
        # A new process's ring starts empty: every event of its first window is new, even one
        # identical to the last event seen before (a twin queued across the restart).
        start = 0 if restart else common
        fresh = [] if oversized else list(zip(window[start:], activity[start:], strict=True))
        events = [
            self._account_activity(self.occurrences.key(key), event, observed_at)
            for key, event in fresh
        ]
        new_requests = sum(event.requests for event in events)
        if not restart and calls is not None and book.last_calls is not None:
            # Events of the first window that are not in `calls` yet (a snapshot is not atomic)
            # are new all the same; only those of early-format events need the growth.
            delta_cost = None if cost is None or book.last_cost is None else cost - book.last_cost
            if calls - book.last_calls == new_requests and delta_cost is not None:
                events = self._apportion(events, delta_cost)
        accounting_events = tuple(events)
        for event in accounting_events:
            book.attributed_cost += event.cost_usd
            book.attributed_requests += event.requests

        full = len(window) >= self.ctx.window
        closing = None
        if restart:
            book.proxy_restarts += 1
            closing = self.settlement.close(book.unattributed_requests, book.unattributed_cost)
            if closing is not None:
                book.unattributed_requests += closing.requests
                book.unattributed_cost += closing.cost
            new_cost = sum(event.cost_usd for event in events)
            reloaded_calls = (calls or 0) - new_requests
            reloaded_cost = (cost or 0.0) - new_cost
            reason: Literal["gap", "restart_overflow", "restart_gap"] = "restart_gap"
            cap = None
            if full:
                # Post-restart events may have scrolled out unseen: the reloaded total is taken
                # as at most what was seen before the restart (an estimate, labelled).
                reason = "restart_overflow"
                cap = (
                    reloaded_calls if book.last_calls is None else book.last_calls,
                    reloaded_cost if book.last_cost is None else book.last_cost,
                )
            self.settlement.start(
                Counters(
                    reloaded_calls,
                    reloaded_cost,
                    book.attributed_requests - new_requests,
                    book.attributed_cost - new_cost,
                    observed_at.timestamp(),
                    None if snapshot_at is None else snapshot_at.timestamp(),
                ),
                book.unattributed_requests,
                book.unattributed_cost,
                estimated=True,
                loss=full,
                reason=reason,
                cap=cap,
                likely=_likely_reloads(book.last_calls, book.last_cost),
            )
        self._remember_totals(cost, calls, uptime, snapshot_at, observed_at)
        shortfall = self.settlement.observe(
            self._counters(calls, cost, snapshot_at, observed_at),
            unchanged=not oversized and common == len(previous) == len(window),
            loss=not restart and full and common == 0,
            unexplained_requests=book.unattributed_requests,
            unexplained_cost=book.unattributed_cost,
        )
        if shortfall is not None:
            book.unattributed_cost += shortfall.cost
            book.unattributed_requests += shortfall.requests
        if closing is not None and shortfall is not None:  # not seen: the run just started
            shortfall = Shortfall(
                closing.requests + shortfall.requests, closing.cost + shortfall.cost, "gap"
            )
        shortfall = shortfall or closing
        unattributed = None
        if shortfall is not None:
            book.gaps += 1
            unattributed = Unattributed(
                self.ctx.source,
                snapshot_at or observed_at,
                shortfall.requests,
                shortfall.cost,
                0,
                shortfall.reason,
                None if previous_at is None else datetime.fromisoformat(previous_at),
            )
        self._remember_window(window, signature)
        return Accounting(
            self.ctx.source,
            observed_at,
            accounting_events,
            unattributed,
            proxy_restart=restart,
        )

    def _counters(
        self,
        calls: int | None,
        cost: float | None,
        snapshot_at: datetime | None,
        observed_at: datetime,
    ) -> Counters:
        """This snapshot's counters (the last known where one is missing) and events counted."""
        book = self.book
        return Counters(
            calls if calls is not None else (book.last_calls or 0),
            cost if cost is not None else (book.last_cost or 0.0),
            book.attributed_requests,
            book.attributed_cost,
            observed_at.timestamp(),
            None if snapshot_at is None else snapshot_at.timestamp(),
        )

    def _remember_window(self, window: list[str], signature: str) -> None:
        self.last_window = window
        if signature != "current" or not self.book.signature.startswith("current"):
            self.book.signature = signature

    def _remember_totals(
        self,
        cost: float | None,
        calls: int | None,
        uptime: int | None,
        snapshot_at: datetime | None,
        observed_at: datetime,
    ) -> None:
        book = self.book
        if cost is not None:
            book.last_cost = cost
            book.proxy_cost = cost
        if calls is not None:
            book.last_calls = calls
        if uptime is not None:
            self.last_uptime = uptime
        book.last_snapshot_at = (snapshot_at or observed_at).isoformat()

    def _account_activity(
        self, key: str, event: ActivityEvent, observed_at: datetime
    ) -> AccountedEvent:
        # The ingestion hot path: one branch per event type, positional construction.
        event_type = event.event_type
        model = event.model
        recorded = None if event.cost is None else float(event.cost)
        calculated: float | None = None
        priced = True
        requests = 1
        if event_type == "api_call":
            if event.tokens is not None:
                calculated = self.ctx.prices.combined_usd(model, event.tokens)
                priced = calculated is not None
            else:
                priced = self.ctx.prices.match(model) is not None
        elif event_type == "cache_hit":
            calculated = 0.0
        else:
            requests = 0
        cost: float = 0.0
        basis: CostBasis = "none"
        if requests:
            cost, basis = counted_cost(recorded, calculated)
        return AccountedEvent(
            self.ctx.source,
            key,
            parse_timestamp(event.timestamp) or observed_at,
            event_type,
            model,
            tier_of(model),
            requests,
            1 if event_type == "cache_hit" else 0,
            event.tokens,
            None,  # input_tokens: this stream sends one combined count
            None,  # output_tokens
            event.latency_ms,
            event.status,
            cost,
            recorded,
            calculated,
            basis,
            priced,
            self.ctx.prices.version,
        )

    def _apportion(
        self, events: list[AccountedEvent], delta_cost: float | None
    ) -> list[AccountedEvent]:
        """Give events that carry no cost (early format) a share of the unexplained growth.

        When every new call is visible (``delta_cost`` given), the growth not covered by
        recorded costs belongs to the cost-less events: split it in proportion to their
        calculated cost. Otherwise they keep their calculated cost, an estimate.
        """
        costless = [
            index
            for index, event in enumerate(events)
            if event.requests and event.recorded_cost_usd is None and event.event_type == "api_call"
        ]
        if not costless or delta_cost is None:
            return events
        recorded_total = sum(
            event.cost_usd for event in events if event.recorded_cost_usd is not None
        )
        remaining = max(0.0, delta_cost - recorded_total)
        weights = [events[index].calculated_cost_usd or 0.0 for index in costless]
        total_weight = sum(weights)
        result = list(events)
        for index, weight in zip(costless, weights, strict=True):
            share = weight / total_weight if total_weight > 0 else 1.0 / len(costless)
            result[index] = replace_cost(result[index], remaining * share, "apportioned")
        return result


class ProxyErrorStrategy:
    """The proxy's ``error`` event: it failed to serialise a snapshot. Counted, nothing else."""

    def __init__(self, ctx: Context, book: SourceState, saved: dict[str, Any]) -> None:
        self.ctx = ctx
        self.book = book

    def to_dict(self) -> dict[str, Any]:
        return {}

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        assert isinstance(frame, ProxyError)
        self.book.proxy_errors += 1
        return Accounting(self.ctx.source, observed_at, proxy_error=frame.error[:500])


def _signature(activity: list[ActivityEvent]) -> str:
    """The format of a current snapshot: with the event shape when it has events."""
    if not activity:
        return "current"
    return "current/eight" if "cost" in activity[-1].model_fields_set else "current/six"


def _likely_reloads(calls: int | None, cost: float | None) -> tuple[tuple[int, float], ...]:
    """What a restarted proxy most often reloads: the last totals seen of the run before (it
    saved just before it stopped, or nothing happened since its last save), or nothing (a
    metrics file cut by a crash)."""
    likely = [(0, 0.0)]
    if calls is not None and cost is not None:
        likely.append((calls, cost))
    return tuple(likely)
