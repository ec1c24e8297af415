"""The daemon's HTTP interface (aiohttp): health, metrics, the JSON API, the status line.

Handlers only read in-memory state: no upstream I/O and no disk on a request, so
``/health`` stays cheap while ingestion runs at full speed. Every response carries
``Cache-Control: no-store``. The app is served with ``AppRunner``/``TCPSite`` by the
server module (never ``web.run_app``, which would own the loop and the signals).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from aiohttp import web

from cco_cost_monitor.engine import BucketKind
from cco_cost_monitor.moments import FORMS, parse_moment
from cco_cost_monitor.rounding import MONEY_DECIMALS, tidy

# tidy and MONEY_DECIMALS live in rounding.py (import-free); re-exported for older imports.
__all__ = ["MONEY_DECIMALS", "ServiceView", "make_app", "tidy"]

MAX_EVENTS = 1000
# Nothing here takes a body.
MAX_BODY = 1024


class ServiceView(Protocol):
    """What the HTTP layer reads from the running service."""

    def health(self) -> tuple[dict[str, Any], int]: ...
    def summary(self) -> dict[str, Any]: ...
    def recent_events(self, limit: int) -> list[dict[str, Any]]: ...
    def timeseries(self, kind: BucketKind, since: datetime | None) -> list[dict[str, Any]]: ...
    def statusline(self) -> str: ...
    def alerts(self, limit: int) -> list[dict[str, Any]]: ...


def json_response(
    data: Any, status: int = 200, content_type: str = "application/json"
) -> web.Response:
    return web.Response(
        body=orjson.dumps(tidy(data), option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type=content_type,
        headers={"Cache-Control": "no-store"},
    )


def make_app(service: ServiceView) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)

    async def health(_: web.Request) -> web.Response:
        document, status = service.health()
        return json_response(document, status, "application/health+json")

    async def livez(_: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def summary(_: web.Request) -> web.Response:
        return json_response(service.summary())

    async def events(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer\n") from None
        limit = max(1, min(limit, MAX_EVENTS))
        return json_response({"events": service.recent_events(limit), "limit": limit})

    async def timeseries(request: web.Request) -> web.Response:
        kind = request.query.get("bucket", "minute")
        if kind not in ("minute", "hour", "day"):
            raise web.HTTPBadRequest(text="bucket must be minute, hour or day\n")
        try:
            value = request.query.get("since")
            since = parse_moment(value, datetime.now(UTC)) if value else None
        except ValueError:
            raise web.HTTPBadRequest(text=f"since must be one of: {FORMS}\n") from None
        rows = service.timeseries(kind, since)  # type: ignore[arg-type]
        return json_response(
            {"bucket": kind, "since": since.isoformat() if since else None, "buckets": rows}
        )

    async def statusline(_: web.Request) -> web.Response:
        return web.Response(text=service.statusline() + "\n", headers={"Cache-Control": "no-store"})

    app.router.add_get("/health", health)
    app.router.add_get("/livez", livez)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/timeseries", timeseries)

    async def alerts(request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 200))
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be an integer\n") from None
        return json_response({"alerts": service.alerts(limit)})

    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/statusline", statusline)
    return app
