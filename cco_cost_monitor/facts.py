"""The facts accounting produces: counted events, unattributed remainders, per-frame results.

Every format's strategy (:mod:`cco_cost_monitor.formats`) turns frames into these; the
engine aggregates them, the store persists them. Pure data, no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cco_cost_monitor.pricing import Tier

__all__ = [
    "AccountedEvent",
    "Accounting",
    "CostBasis",
    "Unattributed",
    "UnattributedReason",
    "counted_cost",
    "digest",
    "replace_cost",
]

CostBasis = Literal["recorded", "apportioned", "calculated", "none"]
UnattributedReason = Literal["gap", "restart_overflow", "restart_gap", "lag"]


def digest(identity: str) -> str:
    """A short, stable digest of an identity string (stable across processes)."""
    return hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()


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
    reason: UnattributedReason
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


def counted_cost(recorded: float | None, calculated: float | None) -> tuple[float, CostBasis]:
    """The cost that counts: the source's own figure, else ours, else nothing (unpriced)."""
    if recorded is not None:
        return recorded, "recorded"
    if calculated is not None:
        return calculated, "calculated"
    return 0.0, "none"


def replace_cost(event: AccountedEvent, cost: float, basis: CostBasis) -> AccountedEvent:
    values = event.as_dict()
    values["occurred_at"] = event.occurred_at
    values["cost_usd"] = cost
    values["cost_basis"] = basis
    return AccountedEvent(**values)
