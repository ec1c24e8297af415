"""Exactly-once accounting: from repeated proxy snapshots to accounted facts. Pure, no I/O.

The proxy's events carry no id and every snapshot repeats the last 20 of them. A
:class:`Reconciler` (one per source) remembers the previous window and counts what follows its
end (:mod:`~cco_cost_monitor.ring`: duplicates kept, twins get their own keys), and settles
the proxy's cumulative totals against the events seen (:mod:`~cco_cost_monitor.settlement`:
a snapshot is not atomic, so only settled counters are compared).

Per snapshot it returns an :class:`Accounting`: the newly seen events, priced, and an
:class:`Unattributed` remainder once it is proven. The invariant it keeps, per source::

    attributed cost + unattributed cost == growth of project.cost since first contact

(summed over proxy restarts, exact at every quiet point); likewise for requests against
``project.calls``.

Rules (see docs/accounting.md for the worked reasoning):

- **First contact**: the totals and the events already in the window are history. They
  set the baseline and count nothing.
- **Gap**: growth of ``calls``/``cost`` that no event explains, once settled, is
  unattributed spend (bursts beyond the window, events that scrolled out while
  disconnected). It is never dropped, never counted twice, never negative.
- **Proxy restart**: ``machine.uptime`` or a total going down, a change of wire format, or a
  window shorter than 20 that does not continue the previous one -- never a window with
  more new events than ``calls`` grew by (a busy proxy). The old run is settled against its
  last snapshot; every event of the new run's first window is new. A full first window may
  hide scrolled-out events: the remainder is labelled ``restart_overflow`` (an estimate).
- A window longer than the proxy's 20 is not believed: its events are not counted, the
  counters account what it claims (``oversized_windows``).
- ``model_override`` is its own kind: never a request, never cost.
- Old ``{cache, models, totals}`` format: spend is the per-model growth of the totals.
- Gateway stream: ``request_id`` is the identity; ``started`` gives the model, joined with
  ``completed`` in a bounded pending map; ``lag`` is counted as lost events.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, Literal

from cco_cost_monitor.pricing import PriceTable, Tier, tier_of
from cco_cost_monitor.ring import Occurrences, overlap
from cco_cost_monitor.settlement import SETTLE_SECONDS, Counters, Settlement, Shortfall
from cco_cost_monitor.wire import (
    ActivityEvent,
    Frame,
    GatewayCompleted,
    GatewayError,
    GatewayLag,
    GatewayStarted,
    GatewayTextDelta,
    OldSnapshot,
    ProxyError,
    Snapshot,
    event_key,
    parse_timestamp,
)

__all__ = [
    "REQUEST_EVENT_TYPES",
    "AccountedEvent",
    "Accounting",
    "BoundedKeySet",
    "Reconciler",
    "SourceState",
    "Unattributed",
]

REQUEST_EVENT_TYPES = frozenset({"api_call", "cache_hit"})
PROXY_WINDOW = 20
COST_EPSILON = 1e-9
PERSISTED_KEYS = 512
#: Content keys whose occurrences are numbered (identical events are close in the ring).
OCCURRENCE_MEMORY = 256

CostBasis = Literal["recorded", "apportioned", "calculated", "none"]


def digest(identity: str) -> str:
    """A short, stable digest of an identity string (stable across processes)."""
    return hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


class BoundedKeySet:
    """An insertion-ordered set of at most ``capacity`` keys; the oldest are forgotten first.

    The proxy only ever replays its last 20 events, so a memory of thousands of keys
    outlives any window by orders of magnitude.
    """

    __slots__ = ("_keys", "capacity")

    def __init__(self, capacity: int, keys: Iterable[str] = ()) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        for key in keys:
            self.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        if key in self._keys:
            return
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def newest(self, count: int) -> list[str]:
        """The ``count`` most recently added keys, oldest first."""
        if count >= len(self._keys):
            return list(self._keys)
        newest_first = list(islice(reversed(self._keys), count))
        newest_first.reverse()
        return newest_first


# Not frozen: frozen dataclasses set every field through object.__setattr__, which made
# construction a visible share of ingestion. Treat instances as immutable all the same.
@dataclass(slots=True)
class AccountedEvent:
    """One fact counted exactly once: an event, or an old-format per-model delta."""

    source: str
    key: str
    occurred_at: datetime
    event_type: str
    model: str | None
    tier: Tier
    requests: int
    cache_hits: int
    tokens: int | None
    input_tokens: int | None
    output_tokens: int | None
    latency_ms: int | None
    status: str | None
    cost_usd: float
    recorded_cost_usd: float | None
    calculated_cost_usd: float | None
    cost_basis: CostBasis
    priced: bool
    price_version: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "key": self.key,
            "occurred_at": self.occurred_at.isoformat(),
            "event_type": self.event_type,
            "model": self.model,
            "tier": self.tier,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "tokens": self.tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "latency_ms": self.latency_ms,
            "status": self.status,
            "cost_usd": self.cost_usd,
            "recorded_cost_usd": self.recorded_cost_usd,
            "calculated_cost_usd": self.calculated_cost_usd,
            "cost_basis": self.cost_basis,
            "priced": self.priced,
            "price_version": self.price_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountedEvent:
        values = dict(data)
        values["occurred_at"] = datetime.fromisoformat(values["occurred_at"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Unattributed:
    """Requests and dollars the totals grew by that no visible event explains."""

    source: str
    occurred_at: datetime
    requests: int
    cost_usd: float
    lost_events: int
    reason: Literal["gap", "restart_overflow", "restart_gap", "lag"]
    # Start of the interval the remainder happened in (the previous snapshot), so that
    # spend found after a long disconnect is spread over it instead of spiking.
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Accounting:
    """What one frame added. Empty when the frame repeated what was already counted."""

    source: str
    observed_at: datetime
    events: tuple[AccountedEvent, ...] = ()
    unattributed: Unattributed | None = None
    first_contact: bool = False
    proxy_restart: bool = False
    proxy_error: str | None = None

    @property
    def cost_usd(self) -> float:
        extra = self.unattributed.cost_usd if self.unattributed else 0.0
        return sum(event.cost_usd for event in self.events) + extra

    @property
    def requests(self) -> int:
        extra = self.unattributed.requests if self.unattributed else 0
        return sum(event.requests for event in self.events) + extra

    @property
    def is_empty(self) -> bool:
        return not self.events and self.unattributed is None and not self.first_contact


@dataclass
class SourceState:
    """Everything a reconciler must remember about one source; saved with what it counted.

    The JSON keys of :meth:`to_dict` are read back by every later version (and by
    ``db check``): add keys, never rename them.
    """

    kind: Literal["analytics", "gateway"] = "analytics"
    baseline_set: bool = False
    baseline_cost: float = 0.0
    baseline_calls: int = 0
    last_cost: float | None = None
    last_calls: int | None = None
    last_uptime: int | None = None
    last_snapshot_at: str | None = None
    # Content keys of the previous window, oldest first, duplicates kept: the next window
    # starts with its end (ring.overlap), and what follows is new.
    last_window: list[str] = field(default_factory=list)
    # The shape of the events last seen: another shape is another proxy binary.
    signature: str = ""
    proxy_cost: float | None = None
    proxy_restarts: int = 0
    gaps: int = 0
    attributed_cost: float = 0.0
    attributed_requests: int = 0
    unattributed_cost: float = 0.0
    unattributed_requests: int = 0
    lost_events: int = 0
    proxy_errors: int = 0
    pending_evicted: int = 0
    oversized_windows: int = 0
    last_oversized_at: str | None = None
    old_models: dict[str, list[float]] = field(default_factory=dict)
    pending: dict[str, list[str | None]] = field(default_factory=dict)

    def to_dict(
        self, seen: BoundedKeySet, settlement: Settlement, occurrences: Occurrences
    ) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["seen"] = seen.newest(PERSISTED_KEYS)
        data["settlement"] = settlement.to_dict()
        data["occurrences"] = occurrences.items()
        # Written for earlier readers of the state (db check and older versions).
        data["growth_cost"] = self.attributed_cost + self.unattributed_cost
        data["growth_requests"] = self.attributed_requests + self.unattributed_requests
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> tuple[SourceState, list[str]]:
        values = dict(data)
        seen = list(values.pop("seen", []))
        known = {key: value for key, value in values.items() if key in cls.__dataclass_fields__}
        state = cls(**known)
        if "last_window" not in values and state.kind == "analytics":
            # Saved before windows were kept whole: the newest keys, in the order counted.
            state.last_window = seen[-PROXY_WINDOW:]
        return state, seen


class Reconciler:
    """Turns the frames of one source into :class:`Accounting` results, exactly once."""

    def __init__(
        self,
        source: str,
        prices: PriceTable,
        *,
        kind: Literal["analytics", "gateway"] = "analytics",
        capacity: int = 10_000,
        pending_capacity: int = 10_000,
        window: int = PROXY_WINDOW,
        settle_seconds: float = SETTLE_SECONDS,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.prices = prices
        self.window = window
        self.pending_capacity = pending_capacity
        if state is not None:
            self.state, keys = SourceState.from_dict(state)
            # Gateway request ids; the analytics path needs only the last window.
            self.seen = BoundedKeySet(capacity, keys if self.state.kind == "gateway" else ())
            self.settlement = Settlement(state.get("settlement"), settle_seconds=settle_seconds)
            self.occurrences = Occurrences(
                OCCURRENCE_MEMORY, (tuple(item) for item in state.get("occurrences", []))
            )
        else:
            self.state = SourceState(kind=kind)
            self.seen = BoundedKeySet(capacity)
            self.settlement = Settlement(settle_seconds=settle_seconds)
            self.occurrences = Occurrences(OCCURRENCE_MEMORY)

    def snapshot_state(self) -> dict[str, Any]:
        """The state to persist together with the accounting it produced."""
        return self.state.to_dict(self.seen, self.settlement, self.occurrences)

    # -- entry point -----------------------------------------------------------------

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        """Account one parsed frame observed at ``observed_at`` (aware datetime)."""
        if isinstance(frame, Snapshot):
            return self._apply_snapshot(frame, observed_at)
        if isinstance(frame, OldSnapshot):
            return self._apply_old(frame, observed_at)
        if isinstance(frame, ProxyError):
            self.state.proxy_errors += 1
            return Accounting(self.source, observed_at, proxy_error=frame.error[:500])
        return self._apply_gateway(frame, observed_at)

    # -- current format --------------------------------------------------------------

    def _restarted(self, snap: Snapshot, window: list[str], common: int, signature: str) -> bool:
        """The signs of a new proxy process the spec lists, and nothing a race can produce."""
        state = self.state
        previous = state.last_window
        if previous and len(window) < self.window and common < len(previous):
            return True  # a ring that has not wrapped always ends with the previous window
        if _format_changed(state.signature, signature):
            return True  # another wire format: another binary
        calls, cost, uptime = snap.project.calls, snap.project.cost, snap.machine.uptime
        if uptime is not None and state.last_uptime is not None and uptime < state.last_uptime:
            return True
        if calls is not None and state.last_calls is not None and calls < state.last_calls:
            return True
        return (
            cost is not None
            and state.last_cost is not None
            and (cost < state.last_cost - COST_EPSILON)
        )

    def _window(self, snap: Snapshot, observed_at: datetime) -> tuple[list[ActivityEvent], bool]:
        """The window, never longer than the proxy's, and whether it was longer.

        The proxy sends at most 20 events. The events of a longer window are not believed (a
        hostile stream could make any number look new); its newest 20 are remembered as seen,
        so the counters account the requests it claims, as unattributed, exactly once.
        """
        activity = snap.activity
        if len(activity) > self.window:
            self.state.oversized_windows += 1
            self.state.last_oversized_at = observed_at.isoformat()
            return activity[-self.window :], True
        return activity, False

    def _apply_snapshot(self, snap: Snapshot, observed_at: datetime) -> Accounting:
        state = self.state
        calls = snap.project.calls
        cost = None if snap.project.cost is None else float(snap.project.cost)
        uptime = snap.machine.uptime
        snapshot_at = parse_timestamp(snap.project.last_updated)
        activity, oversized = self._window(snap, observed_at)
        window = [digest(event_key(event)) for event in activity]
        signature = _signature(activity)

        if not state.baseline_set:
            state.baseline_set = True
            state.baseline_cost = cost or 0.0
            state.baseline_calls = calls or 0
            self._remember_totals(cost, calls, uptime, snapshot_at, observed_at)
            self._remember_window(window, signature)
            self.settlement.start(
                self._counters(calls, cost, snapshot_at, observed_at),
                state.unattributed_requests,
                state.unattributed_cost,
                estimated=False,
            )
            return Accounting(self.source, observed_at, first_contact=True)

        previous = state.last_window
        previous_at = state.last_snapshot_at
        common = overlap(previous, window)
        restart = self._restarted(snap, window, common, signature)
        fresh = [] if oversized else list(zip(window[common:], activity[common:], strict=True))
        events = [
            self._account_activity(self.occurrences.key(key), event, observed_at)
            for key, event in fresh
        ]
        new_requests = sum(event.requests for event in events)
        if not restart and calls is not None and state.last_calls is not None:
            # Events of the first window that are not in `calls` yet (a snapshot is not atomic)
            # are new all the same; only those of early-format events need the growth.
            delta_cost = None if cost is None or state.last_cost is None else cost - state.last_cost
            if calls - state.last_calls == new_requests and delta_cost is not None:
                events = self._apportion(events, delta_cost)
        accounting_events = tuple(events)
        for event in accounting_events:
            state.attributed_cost += event.cost_usd
            state.attributed_requests += event.requests

        full = len(window) >= self.window
        closing = None
        if restart:
            state.proxy_restarts += 1
            closing = self.settlement.close(state.unattributed_requests, state.unattributed_cost)
            if closing is not None:
                state.unattributed_requests += closing.requests
                state.unattributed_cost += closing.cost
            new_cost = sum(event.cost_usd for event in events)
            reloaded_calls = (calls or 0) - new_requests
            reloaded_cost = (cost or 0.0) - new_cost
            reason: Literal["gap", "restart_overflow", "restart_gap"] = "restart_gap"
            if full:
                # Post-restart events may have scrolled out unseen: the reloaded total is taken
                # as at most what was seen before the restart (an estimate, labelled).
                reason = "restart_overflow"
                if state.last_calls is not None:
                    reloaded_calls = min(reloaded_calls, state.last_calls)
                if state.last_cost is not None:
                    reloaded_cost = min(reloaded_cost, state.last_cost)
            self.settlement.start(
                Counters(
                    reloaded_calls,
                    reloaded_cost,
                    state.attributed_requests - new_requests,
                    state.attributed_cost - new_cost,
                    observed_at.timestamp(),
                    None if snapshot_at is None else snapshot_at.timestamp(),
                ),
                state.unattributed_requests,
                state.unattributed_cost,
                estimated=True,
                loss=full,
                reason=reason,
            )
        self._remember_totals(cost, calls, uptime, snapshot_at, observed_at)
        shortfall = self.settlement.observe(
            self._counters(calls, cost, snapshot_at, observed_at),
            unchanged=not oversized and common == len(previous) == len(window),
            loss=not restart and full and common == 0,
            unexplained_requests=state.unattributed_requests,
            unexplained_cost=state.unattributed_cost,
        )
        if shortfall is not None:
            state.unattributed_cost += shortfall.cost
            state.unattributed_requests += shortfall.requests
        if closing is not None and shortfall is not None:  # not seen: the run just started
            shortfall = Shortfall(
                closing.requests + shortfall.requests, closing.cost + shortfall.cost, "gap"
            )
        shortfall = shortfall or closing
        unattributed = None
        if shortfall is not None:
            state.gaps += 1
            unattributed = Unattributed(
                self.source,
                snapshot_at or observed_at,
                shortfall.requests,
                shortfall.cost,
                0,
                shortfall.reason,
                None if previous_at is None else datetime.fromisoformat(previous_at),
            )
        self._remember_window(window, signature)
        return Accounting(
            self.source,
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
        state = self.state
        return Counters(
            calls if calls is not None else (state.last_calls or 0),
            cost if cost is not None else (state.last_cost or 0.0),
            state.attributed_requests,
            state.attributed_cost,
            observed_at.timestamp(),
            None if snapshot_at is None else snapshot_at.timestamp(),
        )

    def _remember_window(self, window: list[str], signature: str) -> None:
        self.state.last_window = window
        if signature != "current" or not self.state.signature.startswith("current"):
            self.state.signature = signature

    def _remember_totals(
        self,
        cost: float | None,
        calls: int | None,
        uptime: int | None,
        snapshot_at: datetime | None,
        observed_at: datetime,
    ) -> None:
        state = self.state
        if cost is not None:
            state.last_cost = cost
            state.proxy_cost = cost
        if calls is not None:
            state.last_calls = calls
        if uptime is not None:
            state.last_uptime = uptime
        state.last_snapshot_at = (snapshot_at or observed_at).isoformat()

    def _count(self, accounting: Accounting) -> None:
        state = self.state
        for event in accounting.events:
            state.attributed_cost += event.cost_usd
            state.attributed_requests += event.requests
        if accounting.unattributed is not None:
            state.unattributed_cost += accounting.unattributed.cost_usd
            state.unattributed_requests += accounting.unattributed.requests
            state.lost_events += accounting.unattributed.lost_events

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
                calculated = self.prices.combined_usd(model, event.tokens)
                priced = calculated is not None
            else:
                priced = self.prices.match(model) is not None
        elif event_type == "cache_hit":
            calculated = 0.0
        else:
            requests = 0
        cost: float = 0.0
        basis: CostBasis = "none"
        if requests:
            cost, basis = counted_cost(recorded, calculated)
        return AccountedEvent(
            self.source,
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
            self.prices.version,
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
            result[index] = _replace_cost(result[index], remaining * share, "apportioned")
        return result

    # -- old format -------------------------------------------------------------------

    def _apply_old(self, snap: OldSnapshot, observed_at: datetime) -> Accounting:
        state = self.state
        totals = {
            entry.model: [float(entry.requests), float(entry.cache_hits), float(entry.actual_cost)]
            for entry in snap.models
        }
        requests = snap.totals.requests
        cost = float(snap.totals.actual_cost)
        if not state.baseline_set:
            state.baseline_set = True
            state.baseline_cost = cost
            state.baseline_calls = requests
            state.old_models = totals
            state.last_cost, state.last_calls, state.proxy_cost = cost, requests, cost
            state.last_snapshot_at = observed_at.isoformat()
            state.signature = "old"
            return Accounting(self.source, observed_at, first_contact=True)
        restart = (state.last_calls is not None and requests < state.last_calls) or (
            _format_changed(state.signature, "old")
        )
        events: list[AccountedEvent] = []
        if restart:
            # The old format has no event window: spend between the restart and this
            # snapshot cannot be told from the reloaded totals. Re-baseline.
            state.proxy_restarts += 1
        else:
            for model, (model_requests, hits, model_cost) in totals.items():
                before = state.old_models.get(model, [0.0, 0.0, 0.0])
                delta_requests = int(model_requests - before[0])
                delta_hits = int(hits - before[1])
                delta_cost = model_cost - before[2]
                if delta_requests <= 0 and abs(delta_cost) < COST_EPSILON:
                    continue
                events.append(
                    AccountedEvent(
                        source=self.source,
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
                        priced=self.prices.match(model) is not None,
                        price_version=self.prices.version,
                    )
                )
        unattributed = None
        if not restart and state.last_calls is not None and state.last_cost is not None:
            missing_requests = (requests - state.last_calls) - sum(e.requests for e in events)
            missing_cost = (cost - state.last_cost) - sum(e.cost_usd for e in events)
            if abs(missing_cost) < COST_EPSILON:
                missing_cost = 0.0
            if missing_requests or missing_cost:
                state.gaps += 1
                unattributed = Unattributed(
                    self.source, observed_at, missing_requests, missing_cost, 0, "gap"
                )
        state.old_models = totals
        state.last_cost, state.last_calls, state.proxy_cost = cost, requests, cost
        state.last_snapshot_at = observed_at.isoformat()
        state.signature = "old"
        accounting = Accounting(
            self.source, observed_at, tuple(events), unattributed, proxy_restart=restart
        )
        self._count(accounting)
        return accounting

    # -- gateway stream ---------------------------------------------------------------

    def _apply_gateway(
        self,
        frame: GatewayStarted | GatewayTextDelta | GatewayCompleted | GatewayError | GatewayLag,
        observed_at: datetime,
    ) -> Accounting:
        state = self.state
        state.baseline_set = True
        if isinstance(frame, GatewayLag):
            if frame.skipped == 0:
                return Accounting(self.source, observed_at)
            state.gaps += 1
            accounting = Accounting(
                self.source,
                observed_at,
                unattributed=Unattributed(self.source, observed_at, 0, 0.0, frame.skipped, "lag"),
            )
            self._count(accounting)
            return accounting
        if isinstance(frame, GatewayTextDelta):
            return Accounting(self.source, observed_at)
        key = digest(f"gw\x1f{frame.request_id}")
        if key in self.seen:
            return Accounting(self.source, observed_at)
        if isinstance(frame, GatewayStarted):
            state.pending[frame.request_id] = [frame.model, observed_at.isoformat()]
            while len(state.pending) > self.pending_capacity:
                del state.pending[next(iter(state.pending))]
                state.pending_evicted += 1
            return Accounting(self.source, observed_at)
        started = state.pending.pop(frame.request_id, None)
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
        accounting = Accounting(self.source, observed_at, (event,))
        self._count(accounting)
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
            self.prices.cost(model, input_tokens=input_tokens, output_tokens=output_tokens)
            if event_type == "api_call"
            else None
        )
        calculated = estimate.usd if estimate else None
        cost, basis = counted_cost(recorded, calculated)
        return AccountedEvent(
            source=self.source,
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
            price_version=self.prices.version,
        )


def counted_cost(recorded: float | None, calculated: float | None) -> tuple[float, CostBasis]:
    """The cost that counts: the source's own figure, else ours, else nothing (unpriced)."""
    if recorded is not None:
        return recorded, "recorded"
    if calculated is not None:
        return calculated, "calculated"
    return 0.0, "none"


def _replace_cost(event: AccountedEvent, cost: float, basis: CostBasis) -> AccountedEvent:
    values = event.as_dict()
    values["occurred_at"] = event.occurred_at
    values["cost_usd"] = cost
    values["cost_basis"] = basis
    return AccountedEvent(**values)


def _signature(activity: list[ActivityEvent]) -> str:
    """The format of a current snapshot: with the event shape when it has events."""
    if not activity:
        return "current"
    return "current/eight" if "cost" in activity[-1].model_fields_set else "current/six"


def _format_changed(before: str, now: str) -> bool:
    """Whether two format signatures prove different binaries (unknown parts prove nothing)."""
    if not before or not now or before == now:
        return False
    if (before == "old") != (now == "old"):
        return True
    return before != "current" and now != "current"
