"""The service lifecycle: start-up, the main loop, reload and shutdown.

:class:`Service` owns the running pieces — one :class:`~cco_cost_monitor.source.SseSource`
and one :class:`~cco_cost_monitor.reconciler.Reconciler` per source, the
:class:`~cco_cost_monitor.engine.Engine`, the store writer and the HTTP site — and
:func:`run_service` drives it: take the PID lock, open the database, bind the HTTP port
(``READY=1`` goes out only then), run until SIGTERM/SIGINT, flush, exit 0. Signal
handlers only set state; SIGHUP re-reads the configuration (a bad one is rejected and
the old one kept), SIGUSR1 writes a summary to the log.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import io
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import orjson
from aiohttp import web
from pydantic import ValidationError

from cco_cost_monitor import __version__, extensions, lean, persistence, sdnotify, statedir
from cco_cost_monitor.alerts import AlertDispatcher
from cco_cost_monitor.api import make_app
from cco_cost_monitor.budgets import BUDGET_STATE, AlertTracker, evaluate
from cco_cost_monitor.client import RUNTIME_FILE, format_statusline
from cco_cost_monitor.config import Settings, SourceSpec, load_settings
from cco_cost_monitor.engine import BucketKind, Engine, PruneClock
from cco_cost_monitor.errors import ConfigError, StartupError
from cco_cost_monitor.httpguard import BACKLOG, ConnectionGuard, connection_limit
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.pidlock import PidLock
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.projections import project
from cco_cost_monitor.reconciler import Accounting, Reconciler
from cco_cost_monitor.settlement import settle_seconds
from cco_cost_monitor.source import SseSource
from cco_cost_monitor.storage import AlertRecord, Ledger
from cco_cost_monitor.summary import SourceView, build_health, build_summary
from cco_cost_monitor.wire import Frame
from cco_cost_monitor.writer import StoreWriter

__all__ = ["Service", "run_service"]

# Settings a SIGHUP applies to the running service; any other change needs a restart.
LIVE_SETTINGS = frozenset(
    {
        "prices",
        "budgets",
        "alerts",
        "billing_day",
        "log_level",
        "health_token",
        "allow_unauthenticated",
        "allowed_hosts",
    }
)
# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL_SECONDS = 0.001
# How often memory freed by a burst of activity is given back to the OS.
MEMORY_RELEASE_SECONDS = 30.0
# How often projections and budgets are re-evaluated while no count changes (time alone
# moves them slowly: remaining hours, a period boundary).
EVALUATE_IDLE_SECONDS = 60.0

log = get_logger("cco_cost_monitor.server")
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Service:
    """Everything one running monitor holds. Methods are called on the event loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        flags: dict[str, Any] | None = None,
        clock: Clock = _utc_now,
    ) -> None:
        self.settings = settings
        self.flags = dict(flags or {})
        self.clock = clock
        self.started_at = clock()
        # Uptime from the monotonic clock: a wall clock stepped back never makes it negative.
        self.started_monotonic = time.monotonic()
        self.prune_clock = PruneClock()
        self.prices = PriceTable.default().with_overrides(settings.prices)
        self.engine = Engine(zone=settings.zone, recent_capacity=settings.recent_events)
        self.engine.prices = self.prices
        self.reconcilers: dict[str, Reconciler] = {}
        self.sources: dict[str, SseSource] = {}
        self.writer: StoreWriter | None = None
        self.store: Ledger | None = None
        self.health_port = settings.health_port
        self.projections: dict[str, Any] | None = None
        self.budgets: list[dict[str, Any]] = []
        self.tracker = AlertTracker(
            settings.alerts.thresholds, predictive=settings.alerts.predictive
        )
        self.dispatcher = AlertDispatcher(settings.alerts)
        for spec in settings.sources:
            self._add_source(spec, None)

    def _add_source(self, spec: SourceSpec, state: dict[str, Any] | None) -> None:
        self.restore_source(spec, state)
        self.sources[spec.name] = SseSource(
            spec, self.settings, self.on_frame, throttle=self.throttle
        )

    def restore_source(self, spec: SourceSpec, state: dict[str, Any] | None) -> None:
        """(Re)create a source's reconciler, from its saved state if any (before frames)."""
        self.reconcilers[spec.name] = Reconciler(
            spec.name,
            self.prices,
            kind=spec.effective_kind,
            capacity=self.settings.dedupe_capacity,
            pending_capacity=self.settings.pending_gateway_requests,
            settle_seconds=settle_seconds(self.settings.snapshot_interval_seconds),
            state=state,
        )

    async def throttle(self) -> None:
        """Back-pressure: wait while the disk is far behind (bounded memory)."""
        if self.writer is not None:
            await self.writer.throttle()

    # -- ingestion ---------------------------------------------------------------------

    def on_frame(self, spec: SourceSpec, frame: Frame, observed_at: datetime) -> None:
        """Account one frame: reconcile, aggregate, hand to the store writer."""
        reconciler = self.reconcilers[spec.name]
        accounting = reconciler.apply(frame, observed_at)
        try:
            if not accounting.is_empty or accounting.proxy_error is not None:
                self._log_accounting(accounting)
                self.engine.record(accounting)
        finally:
            # Whatever happens in the engine, the results go to disk with the reconciler
            # state that already includes them (a restart then restores them). Empty
            # results too: a gateway `started` only changes the reconciler's state.
            if self.writer is not None:
                self.writer.submit(accounting, reconciler.snapshot_state, self.engine.to_dict)

    def _log_accounting(self, accounting: Accounting) -> None:
        if accounting.first_contact:
            state = self.reconcilers[accounting.source].state
            log.info(
                "first contact: baseline set",
                source=accounting.source,
                baseline_cost_usd=state.baseline_cost,
                baseline_calls=state.baseline_calls,
            )
        if accounting.proxy_restart:
            log.warning("proxy restart detected", source=accounting.source)
        if accounting.proxy_error is not None:
            log.warning(
                "proxy reported an error", source=accounting.source, error=accounting.proxy_error
            )
        remainder = accounting.unattributed
        if remainder is not None:
            log.info(
                "unattributed spend accounted",
                source=accounting.source,
                reason=remainder.reason,
                requests=remainder.requests,
                cost_usd=remainder.cost_usd,
                lost_events=remainder.lost_events,
            )

    # -- views -------------------------------------------------------------------------

    def views(self) -> list[SourceView]:
        return [
            SourceView(source.spec, source.state, self.reconcilers[name])
            for name, source in self.sources.items()
        ]

    def store_status(self) -> dict[str, Any] | None:
        return persistence.writer_status(self.writer)

    def health(self) -> tuple[dict[str, Any], int]:
        document = build_health(
            engine=self.engine,
            views=self.views(),
            now=self.clock(),
            started_at=self.started_at,
            uptime_seconds=time.monotonic() - self.started_monotonic,
            snapshot_interval=self.settings.snapshot_interval_seconds,
            grace_seconds=self.settings.health_grace_seconds,
            store=self.store_status(),
            store_problem=self.store.file_problem() if self.store is not None else None,
        )
        return document, 503 if document["status"] == "fail" else 200

    def summary(self) -> dict[str, Any]:
        """The ``/api/summary`` document, every figure in it from one moment.

        Periods, projections and budget states are computed here from the same ``now`` and
        the same buckets (so a projection is never below what is already spent); reading
        never fires an alert, that is :meth:`evaluate_budgets`' job.
        """
        now = self.clock()
        projections, budgets = self.outlook(now)
        return build_summary(
            engine=self.engine,
            views=self.views(),
            now=now,
            projections=projections,
            budgets=budgets,
        )

    def outlook(self, now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Projections and budget states at ``now`` (pure: no alert, no state change)."""
        billing_day = self.settings.billing_day
        projections = project(self.engine, now, billing_day=billing_day)
        budgets = evaluate(
            self.settings.budgets, self.engine, projections, now, billing_day=billing_day
        )
        return projections, budgets

    def evaluate_budgets(self) -> None:
        """Refresh projections and budget states; hand new alerts to the dispatcher."""
        now = self.clock()
        self.projections, self.budgets = self.outlook(now)
        fired = self.tracker.update(self.budgets, now)
        for alert in fired:
            self.dispatcher.submit(alert)
            if self.writer is not None:
                self.writer.submit_alert(AlertRecord.from_dict(alert.to_dict()))
        if fired and self.writer is not None:
            # Same batch as the alerts: after a restart no threshold fires a second time.
            self.writer.submit_state(BUDGET_STATE, self.tracker.to_dict())

    async def evaluate_loop(self) -> None:
        """Alerts: when the counts changed, else once a minute (requests compute their own
        figures but fire none).

        The counts are checked every few seconds (new spend reaches budgets and alerts
        within seconds), never on a request. Re-evaluating while nothing changed was the
        idle daemon's largest steady cost: ``project`` walks the hour slots to the end of
        the month for each horizon, ~3 ms with a month of history, every 5 s.
        """
        seen: tuple[int, float] | None = None
        evaluated_at = -math.inf
        while True:
            counts = (self.engine.events_processed(), self.engine.total_cost())
            now = time.monotonic()
            if counts != seen or now - evaluated_at >= EVALUATE_IDLE_SECONDS:
                seen, evaluated_at = counts, now
                try:
                    self.evaluate_budgets()
                    self.engine.prune(self.prune_clock.now())
                except Exception as exc:
                    log.error("projections or budgets could not be evaluated", exc_info=exc)
            await anyio.sleep(max(1.0, min(self.settings.snapshot_interval_seconds, 5.0)))

    def alerts(self, limit: int) -> list[dict[str, Any]]:
        return [alert.to_dict() for alert in self.dispatcher.history(limit)]

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return [event.as_dict() for event in self.engine.recent_events(limit)]

    def timeseries(self, kind: BucketKind, since: datetime | None) -> list[dict[str, Any]]:
        return self.engine.timeseries(kind, since)

    def statusline(self) -> str:
        """The same line ``cco-monitor statusline`` prints: today, burn rate, budget state."""
        return format_statusline(self.summary())

    # -- reload ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration; keep every count. False if the new one is rejected.

        Prices, budgets, alerts, the billing day, the log level and the HTTP token apply at
        once. Keys that need new sockets or a rebuilt engine (sources, host, port, state
        dir, time zone, source timeouts...) keep their running values, and the log says a
        restart is needed for them.
        """
        try:
            loaded = load_settings(self.flags)
        except ConfigError as exc:
            log.error("reload rejected: keeping the running configuration", error=str(exc))
            return False
        old, new = self.settings, loaded.settings
        changed = [key for key in Settings.model_fields if getattr(old, key) != getattr(new, key)]
        needs_restart = [key for key in changed if key not in LIVE_SETTINGS]
        merged = new.model_copy(update={key: getattr(old, key) for key in needs_restart})
        try:
            # The running values kept for restart-only keys must still make a valid whole:
            # e.g. a token removed while a non-loopback host stays bound is refused.
            Settings.model_validate(dict(merged))
        except ValidationError as exc:
            log.error(
                "reload rejected: with the running values of "
                f"{', '.join(needs_restart)} the configuration is invalid",
                error=str(exc).splitlines()[-1][:300],
            )
            return False
        self.settings = merged
        self.prices = PriceTable.default().with_overrides(self.settings.prices)
        self.engine.prices = self.prices
        for reconciler in self.reconcilers.values():
            reconciler.prices = self.prices
        if old.alerts != self.settings.alerts:
            state = self.tracker.to_dict()
            self.tracker = AlertTracker(
                self.settings.alerts.thresholds, predictive=self.settings.alerts.predictive
            )
            self.tracker.load_dict(state)
            self.dispatcher.settings = self.settings.alerts
        if old.log_level != self.settings.log_level:
            logging.getLogger().setLevel(self.settings.log_level.upper())
        self.evaluate_budgets()
        log.info(
            "configuration reloaded",
            changed=[key for key in changed if key not in needs_restart],
            price_table=self.prices.version,
        )
        if needs_restart:
            log.warning(
                "restart needed for these changes (running values kept)", keys=needs_restart
            )
        return True

    def log_summary(self) -> None:
        document = self.summary()
        log.info(
            "summary",
            total_cost_usd=document["totals"]["cost_usd"],
            requests=document["totals"]["requests"],
            today_usd=document["periods"]["today"]["cost_usd"],
            burn_rate_1h=document["burn_rate_usd_per_hour"]["1h"],
        )


async def _start_site(app: web.Application, settings: Settings) -> tuple[web.AppRunner, int]:
    guard = ConnectionGuard(
        connection_limit(settings.http_max_connections), settings.http_header_timeout_seconds
    )
    app.middlewares.insert(0, guard.middleware)
    app.on_cleanup.append(lambda _: _close_guard(guard))
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # aiohttp's own idle timer (75 s by default in old versions, an hour in new ones).
        keepalive_timeout=settings.http_header_timeout_seconds,
    )
    await runner.setup()
    assert runner.server is not None
    guard.attach(runner.server)
    site = web.TCPSite(
        runner,
        settings.health_host,
        settings.health_port,
        reuse_address=True,
        backlog=BACKLOG,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {settings.health_port} on {settings.health_host} is already in use "
                "(another cco-monitor? set --health-port)"
            ) from None
        raise StartupError(
            f"cannot listen on {settings.health_host}:{settings.health_port}: {exc.strerror}"
        ) from None
    port = settings.health_port
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    return runner, port


