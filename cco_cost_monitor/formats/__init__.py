"""The wire formats a source can speak, each with its own accounting strategy: the registry.

=============  =========================================  ==============================
format         frames (parsed in :mod:`~cco_cost_monitor.wire`)  strategy
=============  =========================================  ==============================
analytics      ``Snapshot`` (current and early six-field)  :class:`AnalyticsStrategy`
error          ``ProxyError`` (the proxy's ``error`` event)  :class:`ProxyErrorStrategy`
legacy         ``OldSnapshot`` (``{cache, models, totals}``)  :class:`LegacyStrategy`
gateway        ``Gateway*`` (per-request ``stream_event``)  :class:`GatewayStrategy`
=============  =========================================  ==============================

To add a format: its pydantic frame models and their branch in ``wire.parse_frame``, a
module here with a strategy (``apply(frame, observed_at) -> Accounting`` and ``to_dict()`` of
its own state, counting into the shared :class:`~cco_cost_monitor.formats.base.SourceState`),
and one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cco_cost_monitor.formats.analytics import AnalyticsStrategy, ProxyErrorStrategy
from cco_cost_monitor.formats.base import Context, SourceState, Strategy
from cco_cost_monitor.formats.gateway import GatewayStrategy
from cco_cost_monitor.formats.legacy import LegacyStrategy
from cco_cost_monitor.wire import (
    GatewayCompleted,
    GatewayError,
    GatewayLag,
    GatewayStarted,
    GatewayTextDelta,
    OldSnapshot,
    ProxyError,
    Snapshot,
)

__all__ = ["SNAPSHOT_FRAMES", "STRATEGIES", "StrategyFactory"]

StrategyFactory = Callable[[Context, SourceState, dict[str, Any]], Strategy]

#: Which strategy accounts which frame type.
STRATEGIES: dict[str, tuple[tuple[type, ...], StrategyFactory]] = {
    "analytics": ((Snapshot,), AnalyticsStrategy),
    "error": ((ProxyError,), ProxyErrorStrategy),
    "legacy": ((OldSnapshot,), LegacyStrategy),
    "gateway": (
        (GatewayStarted, GatewayTextDelta, GatewayCompleted, GatewayError, GatewayLag),
        GatewayStrategy,
    ),
}

#: Frames that are a snapshot of the proxy's totals (what "last snapshot" means in /health).
SNAPSHOT_FRAMES: tuple[type, ...] = (Snapshot, OldSnapshot)
