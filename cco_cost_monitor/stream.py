"""``GET /api/stream``: the monitor's own SSE stream of accounted events, resumable.

Every event the store has committed goes out once, in commit order, as::

    event: accounted
    id: <sequence number>
    data: <the event as in /api/events>

The sequence number is the ``events`` row's rowid (:meth:`Store.events_after`): it grows
in commit order and survives restarts, so a client that reconnects with
``Last-Event-ID: N`` (browsers' ``EventSource`` does so by itself) gets exactly the events
after ``N`` from the database, whether it was away for a second or across a restart of the
monitor. Without ``Last-Event-ID`` a client starts at the newest event (live only).

One code path serves both cases: each client is a cursor that reads the next page from the
database (in a worker thread) whenever a commit adds events, or every ``keepalive`` seconds
(a ``: keep-alive`` comment goes out then). Clients that are caught up all ask for the same
page after a commit: the hub reads and encodes it once for all of them (:class:`_Page`).
Nothing is queued per client: what a client has not taken yet stays in the database, so a
slow client costs no memory; its buffer is one page (at most ``page`` events) plus the
socket's write buffer. A client that does not take a
page within ``write_timeout`` seconds is dropped (and counted); it resumes where it stopped
when it reconnects. At most ``max_clients`` streams are open at once; more get ``503`` with
``Retry-After``.

An id above the newest stored event (the database was replaced or deleted) gets an
``event: reset`` whose data names the newest id; the stream then continues from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import orjson
from aiohttp import web

from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.rounding import tidy

if TYPE_CHECKING:
    from cco_cost_monitor.storage import CommitResult, LedgerReader

__all__ = ["HUB", "StreamHub", "install"]

log = get_logger("cco_cost_monitor.stream")

MAX_CLIENTS = 16
PAGE = 200
KEEPALIVE_SECONDS = 15.0
WRITE_TIMEOUT_SECONDS = 10.0
# The browser's reconnect delay, sent as the stream's first line.
RETRY_MS = 2000


def _frames(rows: list[tuple[int, dict[str, object]]]) -> bytes:
    return b"".join(
        b"event: accounted\nid: %d\ndata: %s\n\n"
        % (seq, orjson.dumps(tidy(event), option=orjson.OPT_NON_STR_KEYS))
        for seq, event in rows
    )


def _read_page(store: LedgerReader, after: int, limit: int) -> tuple[int, int, bytes]:
    """(last id, events, SSE bytes) of the next page: read and encoded off the event loop."""
    rows = [(seq, event.as_dict()) for seq, event in store.events_after(after, limit)]
    if not rows:
        return after, 0, b""
    return rows[-1][0], len(rows), _frames(rows)


class _Page:
    """One page read (or being read) for every client at the same cursor since a commit."""

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key  # (commits seen when the read started, cursor)
        self.done = anyio.Event()
        self.result: tuple[int, int, bytes] | None = None
        self.error: BaseException | None = None


class StreamHub:
    """The open streams: wakes them after each commit that added events."""

    def __init__(
        self,
        store: Callable[[], LedgerReader | None],
        *,
        max_clients: int = MAX_CLIENTS,
        page: int = PAGE,
        keepalive: float = KEEPALIVE_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
    ) -> None:
        self._store = store
        self.max_clients = max_clients
        self.page = page
        self.keepalive = keepalive
        self.write_timeout = write_timeout
        self.clients = 0
        self.dropped = 0
        self.refused = 0
        self.sent = 0
        self.reads = 0
        self._changed: anyio.Event | None = None
        self._closing = False
        self._commits = 0
        self._shared: _Page | None = None

    def notify(self, result: CommitResult) -> None:
        """After a commit (on the event loop): wake the streams if it stored events."""
        if result.events_inserted:
            self._commits += 1
            self._shared = None
            self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _next_change(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    async def _page(self, store: LedgerReader, cursor: int) -> tuple[int, int, bytes]:
        """The page after ``cursor``: shared with the clients at the same cursor, unless a
        commit came since it was read (then it may lack events: read again)."""
        while True:
            key = (self._commits, cursor)
            shared = self._shared
            if shared is not None and shared.key == key:
                await shared.done.wait()
                if shared.result is not None:
                    return shared.result
                if isinstance(shared.error, Exception):
                    raise shared.error
                continue  # its reader was cancelled (its client went away): read anew
            shared = self._shared = _Page(key)
            self.reads += 1
            try:
                shared.result = await anyio.to_thread.run_sync(_read_page, store, cursor, self.page)
                return shared.result
            except BaseException as exc:
                shared.error = exc
                if self._shared is shared:
                    self._shared = None
                raise
            finally:
                shared.done.set()

    async def close(self, _: web.Application | None = None) -> None:
        """End every stream (server shutdown: nobody waits for a stream to end by itself)."""
        self._closing = True
        self._wake()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        store = self._store()
        if store is None or self._closing:
            raise web.HTTPServiceUnavailable(text="no database: the stream is unavailable\n")
        header = request.headers.get("Last-Event-ID", "").strip()
        if header and not (header.isascii() and header.isdigit()):
            raise web.HTTPBadRequest(text="Last-Event-ID must be an event id (an integer)\n")
        if self.clients >= self.max_clients:
            self.refused += 1
            raise web.HTTPServiceUnavailable(
                text=f"too many stream clients (at most {self.max_clients})\n",
                headers={"Retry-After": "5"},
            )
        self.clients += 1
        try:
            return await self._serve(request, store, int(header) if header else None)
        finally:
            self.clients -= 1

    async def _serve(
        self, request: web.Request, store: LedgerReader, after: int | None
    ) -> web.StreamResponse:
        try:
            newest = await anyio.to_thread.run_sync(store.last_event_seq)
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text=f"database unavailable: {exc}\n") from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        head = b"retry: %d\n: cco-monitor stream, newest id %d\n\n" % (RETRY_MS, newest)
        cursor = newest if after is None else after
        if after is not None and after > newest:
            head += b"event: reset\ndata: %s\n\n" % orjson.dumps(
                {"reason": "unknown id (the database was replaced)", "last_event_id": newest}
            )
            cursor = newest
        try:
            if not await self._write(request, response, head):
                return response
            while not self._closing:
                changed = self._next_change()  # before reading: a commit meanwhile wakes us
                cursor, count, chunk = await self._page(store, cursor)
                if count:
                    if not await self._write(request, response, chunk):
                        return response
                    self.sent += count
                    if count == self.page:
                        continue
                with anyio.move_on_after(self.keepalive) as scope:
                    await changed.wait()
                if scope.cancelled_caught and not await self._write(
                    request, response, b": keep-alive\n\n"
                ):
                    return response
        except StoreError as exc:
            log.warning("stream ended: the database is unavailable", error=str(exc)[:300])
        except ConnectionError:
            pass  # the client went away
        return response

    async def _write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
        """Write ``data``; drop the client (False) if it does not take it in time."""
        with anyio.move_on_after(self.write_timeout) as scope:
            await response.write(data)
        if not scope.cancelled_caught:
            return True
        self.dropped += 1
        log.info("stream client too slow: dropped", peer=request.remote, dropped=self.dropped)
        if request.transport is not None:
            request.transport.abort()
        return False


HUB = web.AppKey("stream_hub", StreamHub)


def install(app: web.Application, hub: StreamHub) -> None:
    """Add ``GET /api/stream``; streams end when the server shuts down."""
    app[HUB] = hub
    app.router.add_get("/api/stream", hub.handle)
    app.on_shutdown.append(hub.close)
