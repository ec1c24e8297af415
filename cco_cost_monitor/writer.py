"""The async batching writer: runs a :class:`~cco_cost_monitor.storage.LedgerWriter` off the
event loop.

This module owns *when* things are written; :mod:`cco_cost_monitor.store` owns *how*.

The service calls :meth:`StoreWriter.submit` for every :class:`Accounting` it applies, right
after ``engine.record(accounting)`` and with no ``await`` in between (so the engine state taken
for a batch covers exactly the results in it and before it). ``submit`` never touches the disk
and never waits: it appends the result, keeps the source's latest reconciler state (encoded to
JSON there and then, because the reconciler mutates its dicts in place) and remembers the engine
state factory. A background task (:meth:`StoreWriter.run`) commits everything pending as ONE
batch in a worker thread, ``max_delay`` seconds after the oldest pending result, or at once when
``max_batch`` results are pending.

Coalescing: a batch always takes *everything* pending, because the states it carries are the
latest ones and they match only the full set of results before them. States supersede earlier
states; results (events, unattributed remainders) only accumulate: none is ever dropped.
Results that changed nothing (a repeated snapshot) update the kept state without forcing a
commit; such state-only changes are written within ``state_interval`` seconds, or with the
next real result. The engine state (~100 kB when its buckets are full) is included at most
every ``engine_interval`` seconds, on first contact with a source, and on flush/close; the
results in between are replayed from the database on load (see the store's docstring).

Back-pressure: if the disk falls behind (or commits keep failing) pending results stay in
memory. Past ``max_pending`` of them, or ``max_pending_events`` events in them,
:meth:`StoreWriter.throttle` -- which the ingestion loop awaits after ``submit`` -- blocks
until the writer catches up. Blocking ingestion is safe:
what the proxy sends meanwhile is accounted when reading resumes (as events still in its
window, the rest as unattributed growth of its totals), so memory stays bounded and nothing
is dropped silently.

Failures: a failed commit is logged and counted, its batch is kept (merged with what arrived
since) and retried with exponential back-off. :meth:`StoreWriter.aclose` (SIGTERM) commits
everything submitted before it, retrying for ``retry_for`` seconds; only if the disk stays unusable
for that long does it raise :class:`StoreError`, and even then the unsaved tail is what the
proxy replays at the next start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import orjson

from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.reconciler import Accounting
from cco_cost_monitor.storage import AlertRecord, Batch, CommitResult, LedgerWriter, PruneResult

__all__ = ["StoreWriter", "WriterStats"]

log = get_logger("cco_cost_monitor.writer")

EngineStateFactory = Callable[[], dict[str, Any]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Pending:
    """What has been submitted and not yet committed (or was handed back by a failed commit)."""

    results: list[Accounting] = field(default_factory=list)
    events: int = 0  # in the results (a result without events counts as one)
    states: dict[str, bytes] = field(default_factory=dict)
    # Per source, how to take its state when the batch is cut (encoded only then).
    state_factories: dict[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    alerts: list[AlertRecord] = field(default_factory=list)
    components: dict[str, bytes] = field(default_factory=dict)
    since: float | None = None  # monotonic time of the oldest result, alert or component state
    state_since: float | None = None  # monotonic time of the oldest state-only change

    @property
    def urgent(self) -> bool:
        return bool(self.results or self.alerts or self.components)

    @property
    def empty(self) -> bool:
        return not (
            self.results or self.states or self.state_factories or self.alerts or self.components
        )


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters for ``/health`` and ``/metrics``."""

    pending: int
    lag_seconds: float
    commits: int
    failures: int
    last_commit_ms: float | None
    last_commit_at: datetime | None
    last_error: str | None
    events_written: int
    events_ignored: int
    prunes: int
    prune_failures: int


