"""One SSE subscription to a proxy or gateway stream, kept alive forever.

httpx does the HTTP; :class:`SseDecoder` the SSE decoding (httpx-sse's semantics and
event type, with bounded buffers). This module adds what the libraries leave to the
caller: a reconnect loop with full-jitter exponential backoff (reset after a healthy
period, ``retry:`` honoured as a floor, ``Last-Event-ID`` sent once an id was seen),
status and content-type checks before reading, stall detection through httpx's read
timeout, hard bounds on the length of a line and on the size of an event, and a
connection state machine (``connecting`` / ``connected`` / ``disconnected`` / ``error``,
with the last reason) that ``/health`` reads. Frames are parsed here and handed to a
callback; bad frames are counted per kind and skipped, never fatal.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import anyio
import anyio.lowlevel
import httpx
from httpx_sse import ServerSentEvent

from cco_cost_monitor import __version__
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.errors import WireError
from cco_cost_monitor.formats import SNAPSHOT_FRAMES
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.redact import redact_url
from cco_cost_monitor.wire import Frame, parse_frame

__all__ = ["Backoff", "ConnectionState", "SseDecoder", "SseSource"]

Status = Literal["connecting", "connected", "disconnected", "error"]
FrameHandler = Callable[[SourceSpec, Frame, datetime], None]
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
    last_frame_at: datetime | None = None
    last_snapshot_at: datetime | None = None
    reconnects: int = 0
    frames: int = 0
    snapshots: int = 0
    auth_rejected: bool = False
    bad_frames: dict[str, int] = field(default_factory=dict)
    # The latest bad frame's kind and detail ("invalid_value: activity.0.cost: ...").
    last_bad_frame: str | None = None
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


class SseDecoder:
    """The bytes of an SSE stream in, complete events out, with bounded buffers.

    The WHATWG event-stream interpretation (lines end in CRLF, LF or CR; ``:`` starts a
    comment; ``data``, ``event``, ``id`` and ``retry`` fields; a blank line dispatches),
    the same events httpx-sse's decoders give, without their unbounded buffers and with
    one pass per chunk instead of one Python step per line in three layers of generators:

    - a line longer than ``max_line`` bytes is never held: what was buffered of it is
      dropped at once and the rest of it skipped, counted as ``oversized_line``;
    - an event whose ``data:`` lines add up to more than ``max_event`` bytes (many short
      lines and no blank line) is dropped as soon as it crosses the bound, and its
      remaining lines up to the blank line are skipped, counted as ``oversized_event``.

    An event that lost a line or its data this way is never dispatched (a partial event
    could still parse as valid JSON): the next event starts clean. So at most
    ``max_line + max_event`` bytes are held, whatever the server sends.
    """

    __slots__ = (
        "_data",
        "_event",
        "_fields",
        "_last_id",
        "_on_oversize",
        "_partial",
        "_poisoned",
        "_retry",
        "_size",
        "_skipping_line",
        "_trailing_cr",
        "max_event",
        "max_line",
    )

    def __init__(self, max_line: int, max_event: int, on_oversize: Callable[[str], None]) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self._on_oversize = on_oversize
        self._partial = b""
        self._skipping_line = False
        self._trailing_cr = False
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""
        self._last_id = ""
        self._retry: int | None = None
        self._fields = False
        self._poisoned = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that ``chunk`` completes (usually none or one)."""
        if self._trailing_cr:
            # The previous chunk ended in CR: an LF here is the second half of that CRLF.
            self._trailing_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        if b"\r" in chunk:
            self._trailing_cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = chunk.rfind(b"\n")
        if cut == -1:
            self._hold(chunk)
            return []
        lines = chunk[:cut].split(b"\n")
        if self._skipping_line:
            # The end of a line that was too long: what is left of it is dropped too.
            self._skipping_line = False
            lines[0] = b""
            skip_first = True
        else:
            skip_first = False
            if self._partial:
                lines[0] = self._partial + lines[0]
        self._partial = b""
        events: list[ServerSentEvent] = []
        for index, line in enumerate(lines):
            if skip_first and index == 0:
                continue
            if len(line) > self.max_line:
                self._oversized_line()
                continue
            if line:
                self._field(line)
            elif self._fields:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
        self._hold(chunk[cut + 1 :])
        return events

    def _hold(self, piece: bytes) -> None:
        """Keep the unfinished end of a line, or drop the line once it is too long."""
        if self._skipping_line or not piece:
            return
        if len(self._partial) + len(piece) > self.max_line:
            self._partial = b""
            self._skipping_line = True
            self._oversized_line()
            return
        self._partial += piece

    def _oversized_line(self) -> None:
        self._poison()
        self._on_oversize("oversized_line")

    def _poison(self) -> None:
        # The event lost a line: drop what it holds, never dispatch it.
        self._poisoned = True
        self._fields = True
        self._data = []
        self._size = 0

    def _field(self, line: bytes) -> None:
        # ``_fields``: whether the blank line ends an event that httpx-sse would dispatch
        # (data, a non-empty event name, an id or a valid retry seen since the last one).
        if line[0] == 0x3A:  # ":" -- a comment (keep-alive)
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            if self._poisoned:
                return
            self._size += len(value) + 1
            if self._size > self.max_event:
                self._poison()
                self._on_oversize("oversized_event")
                return
            self._data.append(value)
            self._fields = True
        elif name == b"event":
            self._event = value
            self._fields = self._fields or bool(value)
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8", "replace")
                self._fields = True
        elif name == b"retry" and value.isdigit():
            self._retry = int(value)
            self._fields = True
        # Any other field name is ignored (the spec says so).

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished line and event (bounded by both limits)."""
        return len(self._partial) + self._size + len(self._event)

    def _dispatch(self) -> ServerSentEvent | None:
        poisoned = self._poisoned
        event = None
        if not poisoned:
            event = ServerSentEvent(
                event=self._event.decode("utf-8", "replace"),
                data=b"\n".join(self._data).decode("utf-8", "replace"),
                id=self._last_id,
                retry=self._retry,
            )
        self._data = []
        self._size = 0
        self._event = b""
        self._retry = None
        self._fields = False
        self._poisoned = False
        return event


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
                self.state.reconnects += 1
                await anyio.sleep(delay)

    async def _connect_once(self, client: httpx.AsyncClient) -> None:
        state = self.state
        state.move("connecting", state.reason)
        healthy_since: float | None = None
        connected_since: float | None = None
        try:
            async with client.stream("GET", self.spec.url, headers=self._headers()) as response:
                if response.status_code != 200:
                    body = (await _read_at_most(response, 200)).decode("utf-8", "replace")
                    state.auth_rejected = response.status_code in (401, 403)
                    state.move("error", f"HTTP {response.status_code}: {body.strip()}")
                    self.log.warning("source answered with an error", status=response.status_code)
                    return
                state.auth_rejected = False
                limit = self.settings.max_line_bytes
                decoder = SseDecoder(
                    limit,
                    limit,
                    lambda kind: self.count_bad(
                        kind,
                        f"{'line' if kind == 'oversized_line' else 'event data'} over "
                        f"max_line_bytes ({limit}) dropped",
                    ),
                )
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    state.move("error", f"not an SSE stream (content-type {content_type!r})")
                    self.log.warning("source is not an SSE stream", content_type=content_type)
                    return
                state.move("connected", None)
                self.log.info("connected", url=redact_url(self.spec.url))
                healthy_since = connected_since = time.monotonic()
                yielded_at = time.monotonic()
                async for chunk in response.aiter_bytes():
                    for sse in decoder.feed(chunk):
                        self._handle(sse)
                        if self.throttle is not None:
                            await self.throttle()
                        # A chunk may hold many events: on a busy stream, give /health
                        # and the other tasks a turn every few ms.
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
        except httpx.HTTPError as exc:
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
