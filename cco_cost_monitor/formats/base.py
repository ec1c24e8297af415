"""What every format's accounting shares: the source's books and the strategy protocol. Pure.

A *strategy* turns the frames of one wire format into :class:`~cco_cost_monitor.facts.Accounting`
results and keeps the state that format needs (the analytics window, the old format's
per-model totals, the gateway's pending requests). All of them count into one
:class:`SourceState`: baseline, the proxy's last totals, attributed and unattributed sums,
restarts and gaps -- what ``/api/summary``, ``/metrics`` and ``db check`` read.

State is saved as one flat JSON object per source: :class:`SourceState`'s fields plus each
strategy's own keys. Every later version reads it back: add keys, never rename them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Literal, Protocol

from cco_cost_monitor.facts import Accounting
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.wire import Frame

__all__ = [
    "COST_EPSILON",
    "BoundedKeySet",
    "Context",
    "SourceState",
    "Strategy",
    "format_changed",
]

COST_EPSILON = 1e-9


@dataclass
class SourceState:
    """The books of one source, shared by every format's strategy."""

    kind: Literal["analytics", "gateway"] = "analytics"
    baseline_set: bool = False
    baseline_cost: float = 0.0
    baseline_calls: int = 0
    last_cost: float | None = None
    last_calls: int | None = None
    last_snapshot_at: str | None = None
    # The format last seen ("old", "current", "current/six", "current/eight"): another
    # format is another proxy binary.
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
    # Frames refused because they claimed more than the proxy can send.
    oversized_windows: int = 0
    last_oversized_at: str | None = None

    def count(self, accounting: Accounting) -> None:
        """Add what one frame accounted to the sums."""
        for event in accounting.events:
            self.attributed_cost += event.cost_usd
            self.attributed_requests += event.requests
        if accounting.unattributed is not None:
            self.unattributed_cost += accounting.unattributed.cost_usd
            self.unattributed_requests += accounting.unattributed.requests
            self.lost_events += accounting.unattributed.lost_events

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        # Written for earlier readers of the state (db check and older versions).
        data["growth_cost"] = self.attributed_cost + self.unattributed_cost
        data["growth_requests"] = self.attributed_requests + self.unattributed_requests
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceState:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


@dataclass
class Context:
    """What a strategy needs to know about its source (prices change on reload)."""

    source: str
    prices: PriceTable
    window: int
    settle_seconds: float
    capacity: int
    pending_capacity: int


class Strategy(Protocol):
    """One wire format's accounting: frames in, exactly-once facts out."""

    def apply(self, frame: Frame, observed_at: datetime) -> Accounting:
        """Account one frame of this format."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """This format's own state, merged into the source's saved state."""
        ...


def format_changed(before: str, now: str) -> bool:
    """Whether two format signatures prove different binaries (unknown parts prove nothing)."""
    if not before or not now or before == now:
        return False
    if (before == "old") != (now == "old"):
        return True
    return before != "current" and now != "current"


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
