"""Slow and idle HTTP clients cannot hold the server: a header deadline and a connection cap.

A client has ``header_timeout`` seconds from connecting (or from the end of its previous
response) to deliver a complete request head; one that trickles its headers a byte at a time
(slowloris) or sits idle is closed when the deadline passes. A request being handled (an
``/api/stream`` subscriber, for one) is never timed out here.

At most ``limit`` connections are kept open, so that an attacker cannot use up the daemon's
file descriptors (its database and its sources need some too). When a new connection would
exceed the cap, the oldest connection that is *not* inside a request is closed to make room:
a client that connects and asks at once (``/health`` from a probe) is served even while a
flood of slow connections is being held, instead of being refused with the flood.
"""

from __future__ import annotations

import asyncio
import resource
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

__all__ = ["ConnectionGuard", "connection_limit"]

#: Descriptors kept for the database, the sources, the log and the alert sinks.
RESERVED_DESCRIPTORS = 64
#: The listen backlog. asyncio accepts up to this many connections in one go before any of
#: them reaches :meth:`ConnectionGuard._connected` (which closes one for each), and each
#: closed one holds its descriptor until the next loop iteration: the cap leaves room for
#: two backlogs' worth on top of the live connections.
BACKLOG = 64


def connection_limit(configured: int) -> int:
    """``configured``, lowered so that a full accept burst stays below ``RLIMIT_NOFILE``.

    256 (the default) stays 256 from a descriptor limit of 704 up; under 256 descriptors
    it is 32.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return configured
    return max(8, min(configured, (soft - RESERVED_DESCRIPTORS - 2 * BACKLOG) // 2))


class ConnectionGuard:
    """Tracks every connection of one aiohttp server; see the module docstring."""

    def __init__(self, limit: int, header_timeout: float) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        # handler -> deadline (loop time) while waiting for a request; None while busy.
        self._live: OrderedDict[RequestHandler, float | None] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.evicted = 0
        self.timed_out = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        if protocol in self._live:
            self._live[protocol] = None
        try:
            return await handler(request)
        finally:
            if protocol in self._live and self._loop is not None:
                self._live[protocol] = self._loop.time() + self.header_timeout

    def attach(self, server: web.Server) -> None:
        """Hook ``server``'s connection callbacks (call after ``AppRunner.setup``)."""
        self._loop = asyncio.get_running_loop()
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._connected(handler)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._live.pop(handler, None)
            lost(handler, exc)

        # Instance attributes shadow the methods the protocol calls on its manager.
        setattr(server, "connection_made", connection_made)  # noqa: B010
        setattr(server, "connection_lost", connection_lost)  # noqa: B010
        self._schedule()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _connected(self, handler: RequestHandler) -> None:
        assert self._loop is not None
        self._live[handler] = self._loop.time() + self.header_timeout
        if len(self._live) <= self.limit:
            return
        # The oldest connection waiting for a request; the new one itself when every other
        # connection is inside a request (it has a deadline, so one is always found).
        victim = next(item for item, deadline in self._live.items() if deadline is not None)
        self._drop(victim)
        self.evicted += 1

    def _drop(self, handler: RequestHandler) -> None:
        self._live.pop(handler, None)
        handler.force_close()

    def _schedule(self) -> None:
        assert self._loop is not None
        interval = max(0.05, min(1.0, self.header_timeout / 4))
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        expired = [
            handler
            for handler, deadline in self._live.items()
            if deadline is not None and deadline <= now
        ]
        for handler in expired:
            self._drop(handler)
        self.timed_out += len(expired)
        self._schedule()

    def stats(self) -> dict[str, Any]:
        return {
            "open": len(self._live),
            "limit": self.limit,
            "evicted": self.evicted,
            "timed_out": self.timed_out,
        }
