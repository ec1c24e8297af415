"""Exactly-once accounting: from repeated proxy snapshots to accounted facts. Pure, no I/O.

The proxy's events carry no id and every snapshot repeats the last 20 of them. A
:class:`Reconciler` (one per source) hands each frame to its format's strategy
(:mod:`~cco_cost_monitor.formats`). For snapshots, the strategy remembers the previous window
and counts what follows its end (:mod:`~cco_cost_monitor.ring`: duplicates kept, twins get
their own keys), and settles the proxy's cumulative totals against the events seen
(:mod:`~cco_cost_monitor.settlement`: a snapshot is not atomic, so only settled counters are
compared).

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

from datetime import datetime
from typing import Any, Literal

from cco_cost_monitor.facts import (
    AccountedEvent,
    Accounting,
    CostBasis,
    Unattributed,
    counted_cost,
    digest,
)
from cco_cost_monitor.formats import STRATEGIES
from cco_cost_monitor.formats.analytics import PROXY_WINDOW, REQUEST_EVENT_TYPES
from cco_cost_monitor.formats.base import BoundedKeySet, Context, SourceState, Strategy
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.settlement import SETTLE_SECONDS
from cco_cost_monitor.wire import Frame

__all__ = [
    "PROXY_WINDOW",
    "REQUEST_EVENT_TYPES",
    "AccountedEvent",
    "Accounting",
    "BoundedKeySet",
    "CostBasis",
    "Reconciler",
    "SourceState",
    "Unattributed",
    "counted_cost",
    "digest",
]


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
        self._context = Context(source, prices, window, settle_seconds, capacity, pending_capacity)
        saved = state or {}
        self.state = SourceState.from_dict(saved) if state is not None else SourceState(kind=kind)
        self._strategies: dict[str, Strategy] = {}
        self._by_frame: dict[type, Strategy] = {}
        for name, (frames, factory) in STRATEGIES.items():
            strategy = factory(self._context, self.state, saved)
            self._strategies[name] = strategy
            for frame_type in frames:
                self._by_frame[frame_type] = strategy

    @property
    def prices(self) -> PriceTable:
        return self._context.prices

    @prices.setter
    def prices(self, prices: PriceTable) -> None:
        """A reload's new price table, for every frame from now on."""
        self._context.prices = prices

    def snapshot_state(self) -> dict[str, Any]:
        """The state to persist together with the accounting it produced (one flat object)."""
        data = self.state.to_dict()
        for strategy in self._strategies.values():
            data.update(strategy.to_dict())
        return data

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        """Account one parsed frame observed at ``observed_at`` (aware datetime)."""
        return self._by_frame[type(frame)].apply(frame, observed_at)
