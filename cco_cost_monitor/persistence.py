"""Wiring of the SQLite store into a running service: restore on start, flush on stop."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cco_cost_monitor.server import Service


async def attach(service: Service) -> None:
    """Open the database and restore engine and reconciler state (filled in by the store)."""


async def detach(service: Service) -> None:
    """Flush pending writes and close the database."""
