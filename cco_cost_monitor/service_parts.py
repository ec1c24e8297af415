"""What the daemon's edges (HTTP extensions, metrics, persistence) ask of the service.

A structural type: :class:`cco_cost_monitor.server.Service` satisfies it, and the modules
that take a service depend on this, not on ``server`` (which imports them: typing them
against ``Service`` itself made a circle).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from cco_cost_monitor.alerts import AlertDispatcher
from cco_cost_monitor.budgets import AlertTracker
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.engine import Engine, PruneClock
from cco_cost_monitor.reconciler import Reconciler
from cco_cost_monitor.source import SseSource
from cco_cost_monitor.storage import Ledger
from cco_cost_monitor.writer import StoreWriter

__all__ = ["ServiceParts"]


class ServiceParts(Protocol):
    """The service's state and the few calls its edges make."""

    settings: Settings
    started_at: datetime
    prune_clock: PruneClock
    engine: Engine
    reconcilers: dict[str, Reconciler]
    sources: dict[str, SseSource]
    writer: StoreWriter | None
    store: Ledger | None
    tracker: AlertTracker
    dispatcher: AlertDispatcher

    def restore_source(self, spec: SourceSpec, state: dict[str, Any] | None) -> None: ...

    def store_status(self) -> dict[str, Any] | None: ...

    def summary(self) -> dict[str, Any]: ...
