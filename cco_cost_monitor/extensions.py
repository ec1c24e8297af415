"""Routes and middleware that other modules add to the HTTP app.

``/metrics`` (:mod:`cco_cost_monitor.metrics`), the dashboard at ``/``
(:mod:`cco_cost_monitor.dashboard`), the event stream ``/api/stream``
(:mod:`cco_cost_monitor.stream`), and the bearer-token check plus security headers
(:mod:`cco_cost_monitor.auth`) that cover every route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from cco_cost_monitor import auth, dashboard, stream
from cco_cost_monitor.config import is_loopback
from cco_cost_monitor.metrics import metrics_handler
from cco_cost_monitor.service_parts import ServiceParts

if TYPE_CHECKING:
    from pydantic import SecretStr


def install(app: web.Application, service: ServiceParts) -> None:
    """Add ``/metrics``, ``/`` and its assets, ``/api/stream``, the token check and headers."""

    def current_token() -> SecretStr | None:
        # Read on each request: a reload that sets or changes the token applies at once.
        return service.settings.health_token

    def current_hosts() -> tuple[str, list[str]] | None:
        settings = service.settings
        if not is_loopback(settings.health_host):
            return None  # reached by other names on purpose; the token guards it
        return settings.health_host, settings.allowed_hosts

    auth.install(app, current_token, current_hosts)
    app.router.add_get("/metrics", metrics_handler(service))
    dashboard.install(app)
    hub = stream.StreamHub(lambda: service.store)
    if service.writer is not None:
        service.writer.on_commit.append(hub.notify)
    stream.install(app, hub)