async def _close_guard(guard: ConnectionGuard) -> None:
    guard.close()


async def serve(service: Service, on_ready: Callable[[], None] | None = None) -> int:
    """Run ``service`` until SIGTERM/SIGINT. Returns the process exit status."""
    settings = service.settings
    # Signal handling first: a SIGHUP sent as soon as the pid is published must not kill us.
    with anyio.open_signal_receiver(
        signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1
    ) as signals:
        # Whatever this process creates from here on is private (0600 files, 0700 dirs).
        os.umask(0o077)
        try:
            settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StartupError(
                f"state dir {settings.state_dir} is unusable: {exc.strerror}"
            ) from None
        statedir.check_state_dir(settings.state_dir)
        if tightened := statedir.make_private(settings.state_dir):
            log.warning("state_permissions_tightened", removed="group/other", files=tightened)
        statedir.check_database_path(settings.db_path)
        lock = PidLock(settings.pid_path)
        lock.acquire()
        try:
            await _open_store(service)
            try:
                app = make_app(service)
                _extend_app(app, service)
                runner, port = await _start_site(app, settings)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _close_store(service)
                raise
            service.health_port = port
            _announce(settings, port)
            log.info(
                "cco-monitor started",
                pid=os.getpid(),
                health_url=f"http://{settings.health_host}:{port}/health",
                sources=[spec.name for spec in settings.sources],
            )
            try:
                async with anyio.create_task_group() as tasks:
                    for source in service.sources.values():
                        tasks.start_soon(source.run)
                    if service.writer is not None:
                        tasks.start_soon(service.writer.run)
                    tasks.start_soon(_watchdog)
                    tasks.start_soon(_release_memory, service)
                    tasks.start_soon(service.evaluate_loop)
                    tasks.start_soon(service.dispatcher.run)
                    sdnotify.notify(
                        f"READY=1\nSTATUS=serving on port {port}\nMAINPID={os.getpid()}"
                    )
                    if on_ready is not None:
                        on_ready()
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            sdnotify.notify("RELOADING=1")
                            service.reload()
                            sdnotify.notify("READY=1")
                            continue
                        if signum == signal.SIGUSR1:
                            service.log_summary()
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        sdnotify.notify("STOPPING=1")
                        break
                    tasks.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await runner.cleanup()
                    await _close_store(service)
            with contextlib.suppress(OSError):
                # Only ours to remove: the lock is still held, nobody else can have started.
                (settings.state_dir / RUNTIME_FILE).unlink()
            log.info("cco-monitor stopped")
            return 0
        finally:
            lock.release()


