"""One open SSE response: its bounded queue, what may be queued, and how it is written.

Owns the per-connection side of the simulator: :class:`Stream` (a queue that drops the
oldest frames for a client that does not read), the queued item types, :func:`pump`
(frames, keep-alive comments after silence, nothing at all during a :class:`Stall`,
gateway lag), the chunked huge line, the malformed frames of the fault kinds, and the
non-SSE answers of ``http_500`` / ``http_401`` / ``wrong_content_type``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web

from cco_cost_monitor.simulator.faults import Fault
from cco_cost_monitor.simulator.ledger import Ledger
from cco_cost_monitor.simulator.traffic import split_frame, sse_frame

__all__ = [
    "BAD_JSON_DATA",
    "GARBAGE_FRAME",
    "SSE_HEADERS",
    "Close",
    "HugeLine",
    "Item",
    "Snapshot",
    "Stall",
    "Stream",
    "fault_item",
    "pump",
    "rejection",
    "write_item",
]

SSE_HEADERS = {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    "access-control-allow-origin": "*",
}
QUEUE_LIMIT = 256
_CHUNK = 64 * 1024
# Lines that are no SSE field, invalid UTF-8 and a NUL: what a broken proxy might emit.
GARBAGE_FRAME = b"\xff\xfe\x00 garbage that is no SSE field\nevent\x00analytics\ndata\n\n"
BAD_JSON_DATA = b'{"project":{"name":"Claude Orchestra","cost":0.0105,"calls":'


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A framed analytics snapshot (counted in the ledger when written).

    ``split``: written in several chunks, cut inside a multi-byte UTF-8 character when the
    frame has one (:func:`~cco_cost_monitor.simulator.traffic.split_frame`).
    """

    data: bytes
    split: bool = False


@dataclass(frozen=True, slots=True)
class HugeLine:
    """An ``event:analytics`` frame whose single ``data:`` line has ``size`` bytes.

    With ``split``, the same ``size`` bytes come as many short ``data:`` lines of one event
    (no blank line until its end): bounded lines, an unbounded event.
    """

    size: int
    spaced: bool
    split: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """End the stream: cleanly, or by aborting the TCP connection."""

    abort: bool = False


Item = bytes | Snapshot | HugeLine | Close


@dataclass(eq=False, slots=True)
class Stream:
    """One open SSE response and its outgoing queue."""

    kind: Literal["analytics", "gateway"]
    request: web.BaseRequest
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    done: asyncio.Event = field(default_factory=asyncio.Event)
    record: dict[str, Any] | None = None
    closing: bool = False
    skip: int = 0
    skipped: int = 0
    # Connected while a save held the records lock: its first snapshot waits for the release.
    awaiting_first: bool = False
    # Frame faults for this connection, to follow its first snapshot.
    after_first: list[Item] = field(default_factory=list)

    def put(self, item: Item) -> None:
        """Queue an item; after a Close nothing more is queued."""
        if self.closing:
            return
        if isinstance(item, Close):
            self.closing = True
        if self.queue.full():
            # A client that does not read loses the oldest frames, never the close.
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    def abort(self) -> None:
        """Cut the TCP connection without ending the chunked body."""
        if self.request.transport is not None:
            self.request.transport.abort()


class Stall:
    """A server-wide window in which no stream sends a single byte."""

    def __init__(self) -> None:
        self._until = 0.0

    def extend(self, seconds: float) -> None:
        """Stall (or keep stalling) for ``seconds`` from now."""
        self._until = max(self._until, asyncio.get_running_loop().time() + seconds)

    def active(self) -> bool:
        """Whether a stall is in progress."""
        return asyncio.get_running_loop().time() < self._until

    async def wait(self) -> None:
        """Return when no stall is in progress."""
        loop = asyncio.get_running_loop()
        # A loop, not an Event: a second stall fault moves the deadline.
        while (remaining := self._until - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)