class StoreWriter:
    """Batches accounting results into :meth:`LedgerWriter.commit_batch` calls on a worker thread.

    Usage (in the service's task group)::

        writer = StoreWriter(store)
        task_group.start_soon(writer.run)
        ...
        engine.record(accounting)
        writer.submit(accounting, reconciler.snapshot_state(), engine.to_dict)
        await writer.throttle()
        ...
        await writer.aclose()   # on shutdown, even while the task group is being cancelled
        store.close()
    """

    def __init__(
        self,
        store: LedgerWriter,
        *,
        max_delay: float = 0.2,
        # Small on purpose: under flood a proxy result holds 20 events, in memory and in the
        # collector's young generations (pauses of up to 14 ms at 750 results), and a commit
        # of 50 results (~1,000 events) costs no throughput against bigger ones
        # (bench/README.md). The backlog is bounded in events too, so that one-event results
        # (gateway requests) keep a buffer of hundreds.
        max_batch: int = 50,
        max_pending: int = 750,
        max_pending_events: int = 2_000,
        engine_interval: float = 30.0,
        state_interval: float = 60.0,
        prune_interval: float | None = 3600.0,
        first_prune_delay: float = 60.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
        prune_now: Callable[[], datetime] | None = None,
    ) -> None:
        if max_pending < max_batch:
            raise ValueError("max_pending must be >= max_batch")
        self.store = store
        self.max_delay = max_delay
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_pending_events = max_pending_events
        self.engine_interval = engine_interval
        self.state_interval = state_interval
        self.prune_interval = prune_interval
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._clock = clock
        self._now = now
        # The time rows are pruned by: the service's PruneClock, so that a wall clock
        # stepped ahead for a moment does not delete days of history.
        self._prune_now = prune_now or now

        self._pending = _Pending()
        self._inflight: _Pending | None = None
        self._factory: EngineStateFactory | None = None
        self._engine_saved_at: float | None = None
        self._wake: anyio.Event | None = None
        self._drained: anyio.Event | None = None
        self._commit_lock: anyio.Lock | None = None
        self._closing = False
        self._closed = False
        self._retry_at: float | None = None
        self._retry_delay = retry_initial
        self._next_prune: float | None = (
            None if prune_interval is None else clock() + min(first_prune_delay, prune_interval)
        )

        self.commits = 0
        self.failures = 0
        self.last_commit_ms: float | None = None
        self.last_commit_at: datetime | None = None
        self.last_error: str | None = None
        self.last_result: CommitResult | None = None
        # Called on the event loop after each successful commit (e.g. /api/stream's hub).
        self.on_commit: list[Callable[[CommitResult], None]] = []
        self.last_prune: PruneResult | None = None
        self.events_written = 0
        self.events_ignored = 0
        self.prunes = 0
        self.prune_failures = 0

    # -- the caller's side (event loop, never blocks) ----------------------------------

    def submit(
        self,
        accounting: Accounting,
        source_state: dict[str, Any] | Callable[[], dict[str, Any]],
        engine_state_factory: EngineStateFactory,
    ) -> None:
        """Queue ``accounting`` with its source's state after it; returns at once.

        ``source_state`` is a dict (encoded now) or, on the hot path, a callable taken
        and encoded when the batch is cut: per frame, encoding a reconciler state costs
        more than accounting the frame. Like ``engine_state_factory``, it is called on the
        event loop in the same step as the cut, so it matches exactly the results before it.
        """
        if self._closing:
            raise StoreError("the store writer is closed: nothing more can be saved")
        pending = self._pending
        now = self._clock()
        if callable(source_state):
            pending.state_factories[accounting.source] = source_state
            pending.states.pop(accounting.source, None)
        else:
            pending.states[accounting.source] = orjson.dumps(
                source_state, option=orjson.OPT_NON_STR_KEYS
            )
            pending.state_factories.pop(accounting.source, None)
        self._factory = engine_state_factory
        if not accounting.is_empty or accounting.proxy_restart:
            pending.results.append(accounting)
            pending.events += len(accounting.events) or 1
            if pending.since is None:
                pending.since = now
        elif pending.state_since is None:
            pending.state_since = now
        self._poke()

    def submit_alert(self, alert: AlertRecord) -> None:
        """Queue an alert record for the next batch; returns at once."""
        if self._closing:
            raise StoreError("the store writer is closed: nothing more can be saved")
        self._pending.alerts.append(alert)
        self._mark()

    def submit_state(self, name: str, state: dict[str, Any]) -> None:
        """Queue another component's state (e.g. ``"budgets"``); the latest one wins.

        Submitted together with an alert (no ``await`` in between), both land in one batch.
        """
        if self._closing:
            raise StoreError("the store writer is closed: nothing more can be saved")
        self._pending.components[name] = orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS)
        self._mark()

    def _mark(self) -> None:
        if self._pending.since is None:
            self._pending.since = self._clock()
        self._poke()

    async def throttle(self) -> None:
        """Wait while ``max_pending`` results or ``max_pending_events`` events wait for the disk."""
        while self._backlogged and not self._closed:
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- observability -----------------------------------------------------------------

    @property
    def _backlogged(self) -> bool:
        events = self._pending.events
        if self._inflight is not None:
            events += self._inflight.events
        return self.pending >= self.max_pending or events >= self.max_pending_events

    @property
    def pending(self) -> int:
        """Results (and alerts) submitted and not yet committed."""
        count = len(self._pending.results) + len(self._pending.alerts)
        if self._inflight is not None:
            count += len(self._inflight.results) + len(self._inflight.alerts)
        return count

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest uncommitted result (0 when everything is on disk)."""
        times = [
            moment
            for part in (self._inflight, self._pending)
            if part is not None
            for moment in (part.since,)
            if moment is not None
        ]
        return max(0.0, self._clock() - min(times)) if times else 0.0

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> WriterStats:
        return WriterStats(
            pending=self.pending,
            lag_seconds=self.lag_seconds,
            commits=self.commits,
            failures=self.failures,
            last_commit_ms=self.last_commit_ms,
            last_commit_at=self.last_commit_at,
            last_error=self.last_error,
            events_written=self.events_written,
            events_ignored=self.events_ignored,
            prunes=self.prunes,
            prune_failures=self.prune_failures,
        )

    # -- the background task ------------------------------------------------------------

    def _lock(self) -> anyio.Lock:
        if self._commit_lock is None:
            self._commit_lock = anyio.Lock()
        return self._commit_lock

    def _due_in(self, now: float) -> float:
        """Seconds until the next commit is due (``inf``: nothing to commit)."""
        pending = self._pending
        if pending.empty:
            return math.inf
        if self._retry_at is not None:
            return self._retry_at - now
        if len(pending.results) + len(pending.alerts) >= self.max_batch:
            return 0.0
        due = math.inf
        if pending.urgent and pending.since is not None:
            due = pending.since + self.max_delay
        elif pending.state_since is not None:
            due = pending.state_since + self.state_interval
        else:  # states handed back by a failed commit
            due = now
        return due - now

    async def run(self) -> None:
        """Commit batches until :meth:`aclose`; prune every ``prune_interval`` seconds."""
        while not self._closing:
            now = self._clock()
            wait = self._due_in(now)
            if self._next_prune is not None:
                wait = min(wait, self._next_prune - now)
            if wait > 0:
                self._wake = anyio.Event()
                # Woken by submit() to re-evaluate; math.inf means "until poked".
                with anyio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = None
                continue
            if self._due_in(now) <= 0:
                await self._commit(force_engine=False)
            if self._next_prune is not None and self._clock() >= self._next_prune:
                await self._prune()

    async def _commit(self, *, force_engine: bool) -> bool:
        """Cut one batch of everything pending and commit it; False if it failed."""
        ok = False
        async with self._lock():
            with anyio.CancelScope(shield=True):
                ok = await self._commit_locked(force_engine=force_engine)
        return ok

    async def _commit_locked(self, *, force_engine: bool) -> bool:
        part = self._pending
        if part.empty and not force_engine:
            return True
        self._pending = _Pending()
        self._inflight = part
        now = self._clock()
        engine: bytes | None = None
        wants_engine = (
            force_engine
            or self._engine_saved_at is None
            or now - self._engine_saved_at >= self.engine_interval
            or any(result.first_contact for result in part.results)
        )
        if wants_engine and self._factory is not None:
            # On the event loop, in the same step as the cut: covers exactly these results.
            try:
                engine = orjson.dumps(self._factory(), option=orjson.OPT_NON_STR_KEYS)
            except Exception as exc:  # a bug; the results are replayed on load instead
                log.error("engine state could not be taken", error=str(exc)[:500])
        for source, take_state in part.state_factories.items():
            try:
                part.states[source] = orjson.dumps(take_state(), option=orjson.OPT_NON_STR_KEYS)
            except Exception as exc:  # a bug; keep the results, the state comes next batch
                log.error("source state could not be taken", source=source, error=str(exc)[:500])
        part.state_factories = {}
        if part.empty and engine is None:
            self._inflight = None
            return True
        batch = Batch(
            results=part.results,
            source_states=dict(part.states),
            engine=engine,
            alerts=part.alerts,
            component_states=dict(part.components),
        )
        try:
            result = await anyio.to_thread.run_sync(self.store.commit_batch, batch)
        except Exception as exc:  # StoreError, or anything unexpected: keep the data
            self._give_back(part)
            self.failures += 1
            self.last_error = str(exc)[:500]
            self._retry_at = self._clock() + self._retry_delay
            log.error(
                "commit failed; keeping the batch and retrying",
                error=self.last_error,
                results=len(part.results),
                retry_in=round(self._retry_delay, 2),
                failures=self.failures,
            )
            self._retry_delay = min(self._retry_delay * 2, self.retry_max)
            return False
        self._inflight = None
        self._retry_at = None
        self._retry_delay = self.retry_initial
        if engine is not None:
            self._engine_saved_at = now
        self.commits += 1
        self.last_result = result
        self.last_commit_ms = result.duration_ms
        self.last_commit_at = self._now()
        self.events_written += result.events_inserted
        self.events_ignored += result.events_ignored
        if result.events_ignored:
            log.warning(
                "events already stored were accounted again (ignored)",
                ignored=result.events_ignored,
                batch=result.batch,
            )
        if self.failures and self.last_error is not None:
            log.info("commits succeed again", batch=result.batch)
            self.last_error = None
        if self._drained is not None and not self._backlogged:
            self._drained.set()
            self._drained = None
        for listener in self.on_commit:
            try:
                listener(result)
            except Exception as exc:  # a listener's bug must not fail the commit
                log.error("commit listener failed", error=str(exc)[:500])
        return True

    def _give_back(self, part: _Pending) -> None:
        """Put a failed batch back in front of what arrived meanwhile (newer states win)."""
        newer = self._pending
        states = {**part.states, **newer.states}
        for source in newer.state_factories:
            # A newer live state supersedes the failed batch's encoded one.
            states.pop(source, None)
        merged = _Pending(
            results=part.results + newer.results,
            events=part.events + newer.events,
            states=states,
            state_factories=dict(newer.state_factories),
            alerts=part.alerts + newer.alerts,
            components={**part.components, **newer.components},
            since=min((t for t in (part.since, newer.since) if t is not None), default=None),
            state_since=min(
                (t for t in (part.state_since, newer.state_since) if t is not None), default=None
            ),
        )
        self._pending = merged
        self._inflight = None

    async def _prune(self) -> None:
        assert self.prune_interval is not None
        self._next_prune = self._clock() + self.prune_interval
        async with self._lock():
            with anyio.CancelScope(shield=True):
                try:
                    result = await anyio.to_thread.run_sync(self.store.prune, self._prune_now())
                except Exception as exc:
                    self.prune_failures += 1
                    log.error("pruning old rows failed", error=str(exc)[:500])
                    return
        self.prunes += 1
        self.last_prune = result
        if result.events or result.unattributed or result.hourly or result.daily or result.alerts:
            log.info(
                "pruned old rows",
                events=result.events,
                unattributed=result.unattributed,
                hourly=result.hourly,
                daily=result.daily,
                alerts=result.alerts,
                freed_pages=result.freed_pages,
                ms=round(result.duration_ms, 1),
            )

    # -- flushing and closing -------------------------------------------------------------

    async def flush(self, *, retry_for: float | None = None) -> None:
        """Commit everything submitted so far, with the engine state.

        Failed commits are retried for ``retry_for`` seconds (``None``: forever); then
        :class:`StoreError` is raised (the data stays pending; :meth:`run` keeps retrying).
        A commit in progress is never interrupted, not even by cancellation.
        """
        with anyio.CancelScope(shield=True):
            deadline = None if retry_for is None else self._clock() + retry_for
            delay = self.retry_initial
            while True:
                if await self._commit(force_engine=True):
                    if self._pending.empty:
                        return
                    continue  # more arrived during the commit
                if deadline is not None and self._clock() + delay > deadline:
                    raise StoreError(
                        f"could not save {self.pending} accounted results to "
                        f"{self.store.path}: {self.last_error}"
                    )
                await anyio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def aclose(self, *, retry_for: float | None = 30.0) -> None:
        """Flush everything (shielded from cancellation) and stop :meth:`run`.

        Does not close the store. Later :meth:`submit` calls raise :class:`StoreError`.
        """
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.flush(retry_for=retry_for)
            finally:
                self._closing = True
                self._closed = True
                self._poke()
                if self._drained is not None:
                    self._drained.set()
