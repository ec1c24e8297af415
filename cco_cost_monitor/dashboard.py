"""The dashboard page served at ``GET /`` by the daemon.

A static, self-contained page (``static/dashboard.html`` with its script and style
sheet, and uPlot vendored in ``static/vendor/``; no CDN, works offline). It reads
``/api/summary``, ``/api/timeseries``, ``/health``, ``/api/alerts`` and ``/api/events``,
and keeps ``/api/stream`` open: each pushed event is listed at once and refreshes the
figures (at most once a second; a slow 30 s refresh catches what changes without events,
such as a source's health). The files are
read once when the routes are installed; handlers only return bytes from memory. The
script and style come from the same origin so that the Content-Security-Policy can
forbid inline code.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

__all__ = ["STATIC_FILES", "install"]

# URL path -> (file in cco_cost_monitor/static, content type)
STATIC_FILES = {
    "/": ("dashboard.html", "text/html"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript"),
    "/static/dashboard.css": ("dashboard.css", "text/css"),
    "/static/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "/static/vendor/uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}


def install(app: web.Application) -> None:
    """Add the page and its assets to ``app``."""
    folder = resources.files("cco_cost_monitor") / "static"
    for path, (name, content_type) in STATIC_FILES.items():
        body = folder.joinpath(*name.split("/")).read_bytes()

        async def handler(
            _: web.Request, body: bytes = body, content_type: str = content_type
        ) -> web.Response:
            return web.Response(
                body=body,
                content_type=content_type,
                charset="utf-8",
                headers={"Cache-Control": "no-store"},
            )

        app.router.add_get(path, handler)
