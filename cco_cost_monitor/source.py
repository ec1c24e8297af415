"""One SSE subscription to a proxy or gateway stream, kept alive forever.

httpx + httpx-sse do the HTTP and the SSE decoding; this module adds what they leave
to the caller: a reconnect loop with full-jitter exponential backoff (reset after a
healthy period, ``retry:`` honoured as a floor, ``Last-Event-ID`` sent once an id was
seen), status and content-type checks before reading, stall detection through httpx's
read timeout, a hard bound on the length of a line, and a connection state machine
(``connecting`` / ``connected`` / ``disconnected`` / ``error``, with the last reason)
that ``/health`` reads. Frames are parsed here and handed to a callback; bad frames are
counted per kind and skipped, never fatal.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, cast

import anyio
import anyio.lowlevel
import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from cco_cost_monitor import __version__
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.errors import WireError
from cco_cost_monitor.formats import SNAPSHOT_FRAMES
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.redact import redact_url
from cco_cost_monitor.wire import Frame, parse_frame

__all__ = ["Backoff", "ConnectionState", "LineLimiter", "SseSource"]

Status = Literal["connecting", "connected", "disconnected", "error"]
FrameHandler = Callable[[SourceSpec, Frame, datetime], None]
_NEWLINE = re.compile(r"[\r\n]")
# How long the stream may hold the event loop before /health and the other tasks get a
# turn: at 5 ms, requests waited behind ingestion under flood (loop lag p50 6 ms).
LOOP_SLICE_SECONDS = 0.001
QUICK_RETRY_SECONDS = 30.0
QUICK_RETRY_CEILING = 1.0
QUICK_RETRY_MIN_UPTIME = 5.0
log = get_logger("cco_cost_monitor.source")


class Backoff:
    """Full-jitter exponential backoff: a delay uniform in [floor, min(max, initial * 2^n)].

    After losing an established connection, the ceiling stays at ``QUICK_RETRY_CEILING``
    for ``QUICK_RETRY_SECONDS``: a proxy that restarts is usually back within seconds, and
    every event past the 20 of its first window that happens before we reconnect can only
    be accounted as an estimate.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self.floor = 0.0
        self.quick_until: float | None = None
        self._rng = rng or random.Random()
        self._clock = clock

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempt))
        if self.quick_until is not None and self._clock() < self.quick_until:
            ceiling = min(ceiling, QUICK_RETRY_CEILING)
        self.attempt = min(self.attempt + 1, 32)
        return max(self.floor, self._rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        self.attempt = 0

    def connection_lost(self, lasted: float) -> None:
        """Retry quickly for a while after a connection that had been up (not a flap)."""
        if lasted >= QUICK_RETRY_MIN_UPTIME:
            self.quick_until = self._clock() + QUICK_RETRY_SECONDS


@dataclass
class ConnectionState:
    """What ``/health`` says about one source."""

    status: Status = "connecting"
    reason: str | None = None
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    connected_at: datetime | None = None
    last_frame_at: datetime | None = None
    last_snapshot_at: datetime | None = None
    reconnects: int = 0
    connections: int = 0
    frames: int = 0
    snapshots: int = 0
    last_http_status: int | None = None
    auth_rejected: bool = False
    bad_frames: dict[str, int] = field(default_factory=dict)
    # The latest bad frame's kind and detail ("invalid_value: activity.0.cost: ...").
    last_bad_frame: str | None = None
    last_delay: float | None = None
    # When the source stopped being connected (None while connected): reconnect attempts
    # move between connecting and disconnected without resetting it.
    down_since: datetime | None = field(default_factory=lambda: datetime.now(UTC))

    def move(self, status: Status, reason: str | None = None) -> None:
        if status != self.status or reason != self.reason:
            now = datetime.now(UTC)
            if status == "connected":
                self.down_since = None
            elif self.down_since is None:
                self.down_since = now
            self.status = status
            self.reason = reason
            self.since = now


class LineLimiter:
    """Drops any SSE line longer than ``limit`` characters before it is buffered.

    httpx-sse buffers a partial line without bound; this filter sits between the
    response's text chunks and httpx-sse's line decoder and holds at most ``limit``
    characters of an unfinished line. A dropped line is counted; the event it belonged
    to then arrives without data and is skipped like any empty event.
    """

    def __init__(self, limit: int, on_oversize: Callable[[], None]) -> None:
        self.limit = limit
        self._on_oversize = on_oversize
        self._partial: list[str] = []
        self._partial_len = 0
        self._discarding = False

    def feed(self, chunk: str) -> str:
        if not self._discarding and self._partial_len + len(chunk) <= self.limit:
            # Fast path (nearly every chunk): even joined with the unfinished line, nothing
            # here can exceed the limit, so only the last line break matters.
            cut = max(chunk.rfind("\n"), chunk.rfind("\r"))
            if cut == -1:
                self._partial.append(chunk)
                self._partial_len += len(chunk)
                return ""
            head = chunk[: cut + 1]
            if self._partial:
                head = "".join(self._partial) + head
            rest = chunk[cut + 1 :]
            self._partial = [rest] if rest else []
            self._partial_len = len(rest)
            return head
        out: list[str] = []
        start = 0
        length = len(chunk)
        while start < length:
            match = _NEWLINE.search(chunk, start)
            if match is None:
                piece = chunk[start:]
                if not self._discarding:
                    self._partial_len += len(piece)
                    if self._partial_len > self.limit:
                        self._drop()
                    else:
                        self._partial.append(piece)
                break
            end = match.end()
            if self._discarding:
                self._discarding = False
            elif self._partial_len + (end - start) > self.limit:
                self._on_oversize()
            elif self._partial:
                out.append("".join(self._partial))
                out.append(chunk[start:end])
            else:
                out.append(chunk[start:end])
            self._partial = []
            self._partial_len = 0
            start = end
        return "".join(out)

    def _drop(self) -> None:
        self._discarding = True
        self._partial = []
        self._partial_len = 0
        self._on_oversize()


class _LimitedResponse:
    """The slice of ``httpx.Response`` that httpx-sse's EventSource reads, line-limited."""

    def __init__(self, response: httpx.Response, limiter: LineLimiter) -> None:
        self._response = response
        self._limiter = limiter
        self.headers = response.headers

    async def aiter_text(self) -> AsyncIterator[str]:
        async for chunk in self._response.aiter_text():
            text = self._limiter.feed(chunk)
            if text:
                yield text


class SseSource:
    """Subscribes to one source until cancelled, reconnecting with backoff."""

    def __init__(
        self,
        spec: SourceSpec,
        settings: Settings,
        on_frame: FrameHandler,
        *,
        rng: random.Random | None = None,
        throttle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.throttle = throttle
        self.settings = settings
        self.on_frame = on_frame
        self.state = ConnectionState()
        self.backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds, rng)
        self.last_event_id: str | None = None
        self._logged_kinds: set[str] = set()
        self.log = log.bind(source=spec.name)

    def _headers(self) -> dict[str, str]:
        # aconnect_sse mutates the dict it is given: build a fresh one per connection.
        headers = {
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
            "User-Agent": f"cco-monitor/{__version__}",
        }
        if self.spec.token is not None:
            headers["Authorization"] = f"Bearer {self.spec.token.get_secret_value()}"
        for name, value in self.spec.headers.items():
            headers[name] = value.get_secret_value()
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def count_bad(self, kind: str, detail: str) -> None:
        """Count a bad frame; log the first of each kind (later ones only count)."""
        self.state.bad_frames[kind] = self.state.bad_frames.get(kind, 0) + 1
        self.state.last_bad_frame = f"{kind}: {detail[:200]}"
        if kind not in self._logged_kinds:
            self._logged_kinds.add(kind)
            self.log.warning("bad frame skipped", kind=kind, detail=detail[:300])

    async def run(self) -> None:
        timeout = httpx.Timeout(
            connect=self.settings.connect_timeout_seconds,
            read=self.settings.stall_timeout_seconds,
            write=self.settings.connect_timeout_seconds,
            pool=self.settings.connect_timeout_seconds,
        )
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            while True:
                await self._connect_once(client)
                delay = self.backoff.next_delay()
                self.state.last_delay = delay
                self.state.reconnects += 1
                await anyio.sleep(delay)

    async def _connect_once(self, client: httpx.AsyncClient) -> None:
        state = self.state
        state.move("connecting", state.reason)
        healthy_since: float | None = None
        connected_since: float | None = None
        try:
            async with client.stream("GET", self.spec.url, headers=self._headers()) as response:
                state.last_http_status = response.status_code
                if response.status_code != 200:
                    body = (await _read_at_most(response, 200)).decode("utf-8", "replace")
                    state.auth_rejected = response.status_code in (401, 403)
                    state.move("error", f"HTTP {response.status_code}: {body.strip()}")
                    self.log.warning("source answered with an error", status=response.status_code)
                    return
                state.auth_rejected = False
                limiter = LineLimiter(
                    self.settings.max_line_bytes,
                    lambda: self.count_bad("oversized_line", "line over max_line_bytes dropped"),
                )
                source = EventSource(cast(httpx.Response, _LimitedResponse(response, limiter)))
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    state.move("error", f"not an SSE stream (content-type {content_type!r})")
                    self.log.warning("source is not an SSE stream", content_type=content_type)
                    return
                state.connections += 1
                state.connected_at = datetime.now(UTC)
                state.move("connected", None)
                self.log.info("connected", url=redact_url(self.spec.url))
                healthy_since = connected_since = time.monotonic()
                yielded_at = time.monotonic()
                async for sse in source.aiter_sse():
                    self._handle(sse)
                    if self.throttle is not None:
                        await self.throttle()
                    # httpx-sse yields every event of a chunk without an await: on a busy
                    # stream, give /health and the other tasks a turn every few ms.
                    if time.monotonic() - yielded_at > LOOP_SLICE_SECONDS:
                        await anyio.lowlevel.checkpoint()
                        yielded_at = time.monotonic()
                    if (
                        healthy_since is not None
                        and time.monotonic() - healthy_since >= self.settings.healthy_after_seconds
                    ):
                        self.backoff.reset()
                        healthy_since = None
                state.move("disconnected", "stream ended by the server")
                self.log.info("stream ended by the server")
        except httpx.ReadTimeout:
            state.move(
                "disconnected",
                f"stall: nothing received for {self.settings.stall_timeout_seconds:g} s",
            )
            self.log.warning("stream stalled", timeout=self.settings.stall_timeout_seconds)
        except httpx.ConnectError as exc:
            state.move("disconnected", f"connection failed: {_short(exc)}")
        except (httpx.HTTPError, SSEError) as exc:
            state.move("disconnected", f"{type(exc).__name__}: {_short(exc)}")
            self.log.warning("stream failed", error=_short(exc))
        if healthy_since is not None and time.monotonic() - healthy_since >= (
            self.settings.healthy_after_seconds
        ):
            self.backoff.reset()
        if connected_since is not None:
            self.backoff.connection_lost(time.monotonic() - connected_since)

    def _handle(self, sse: ServerSentEvent) -> None:
        state = self.state
        now = datetime.now(UTC)
        state.last_frame_at = now
        if sse.retry is not None and sse.retry >= 0:
            self.backoff.floor = min(sse.retry / 1000.0, self.settings.backoff_max_seconds)
        if sse.id:
            self.last_event_id = sse.id
        if not sse.data:
            # httpx-sse #35: keep-alive comments surface as empty events once an id was seen.
            return
        try:
            frame = parse_frame(sse.event, sse.data)
        except WireError as exc:
            self.count_bad(exc.kind, exc.detail)
            return
        state.frames += 1
        if isinstance(frame, SNAPSHOT_FRAMES):  # by what it is, not by its event name
            state.snapshots += 1
            state.last_snapshot_at = now
        try:
            self.on_frame(self.spec, frame, now)
        except Exception as exc:
            # A bug in accounting must not take the daemon (and every other source) down:
            # the frame is counted as an internal error. What the reconciler had accounted
            # is still saved with its state (Service.on_frame); if it failed before that,
            # its events stay unseen and the next snapshot accounts them.
            self.state.bad_frames["internal_error"] = (
                self.state.bad_frames.get("internal_error", 0) + 1
            )
            if "internal_error" not in self._logged_kinds:
                self._logged_kinds.add("internal_error")
                self.log.error("frame could not be accounted", exc_info=exc)


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of a body, without reading the rest (it may be endless)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]