async def pump(
    response: web.StreamResponse,
    stream: Stream,
    *,
    idle: float,
    comment: bytes,
    stall: Stall,
    ledger: Ledger,
) -> None:
    """Write queued items; ``comment`` after ``idle`` seconds of silence; nothing in a stall."""
    loop = asyncio.get_running_loop()
    last_write = loop.time()
    while True:
        try:
            async with asyncio.timeout(max(0.0, last_write + idle - loop.time())):
                item = await stream.queue.get()
        except TimeoutError:
            if stall.active():
                await stall.wait()
            else:
                await response.write(comment)
            last_write = loop.time()
            continue
        if isinstance(item, Close):
            if item.abort:
                stream.abort()
                return
            break
        if stall.active():
            continue
        if stream.skip and isinstance(item, bytes):
            # The gateway's broadcast channel overflowed for this subscriber.
            stream.skip -= 1
            stream.skipped += 1
            ledger.gateway_frames_skipped += 1
            if stream.skip == 0:
                lag = orjson.dumps({"skipped": stream.skipped})
                stream.skipped = 0
                await response.write(sse_frame("lag", lag))
                last_write = loop.time()
            continue
        await write_item(response, stream, item, ledger)
        last_write = loop.time()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()


async def write_item(
    response: web.StreamResponse, stream: Stream, item: Item, ledger: Ledger
) -> None:
    """Write one queued item (a Close is the caller's business)."""
    if isinstance(item, Snapshot):
        if item.split:
            for piece in split_frame(item.data):
                await response.write(piece)
        else:
            await response.write(item.data)
        ledger.snapshots_sent += 1
        if stream.record is not None:
            stream.record["snapshots_sent"] += 1
    elif isinstance(item, HugeLine):
        await _write_huge_line(response, item)
    elif isinstance(item, bytes):
        await response.write(item)


async def _write_huge_line(response: web.StreamResponse, item: HugeLine) -> None:
    """Valid JSON ``{"padding":"xxx..."}`` of exactly ``size`` bytes, sent in chunks."""
    head, tail = b'{"padding":"', b'"}'
    sep = b": " if item.spaced else b":"
    if item.split:
        await _write_many_lines(response, item.size, sep)
        return
    await response.write(b"event" + sep + b"analytics\ndata" + sep)
    if item.size >= len(head) + len(tail):
        await response.write(head)
        remaining = item.size - len(head) - len(tail)
    else:
        tail = b""
        remaining = item.size
    block = b"x" * _CHUNK
    while remaining > 0:
        n = min(remaining, _CHUNK)
        await response.write(block[:n])
        remaining -= n
    await response.write(tail + b"\n\n")


async def _write_many_lines(response: web.StreamResponse, size: int, sep: bytes) -> None:
    """One event of ``size`` data bytes as 64-byte ``data:`` lines, in 64 KiB writes."""
    line = b"data" + sep + b"x" * 64 + b"\n"
    per_block = _CHUNK // len(line)
    await response.write(b"event" + sep + b"analytics\n")
    lines = max(1, size // 64)
    while lines > 0:
        n = min(lines, per_block)
        await response.write(line * n)
        lines -= n
    await response.write(b"\n")


def fault_item(fault: Fault, *, spaced: bool) -> Item:
    """The frame of a ``garbage``, ``bad_json``, ``huge_line``, ``many_lines`` or ``error_event``
    fault."""
    if fault.kind == "garbage":
        return GARBAGE_FRAME
    if fault.kind == "bad_json":
        return sse_frame("analytics", BAD_JSON_DATA, spaced=spaced)
    if fault.kind == "huge_line":
        return HugeLine(fault.size, spaced)
    if fault.kind == "many_lines":
        return HugeLine(fault.size, spaced, split=True)
    if fault.kind == "error_event":
        # The proxy formats this body by hand, with a space after the colon.
        data = b'{"error": ' + json.dumps(fault.message).encode() + b"}"
        return sse_frame("error", data, spaced=spaced)
    raise ValueError(f"{fault.kind} is not a frame fault")


def rejection(kind: str) -> web.Response:
    """What a connection attempt gets instead of a stream."""
    if kind == "http_500":
        return web.json_response({"error": "Internal Server Error"}, status=500)
    if kind == "http_401":
        return web.json_response(
            {"error": "Unauthorized", "message": "missing or invalid API key"},
            status=401,
            headers={"www-authenticate": "Bearer"},
        )
    if kind == "shutting_down":
        return web.json_response({"error": "shutting down"}, status=503)
    return web.Response(
        text="<!doctype html><html><body><h1>CCO</h1></body></html>\n",
        content_type="text/html",
    )
