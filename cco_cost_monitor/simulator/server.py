"""The stand-in CCO proxy on a real socket: aiohttp SSE server, faults, lifecycle.

Owns the I/O around the pure modules (``traffic``, ``proxy``, ``ledger``): the
``/api/stream`` and ``/api/streams/subscribe`` SSE endpoints (each open response is a
``streams.Stream``), the control endpoints
(``/_sim/fault``, ``/_sim/traffic``, ``/_sim/ledger``), the tick loop that generates
traffic and broadcasts snapshots, restarts that really stop and rebind the TCP site, the
JSONL ledger file, and the entry points :func:`serve`, :func:`running` (in-process, for
tests) and :func:`run` (blocking, for the CLI).

Every proxy process ("incarnation") is a fresh aiohttp application on the same port; the
:class:`Simulator` outlives them and keeps the ground-truth :class:`~ledger.Ledger`.

Realistic mode (the default settings) does what the proxy's code does: each snapshot may be
read while requests finish (:meth:`Simulator._choose_read`), a save holds every snapshot back
for ``save_hold`` seconds while ``: keep-alive`` flows, then sends the held snapshot (old
``calls``, new ``cost`` and ring) and the missed ticks back to back, and restarts can keep
the uptime, reload nothing, or start with queued requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import IO, Any

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus

from cco_cost_monitor.errors import StartupError
from cco_cost_monitor.simulator.faults import Fault
from cco_cost_monitor.simulator.ledger import Ledger
from cco_cost_monitor.simulator.proxy import ATOMIC, ProxyState, ProxyTotals, Read
from cco_cost_monitor.simulator.settings import SimulatorSettings
from cco_cost_monitor.simulator.streams import (
    SSE_HEADERS,
    Close,
    Item,
    Snapshot,
    Stall,
    Stream,
    fault_item,
    pump,
    rejection,
    write_item,
)
from cco_cost_monitor.simulator.traffic import (
    KEEPALIVE_FRAME,
    KEEPALIVE_FRAME_SPACED,
    PING_FRAME,
    ActivityEvent,
    TrafficGenerator,
    TrafficProfile,
    format_timestamp,
    gateway_frames,
    sse_frame,
)

__all__ = ["Simulator", "run", "running", "serve"]

log = logging.getLogger("cco_cost_monitor.simulator")

STREAM_PATH = "/api/stream"
GATEWAY_PATH = "/api/streams/subscribe"
FLOOD_BATCH = 20


class _Hold:
    """A save in progress: the records lock is held until ``until`` (loop time)."""

    def __init__(self, until: float, calls: int) -> None:
        self.until = until
        self.calls = calls
        self.missed = 0
        self.released = asyncio.Event()


class Simulator:
    """A running stand-in proxy. Create, ``await start()``, ..., ``await stop()``."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.ledger = Ledger()
        self.incarnation = 0
        self.gateway_connections = 0
        self._generator = TrafficGenerator(
            settings.traffic,
            settings.seed,
            timestamp_digits=6 if settings.format == "early" else None,
        )
        self.state = ProxyState(ProxyTotals(), time.time_ns(), negative_zero=settings.negative_zero)
        self._race_rng = random.Random(None if settings.seed is None else f"{settings.seed}-races")
        self._pending_race: Fault | None = None
        self._pending_events: list[ActivityEvent] = []
        self._hold: _Hold | None = None
        self._port = settings.port
        self._runner: web.AppRunner | None = None
        self._streams: set[Stream] = set()
        # [kind, attempts left] of pending http_500 / http_401 / wrong_content_type faults.
        self._rejections: deque[list[Any]] = deque()
        self._for_next_connection: deque[Item] = deque(maxlen=100)
        self._stall = Stall()
        self._pending_burst = 0
        self._pending_restart: Fault | None = None
        self._pending_save: float | None = None
        self._dying = False
        self._wake = asyncio.Event()
        self._up = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ledger_file: IO[bytes] | None = None
        self._last_gen_ns = 0
        self._started_at = 0.0

    # -- public ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when the settings said 0)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the simulator."""
        return f"http://{self.settings.host}:{self._port}"

    @property
    def stream_url(self) -> str:
        """The analytics SSE endpoint a monitor connects to."""
        return self.url + STREAM_PATH

    @property
    def gateway_url(self) -> str:
        """The gateway ``stream_event`` endpoint."""
        return self.url + GATEWAY_PATH

    @property
    def is_up(self) -> bool:
        """Whether the proxy process is listening (false while a restart is down)."""
        return self._up.is_set()

    async def wait_up(self) -> None:
        """Wait until the proxy process listens again."""
        await self._up.wait()

    async def start(self) -> None:
        """Bind the port and start generating traffic; raises StartupError if it cannot bind."""
        s = self.settings
        now = time.time_ns()
        history = ProxyTotals(
            cost=s.history_cost, calls=s.history_calls, would_be_cost=s.history_cost
        )
        self.state = ProxyState(
            history, now, uptime_offset=s.start_uptime, negative_zero=s.negative_zero
        )
        self._generator.reset_clock(now)
        self._last_gen_ns = now
        if s.ledger_path is not None:
            try:
                self._ledger_file = s.ledger_path.open("ab")
            except OSError as exc:
                raise StartupError(f"cannot open the ledger file: {exc}") from exc
        try:
            await self._bind()
        except BaseException:
            self._close_ledger()
            raise
        self._started_at = asyncio.get_running_loop().time()
        self._tasks.append(asyncio.create_task(self._tick_loop(), name="sim-tick"))
        if s.faults:
            self._tasks.append(asyncio.create_task(self._fault_schedule(), name="sim-faults"))
        log.info("simulator listening on %s", self.url)

    async def stop(self) -> None:
        """End every stream, stop listening and close the ledger file. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._shutdown_process()
        self._close_ledger()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`stop` is called."""
        await self._stopped.wait()

    def inject(self, fault: Fault) -> dict[str, Any]:
        """Apply a fault now (a restart happens right after the next, immediate, tick)."""
        kind = fault.kind
        if kind == "restart" and fault.down_seconds is None:
            fault = replace(fault, down_seconds=self.settings.down_seconds)
        analytics = [s for s in self._streams if s.kind == "analytics"]
        applied = len(analytics)
        if kind == "restart":
            if self._pending_restart is None:
                self._pending_restart = fault
                self._wake.set()
        elif kind == "burst":
            self._pending_burst += fault.count
        elif kind == "race":
            self._pending_race = fault
        elif kind == "save":
            hold = self.settings.save_hold if fault.seconds is None else fault.seconds
            if self._hold is None:
                self._pending_save = hold
                self._wake.set()
        elif kind in ("identical", "orphan_override", "failed_call"):
            now = self._now_ns()
            gen = self._generator
            if kind == "identical":
                events = gen.identical(fault.count, now)
            elif kind == "orphan_override":
                events = gen.orphan_override(fault.count, now, fault.model)
            else:
                events = gen.failed_call(fault.count, now)
            # Recorded with the next step (behind the records lock while a save holds it).
            self._pending_events.extend(events)
        elif kind == "drop":
            applied = len(self._streams)
            for stream in list(self._streams):
                stream.put(Close(abort=fault.abort))
        elif kind in ("http_500", "http_401", "wrong_content_type"):
            self._rejections.append([kind, fault.count])
            applied = fault.count
        elif kind == "stall":
            self._stall.extend(60.0 if fault.seconds is None else fault.seconds)
            applied = len(self._streams)
        elif kind == "lag":
            gateway = [s for s in self._streams if s.kind == "gateway"]
            for stream in gateway:
                stream.skip += fault.skipped
            applied = len(gateway)
        else:
            item = fault_item(fault, spaced=self.settings.spaced)
            for stream in analytics:
                stream.put(item)
            if not analytics:
                # Nobody is connected: the next connection gets it after its first snapshot.
                self._for_next_connection.append(item)
        record = self.ledger.record_fault(self._rfc3339(), {**fault.to_json(), "applied": applied})
        self._write_ledger([record])
        log.info("fault %s applied (%s)", kind, fault.to_json())
        return {"ok": True, "fault": fault.to_json(), "applied": applied}

    def set_traffic(self, **changes: Any) -> TrafficProfile:
        """Change the traffic profile (``rate=0`` pauses generation; snapshots keep flowing)."""
        profile = replace(self._generator.profile, **changes)
        self._generator.set_profile(profile)
        return profile

    def ledger_json(self) -> dict[str, Any]:
        """The ground-truth document of ``GET /_sim/ledger``."""
        now = time.time_ns()
        return self.ledger.to_json(
            totals=self.state.totals,
            extra={
                "incarnation": self.incarnation,
                "up": self.is_up,
                "uptime": self.state.uptime(now),
                "format": self.settings.format,
                "seed": self.settings.seed,
                "rate": self._generator.profile.rate,
                "open_streams": sum(1 for s in self._streams if s.kind == "analytics"),
                "holding": self._hold is not None,
                "gateway_connections": self.gateway_connections,
            },
        )

    # -- process lifecycle -------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(STREAM_PATH, self._handle_stream)
        app.router.add_get(GATEWAY_PATH, self._handle_gateway)
        app.router.add_get("/health", self._handle_health)
        app.router.add_get("/ready", self._handle_ready)
        app.router.add_post("/_sim/fault", self._handle_fault)
        app.router.add_post("/_sim/traffic", self._handle_traffic)
        app.router.add_get("/_sim/ledger", self._handle_ledger)
        return app

    async def _bind(self) -> None:
        runner = web.AppRunner(
            self._make_app(), handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self.settings.host}:{self._port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        self._port = int(runner.addresses[0][1])
        self._runner = runner
        self._dying = False
        self._up.set()

    async def _shutdown_process(self) -> None:
        """The proxy process dies: streams end, the port refuses connections."""
        self._dying = True
        self._up.clear()
        streams = list(self._streams)
        for stream in streams:
            stream.put(Close())
        if streams:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*(s.done.wait() for s in streams))
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _restart(self, fault: Fault) -> None:
        down = self.settings.down_seconds if fault.down_seconds is None else fault.down_seconds
        old = self.state
        if fault.save_first:
            old.save(time.time_ns())
        last_uptime = old.uptime(time.time_ns())
        await self._shutdown_process()
        nothing = fault.reload == "nothing"
        record = self.ledger.record_restart(
            at=self._rfc3339(),
            before=old.totals,
            reloaded=ProxyTotals() if nothing else old.saved,
            down_seconds=down,
            hidden=fault.hidden,
            queued=fault.queued,
        )
        self._write_ledger([record])
        log.info("proxy restart: down for %.3f s, lost $%.6f", down, record["lost_cost_usd"])
        await asyncio.sleep(down)
        now = time.time_ns()
        # A slow start after a short life: uptime measured from before the reload shows no drop.
        offset = last_uptime + 1 + int(down) if fault.hidden else 0
        self.state = old.restarted(now, reload_nothing=nothing, uptime_offset=offset)
        self.incarnation += 1
        self._generator.reset_clock(now)
        self._last_gen_ns = now
        if fault.queued:
            # Requests that waited for the new process: in its ring and totals before the
            # first snapshot (they can lift calls above the last value seen).
            self._record(self._generator.step(now - 1_000_000, now, extra=fault.queued))
        while True:
            try:
                await self._bind()
            except StartupError as exc:
                log.warning("rebinding after restart failed, retrying: %s", exc)
                await asyncio.sleep(0.2)
            else:
                return

    # -- traffic and ticks -------------------------------------------------------------

    def _now_ns(self) -> int:
        # A snapshot is never older than the events it reports.
        return max(time.time_ns(), self._generator.last_ns + 1)

    def _rfc3339(self) -> str:
        return format_timestamp(time.time_ns())

    def _advance(self, now_ns: int) -> list[ActivityEvent]:
        """Generate what arrived since the last step (plus pending bursts and odd records)."""
        extra, self._pending_burst = self._pending_burst, 0
        race = self._pending_race
        if race is not None:
            extra += race.count
        events, self._pending_events = self._pending_events, []
        events += self._generator.step(self._last_gen_ns, now_ns, extra=extra)
        self._last_gen_ns = max(self._last_gen_ns, now_ns)
        self._record(events)
        return events

    def _choose_read(self, events: list[ActivityEvent]) -> Read:
        """How this snapshot's reads race with the requests that just finished (``events``)."""
        s = self.settings
        calls = sum(1 for e in events if e.counts_as_call)
        race, self._pending_race = self._pending_race, None
        if s.format == "old" or not events:
            return ATOMIC
        read = ATOMIC
        if race is not None:
            n = race.count
            read = {
                "event_ahead": Read(n, n, 0),
                "cost_ahead": Read(n, 0, 0),
                "event_late": Read(0, 0, n),
            }[race.mode]
        else:
            rng = self._race_rng
            roll = rng.random()
            if calls and roll < s.race_rate:
                n = rng.randint(1, min(3, calls))
                read = Read(n, n, 0) if rng.random() < 0.5 else Read(n, 0, 0)
            elif roll < s.race_rate + s.late_event_rate:
                read = Read(0, 0, 1)
        return self.state.clamp(read, calls, len(events))

    def _record(self, events: list[ActivityEvent]) -> None:
        if not events:
            return
        for event in events:
            self.state.record(event)
        self._write_ledger(self.ledger.record_events(events, self.incarnation))
        gateway = [s for s in self._streams if s.kind == "gateway"]
        if not gateway:
            return
        for event in events:
            if event.event_type != "api_call":
                continue
            failed = self._generator.gateway_error_due()
            frames = gateway_frames(
                event,
                self._generator.next_request_id(),
                agent_type=self._generator.agent_type(),
                failed=failed,
            )
            self.ledger.record_gateway(event, failed=failed)
            for stream in gateway:
                for frame in frames:
                    stream.put(frame)

    def _snapshot_frame(self, now_ns: int, read: Read = ATOMIC) -> Snapshot:
        s = self.settings
        data = self.state.snapshot_bytes(now_ns, s.format, read)
        return Snapshot(sse_frame("analytics", data, spaced=s.spaced), split=s.split_chunks)

    def _broadcast(self, frame: Snapshot) -> None:
        for stream in self._streams:
            if stream.kind == "analytics" and not stream.awaiting_first:
                stream.put(frame)

    def _save(self, now: int, hold: float) -> None:
        """The periodic save; with ``hold`` > 0 it holds the records lock that long."""
        self.state.save(now)
        record = self.ledger.record_save(self._rfc3339(), self.state.totals)
        self._write_ledger([{**record, "hold_seconds": hold}])
        if hold > 0:
            loop = asyncio.get_running_loop()
            self._hold = _Hold(loop.time() + hold, self.state.totals.calls)

    def _tick(self) -> None:
        now = self._now_ns()
        pending_save, self._pending_save = self._pending_save, None
        if self.settings.flood:
            if self.state.save_due(now, self.settings.save_interval):
                self._save(now, 0.0)
            return
        if pending_save is not None or self.state.save_due(now, self.settings.save_interval):
            # The save takes the lock first: this tick's snapshot is the first one held.
            self._save(now, self.settings.save_hold if pending_save is None else pending_save)
            if self._hold is not None:
                self._hold.missed = 1
                return
        events = self._advance(now)
        self._broadcast(self._snapshot_frame(now, self._choose_read(events)))

    def _release(self) -> None:
        """The save is done: queued requests land, the held snapshot and missed ticks fire."""
        hold, self._hold = self._hold, None
        if hold is None:
            return
        now = self._now_ns()
        events = self._advance(now)
        self._pending_race = None
        # The held snapshot read calls before the queued records landed; cost and ring after.
        stale = self.state.clamp(Read(calls_lag=self.state.totals.calls - hold.calls), 10**9, 0)
        frame = self._snapshot_frame(now, stale)
        waiting = [s for s in self._streams if s.awaiting_first]
        if hold.missed:
            self._broadcast(frame)
        for stream in waiting:
            self._first_snapshot(stream, now, frame, stale)
        if hold.missed:
            for _ in range(hold.missed - 1):
                self._broadcast(self._snapshot_frame(self._now_ns()))
        hold.released.set()
        log.info(
            "save released: %d queued events, %d snapshots back to back", len(events), hold.missed
        )

    def _first_snapshot(self, stream: Stream, now: int, frame: Snapshot, read: Read) -> None:
        """Queue a connection's first snapshot and record what it said in the ledger."""
        calls, cost = self.state.read_totals(read)
        stream.record = self.ledger.open_connection(
            opened_at=format_timestamp(now),
            path=STREAM_PATH,
            calls=calls,
            cost=cost,
            read=read,
        )
        self._write_ledger([{"kind": "connection", **stream.record}])
        stream.awaiting_first = False
        stream.put(frame)
        for item in stream.after_first:
            stream.put(item)
        stream.after_first.clear()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.interval
        next_at = loop.time() + interval
        while True:
            hold = self._hold
            wake_at = next_at if hold is None else min(next_at, hold.until)
            delay = wake_at - loop.time()
            urgent = hold is None and (
                self._pending_restart is not None or self._pending_save is not None
            )
            if delay > 0 and not urgent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            self._wake.clear()
            try:
                hold = self._hold
                if hold is not None:
                    if loop.time() >= hold.until:
                        self._release()
                        continue
                    if loop.time() >= next_at:
                        # A tick due while the save holds the lock: fired at the release.
                        hold.missed += 1
                        next_at += interval
                    continue
                self._tick()
                restart = self._pending_restart
                if restart is not None and self._hold is None:
                    # Right after a snapshot: every event so far was reported to clients.
                    await self._restart(restart)
                    self._pending_restart = None
                    next_at = loop.time()
            except Exception:
                log.exception("simulator tick failed")
            next_at += interval
            if next_at <= loop.time():
                next_at = loop.time() + interval

    async def _fault_schedule(self) -> None:
        loop = asyncio.get_running_loop()
        for scheduled in sorted(self.settings.faults, key=lambda f: f.at):
            delay = self._started_at + scheduled.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.inject(scheduled.fault)

    def _write_ledger(self, records: list[dict[str, Any]]) -> None:
        if self._ledger_file is None or not records:
            return
        self._ledger_file.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        self._ledger_file.flush()

    def _close_ledger(self) -> None:
        if self._ledger_file is not None:
            self._ledger_file.close()
            self._ledger_file = None

    # -- HTTP handlers -----------------------------------------------------------------

    def _rejection(self) -> web.Response | None:
        if self._dying:
            return rejection("shutting_down")
        if not self._rejections:
            return None
        pending = self._rejections[0]
        pending[1] -= 1
        if pending[1] <= 0:
            self._rejections.popleft()
        return rejection(pending[0])

    async def _handle_stream(self, request: web.Request) -> web.StreamResponse:
        # A hung proxy does not even answer with headers.
        await self._stall.wait()
        rejection = self._rejection()
        if rejection is not None:
            return rejection
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        stream = Stream("analytics", request)
        self._streams.add(stream)
        try:
            # No await between generating, building and recording: the ledger's
            # first_snapshot is exactly what this snapshot says.
            stream.after_first.extend(self._for_next_connection)
            self._for_next_connection.clear()
            now = self._now_ns()
            if self.settings.flood:
                self._record(self._generator.flood(FLOOD_BATCH, now))
                now = self._now_ns()
                self._first_snapshot(stream, now, self._snapshot_frame(now), ATOMIC)
            elif self._hold is not None:
                # The handler blocks on the records lock; keep-alives flow meanwhile.
                stream.awaiting_first = True
            else:
                read = self._choose_read(self._advance(now))
                self._first_snapshot(stream, now, self._snapshot_frame(now, read), read)
            if self.settings.flood:
                await self._flood(response, stream)
            else:
                await pump(
                    response,
                    stream,
                    idle=self.settings.keepalive,
                    comment=KEEPALIVE_FRAME_SPACED if self.settings.spaced else KEEPALIVE_FRAME,
                    stall=self._stall,
                    ledger=self.ledger,
                )
        except ConnectionError:
            pass
        finally:
            self._streams.discard(stream)
            if stream.record is not None:
                stream.record["closed_at"] = self._rfc3339()
            stream.done.set()
        return response

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        await self._stall.wait()
        rejection = self._rejection()
        if rejection is not None:
            return rejection
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        stream = Stream("gateway", request)
        self._streams.add(stream)
        self.gateway_connections += 1
        try:
            await pump(
                response,
                stream,
                idle=self.settings.ping_interval,
                comment=PING_FRAME,
                stall=self._stall,
                ledger=self.ledger,
            )
        except ConnectionError:
            pass
        finally:
            self._streams.discard(stream)
            stream.done.set()
        return response

    async def _flood(self, response: web.StreamResponse, stream: Stream) -> None:
        """Snapshots as fast as the client reads, each with 20 new api_call events."""
        while True:
            while not stream.queue.empty():
                item = stream.queue.get_nowait()
                if isinstance(item, Close):
                    if item.abort:
                        stream.abort()
                        return
                    with contextlib.suppress(ConnectionError):
                        await response.write_eof()
                    return
                await write_item(response, stream, item, self.ledger)
            if self._stall.active():
                await self._stall.wait()
                continue
            self._record(self._generator.flood(FLOOD_BATCH, self._now_ns()))
            frame = self._snapshot_frame(self._now_ns())
            await write_item(response, stream, frame, self.ledger)
            # Let the tick loop and the control endpoints run even with a fast reader.
            await asyncio.sleep(0)

    async def _handle_health(self, request: web.Request) -> web.Response:
        t = self.state.totals
        lookups = t.cache_hits + t.cache_misses
        return web.json_response(
            {
                "status": "ok",
                "version": "2025.12.0-sim",
                "cache_stats": {
                    "hit_rate": 100.0 * t.cache_hits / lookups if lookups else 0.0,
                    "hits": t.cache_hits,
                    "misses": t.cache_misses,
                    "entries": min(t.cache_misses, 1000),
                    "total_savings": t.savings,
                },
                "uptime": self.state.uptime(time.time_ns()),
            }
        )

    async def _handle_ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "version": "2025.12.0-sim"})

    async def _read_json(self, request: web.Request) -> object:
        try:
            return orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(
                text=orjson.dumps({"error": f"invalid JSON: {exc}"}).decode(),
                content_type="application/json",
            ) from exc

    async def _handle_fault(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        try:
            fault = Fault.from_json(body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.inject(fault))

    async def _handle_traffic(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        allowed = set(TrafficProfile.__dataclass_fields__)
        if not isinstance(body, dict) or not body or set(body) - allowed:
            return web.json_response(
                {"error": f"expected a JSON object with some of: {', '.join(sorted(allowed))}"},
                status=400,
            )
        try:
            profile = self.set_traffic(**body)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "traffic": _profile_json(profile)})

    async def _handle_ledger(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.ledger_json()), content_type="application/json")


def _profile_json(profile: TrafficProfile) -> dict[str, Any]:
    return {name: getattr(profile, name) for name in TrafficProfile.__dataclass_fields__}


@contextlib.asynccontextmanager
async def running(settings: SimulatorSettings) -> AsyncIterator[Simulator]:
    """Run a simulator in-process for the duration of the block (tests, the demo)."""
    sim = Simulator(settings)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def serve(
    settings: SimulatorSettings,
    *,
    task_status: TaskStatus[Simulator] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled or ``stop()``; reports the started :class:`Simulator`."""
    sim = Simulator(settings)
    await sim.start()
    try:
        task_status.started(sim)
        await sim.wait_stopped()
    finally:
        with anyio.CancelScope(shield=True):
            await sim.stop()


def run(
    settings: SimulatorSettings,
    *,
    on_ready: Callable[[Simulator], None] | None = None,
    duration: float | None = None,
) -> int:
    """Serve until Ctrl+C or SIGTERM (or ``duration`` seconds); returns exit status 0.

    Raises :class:`~cco_cost_monitor.errors.StartupError` when the port cannot be bound.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            async with running(settings) as sim:
                if on_ready is not None:
                    on_ready(sim)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(duration):
                        await stop.wait()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    asyncio.run(main())
    return 0
