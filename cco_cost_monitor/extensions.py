"""Routes that other modules add to the HTTP app: Prometheus metrics and the dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from cco_cost_monitor.server import Service


def install(app: web.Application, service: Service) -> None:
    """Add ``/metrics`` and ``/`` to ``app``."""