def _announce(settings: Settings, port: int) -> None:
    """Write ``<state dir>/daemon.json`` so that clients find the bound port.

    Written atomically after the port is bound; holds no secret. The PID lock, not this
    file, says whether the daemon runs: a stale file only points at a dead port. The
    scratch file is always a new 0600 file (``O_EXCL | O_NOFOLLOW``): a link planted in
    its place is removed, never written through.
    """
    host = settings.health_host
    # A wildcard bind is reached on loopback by the local clients that read this file.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    url_host = f"[{host}]" if ":" in host else host
    document = {
        "pid": os.getpid(),
        "health_url": f"http://{url_host}:{port}",
        "started_at": datetime.now(UTC).isoformat(),
        "version": __version__,
    }
    target = settings.state_dir / RUNTIME_FILE
    scratch = target.with_suffix(".json.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()  # left by a crash, or planted: unlink removes a link, not its target
        fd = statedir.open_private(scratch, os.O_WRONLY, exclusive=True)
        with open(fd, "wb") as handle:
            handle.write(orjson.dumps(document))
        scratch.replace(target)
    except StartupError as exc:
        log.warning("could not write the runtime file", path=str(target), error=str(exc))
    except OSError as exc:
        log.warning("could not write the runtime file", path=str(target), error=exc.strerror)


async def _release_memory(service: Service) -> None:
    """After activity, hand the heap pages a burst left free back to the OS (~3 MiB)."""
    processed = service.engine.events_processed()
    while True:
        await anyio.sleep(MEMORY_RELEASE_SECONDS)
        now = service.engine.events_processed()
        if now != processed:
            processed = now
            # A walk of the heap under its lock: not on the event loop.
            await anyio.to_thread.run_sync(lean.release_free_memory)


async def _watchdog() -> None:
    period = sdnotify.watchdog_period()
    if period is None:
        return
    while True:
        sdnotify.notify("WATCHDOG=1")
        await anyio.sleep(period)


async def _open_store(service: Service) -> None:
    """Open the database and restore what was counted."""
    await persistence.attach(service)


async def _close_store(service: Service) -> None:
    await persistence.detach(service)


def _extend_app(app: web.Application, service: Service) -> None:
    """Routes owned by other modules (metrics, dashboard)."""
    extensions.install(app, service)


def _log_fatal_signals() -> None:
    """Let a crash in C (SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGILL) say why in the log.

    A signal like these cannot be survived: SQLite's shared-memory index (monitor.db-shm)
    truncated under the daemon faults on the next access. Python's faulthandler writes
    "Fatal Python error: Bus error" and every thread's stack to where the log goes
    (monitor.log in the background, stderr and the journal in the foreground) before the
    process dies by the same signal; the service manager restarts it and the next start
    resumes from the database, exactly.
    """
    stream: Any = sys.stderr
    for handler in logging.getLogger().handlers:
        candidate = getattr(handler, "stream", None)
        if candidate is not None and hasattr(candidate, "fileno"):
            stream = candidate
            break
    try:
        faulthandler.enable(file=stream, all_threads=True)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        log.warning("crash reports unavailable: the log has no file descriptor")


def run_service(
    settings: Settings,
    *,
    flags: dict[str, Any] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Create the loop (after any fork) and serve. Raises StartupError before ready."""
    # The store writer thread gives the GIL away on every SQLite step and must wait for the
    # event loop thread to drop it again: at the default 5 ms that wait throttled ingestion
    # under flood (bench_ingest, four interleaved pairs: +2.5 to +16 % events per CPU s).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    _log_fatal_signals()
    service = Service(settings, flags=flags)

    def ready() -> None:
        # Under flood, full collections walked every module object and the restored state
        # again and again (bench_ingest: GC 1.9 -> 1.1 s per 15 s once frozen).
        lean.freeze_startup_objects()
        lean.release_free_memory()
        if on_ready is not None:
            on_ready()

    return anyio.run(serve, service, ready)
