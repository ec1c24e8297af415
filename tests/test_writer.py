"""Tests for the async batching writer (``cco_cost_monitor.writer``)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
import pytest

from cco_cost_monitor.engine import Engine
from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.reconciler import AccountedEvent, Accounting
from cco_cost_monitor.store import AlertRecord, Batch, CommitResult, PruneResult, Store
from cco_cost_monitor.writer import StoreWriter
from tests.builders import accounted_event

T0 = datetime(2025, 11, 17, 12, 0, tzinfo=UTC)


def event(index: int, cost: float = 0.01) -> AccountedEvent:
    return accounted_event(
        key=f"key-{index}", occurred_at=T0 + timedelta(seconds=index), cost=cost, price_version="v"
    )


def result(index: int, *, first_contact: bool = False) -> Accounting:
    events = () if first_contact else (event(index),)
    return Accounting("default", T0 + timedelta(seconds=index), events, first_contact=first_contact)


def empty_engine() -> dict[str, Any]:
    return {}


class StubStore:
    """A store whose commits take ``delay`` seconds and fail ``fail`` times first."""

    def __init__(self, delay: float = 0.0, fail: int = 0) -> None:
        self.path = Path("stub.db")
        self.delay = delay
        self.fail = fail
        self.batches: list[Batch] = []
        self.prunes: list[datetime] = []
        self.lock = threading.Lock()

    def commit_batch(self, batch: Batch) -> CommitResult:
        time.sleep(self.delay)
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise StoreError("database stub.db: the disk is full")
            self.batches.append(batch)
            events = sum(len(item.events) for item in batch.results)
            return CommitResult(
                len(self.batches), events, 0, 0, len(batch.alerts), batch.engine is not None, 1.0
            )

    def prune(self, now: datetime) -> PruneResult:
        self.prunes.append(now)
        return PruneResult(0, 0, 0, 0, 0, 0, 0.1)

    @property
    def results(self) -> list[Accounting]:
        return [item for batch in self.batches for item in batch.results]


def make_writer(stub: StubStore, **options: Any) -> StoreWriter:
    options.setdefault("prune_interval", None)
    return StoreWriter(cast(Store, stub), **options)


@asynccontextmanager
async def running(writer: StoreWriter) -> AsyncIterator[StoreWriter]:
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        try:
            yield writer
        finally:
            await writer.aclose()


def commits_reached(writer: StoreWriter, count: int) -> Callable[[], bool]:
    return lambda: writer.commits >= count


async def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


async def test_submit_never_waits_for_a_slow_disk() -> None:
    """While a slow commit is in flight, submit() returns at once; all results land in order."""
    stub = StubStore(delay=0.3)
    async with running(make_writer(stub, max_delay=0.01)) as writer:
        writer.submit(result(0), {"n": 0}, empty_engine)
        await wait_for(lambda: writer._inflight is not None)
        started = time.perf_counter()
        for index in range(1, 101):
            writer.submit(result(index), {"n": index}, empty_engine)
        assert time.perf_counter() - started < 0.1
        assert writer.pending == 101
        assert writer.lag_seconds > 0
    assert [item.events[0].key for item in stub.results] == [f"key-{i}" for i in range(101)]
    assert writer.pending == 0
    assert writer.lag_seconds == 0.0
    # Coalesced: the second batch holds the 100 later results and only the latest state.
    assert len(stub.batches[1].results) == 100
    assert orjson.loads(cast(bytes, stub.batches[1].source_states["default"])) == {"n": 100}


async def test_aclose_flushes_everything_to_disk(tmp_path: Path) -> None:
    """Everything submitted before aclose() is in the database afterwards, with the engine."""
    path = tmp_path / "monitor.db"
    with Store.open(path) as store:
        writer = StoreWriter(store, max_delay=3600, prune_interval=None)
        async with running(writer):
            for index in range(50):
                writer.submit(result(index), {"n": index}, lambda: {"engine": "final"})
            alert = AlertRecord("threshold", "50% of today's budget", T0, "daily", 0.5)
            writer.submit_alert(alert)
            writer.submit_state("budgets", {"fired": [0.5]})
            assert writer.commits == 0
    with Store.open(path) as fresh:
        restored = fresh.load()
    assert len(restored.events) == 50
    assert restored.source_states == {"default": {"n": 49}}
    assert restored.engine == {"engine": "final"}
    assert [item.message for item in restored.alerts] == ["50% of today's budget"]
    assert restored.component_states == {"budgets": {"fired": [0.5]}}


async def test_commits_within_max_delay() -> None:
    """A lone result waits for max_delay (to batch with others), then commits unflushed."""
    stub = StubStore()
    async with running(make_writer(stub, max_delay=0.4)) as writer:
        submitted = time.monotonic()
        writer.submit(result(1), {}, empty_engine)
        await anyio.sleep(0.1)
        assert writer.commits == 0  # not before max_delay
        await wait_for(lambda: writer.commits == 1, timeout=2.0)
        waited = time.monotonic() - submitted
        assert 0.35 <= waited <= 0.4 + 1.0  # max_delay, plus scheduling on a busy machine
        assert writer.pending == 0
        assert writer.last_commit_ms is not None


async def test_max_batch_commits_before_the_delay() -> None:
    """max_batch pending results are committed at once, long before max_delay."""
    stub = StubStore()
    async with running(make_writer(stub, max_delay=3600, max_batch=5)) as writer:
        for index in range(5):
            writer.submit(result(index), {}, empty_engine)
        await wait_for(lambda: writer.commits == 1, timeout=1.0)
        assert len(stub.results) == 5


async def test_failed_commits_are_retried_without_losing_anything() -> None:
    """A failing disk is counted and retried; the kept batch is merged with later results."""
    stub = StubStore(fail=2)
    writer = make_writer(stub, max_delay=0.01, retry_initial=0.02)
    async with running(writer):
        writer.submit(result(1), {"n": 1}, empty_engine)
        await wait_for(lambda: writer.failures >= 1)
        assert writer.last_error is not None
        assert "disk is full" in writer.last_error
        writer.submit(result(2), {"n": 2}, empty_engine)
        await wait_for(lambda: writer.commits == 1)
    assert writer.failures == 2
    assert writer.last_error is None
    assert [item.events[0].key for item in stub.results] == ["key-1", "key-2"]
    assert orjson.loads(cast(bytes, stub.batches[0].source_states["default"])) == {"n": 2}


async def test_a_live_state_submitted_during_a_failed_commit_is_the_one_saved() -> None:
    """A state factory submitted while a commit is failing survives the merge and wins."""
    stub = StubStore(delay=0.3, fail=1)
    writer = make_writer(stub, max_delay=0.01, retry_initial=0.02)
    live = {"n": 1}
    async with running(writer):
        writer.submit(result(1), lambda: dict(live), empty_engine)
        await anyio.sleep(0.1)  # the first batch is cut and its commit is in flight
        live["n"] = 2
        writer.submit(result(2), lambda: dict(live), empty_engine)
        await wait_for(lambda: writer.commits == 1)
    assert writer.failures == 1
    assert orjson.loads(cast(bytes, stub.batches[0].source_states["default"])) == {"n": 2}
    assert [item.events[0].key for item in stub.results] == ["key-1", "key-2"]


async def test_aclose_gives_up_after_retry_for_with_a_clear_error() -> None:
    """If the disk stays broken, aclose() raises StoreError after retry_for instead of hanging."""
    stub = StubStore(fail=10_000)
    writer = make_writer(stub, retry_initial=0.01, retry_max=0.02)
    writer.submit(result(1), {}, empty_engine)
    with pytest.raises(StoreError, match="could not save 1 accounted results"):
        await writer.aclose(retry_for=0.1)
    assert writer.failures >= 2


async def test_repeated_snapshots_only_update_state_lazily() -> None:
    """Results that counted nothing do not cause commits before state_interval; flush saves them."""
    stub = StubStore()
    async with running(make_writer(stub, max_delay=0.01, state_interval=3600)) as writer:
        for index in range(5):
            writer.submit(Accounting("default", T0), {"n": index}, empty_engine)
        await anyio.sleep(0.1)
        assert writer.commits == 0
        assert writer.pending == 0
        await writer.flush()
        assert writer.commits == 1
    assert stub.batches[0].results == []
    assert orjson.loads(cast(bytes, stub.batches[0].source_states["default"])) == {"n": 4}


async def test_throttle_blocks_ingestion_until_the_disk_catches_up() -> None:
    """Past max_pending, throttle() waits for a commit instead of letting memory grow."""
    stub = StubStore(delay=0.2)
    async with running(make_writer(stub, max_delay=0.01, max_batch=2, max_pending=4)) as writer:
        await writer.throttle()  # nothing pending: returns at once
        for index in range(4):
            writer.submit(result(index), {}, empty_engine)
        started = time.perf_counter()
        await writer.throttle()
        assert time.perf_counter() - started > 0.05
        assert writer.pending < 4


async def test_throttle_also_counts_events() -> None:
    """A few big results (a proxy's 20-event windows) throttle at max_pending_events, long
    before max_pending results; one-event results are bounded by max_pending alone."""
    stub = StubStore(delay=0.2)
    options = {"max_delay": 0.01, "max_batch": 2, "max_pending": 100, "max_pending_events": 30}
    async with running(make_writer(stub, **options)) as writer:
        wide = Accounting("default", T0, tuple(event(index) for index in range(20)))
        writer.submit(wide, {}, empty_engine)
        started = time.perf_counter()
        await writer.throttle()  # 20 events < 30
        assert time.perf_counter() - started < 0.05
        writer.submit(wide, {}, empty_engine)
        await writer.throttle()  # 40 events >= 30: waits for the disk
        assert time.perf_counter() - started > 0.05
        assert writer.pending < 2
        await writer.flush()
        for index in range(29):
            writer.submit(result(index), {}, empty_engine)
        started = time.perf_counter()
        await writer.throttle()  # 29 one-event results < 30: no wait
        assert time.perf_counter() - started < 0.05


async def test_engine_state_is_periodic_and_restores_exactly_after_a_crash(tmp_path: Path) -> None:
    """The engine state is saved on first contact, then at most every engine_interval; a Store
    opened before aclose (as after kill -9) still restores the engine exactly by replay."""
    path = tmp_path / "monitor.db"
    engine = Engine()
    with Store.open(path) as store:
        writer = StoreWriter(store, max_delay=0.01, engine_interval=3600, prune_interval=None)
        async with running(writer):
            for index in range(6):
                accounting = result(index, first_contact=index == 0)
                engine.record(accounting)
                writer.submit(accounting, {"n": index}, engine.to_dict)
                await wait_for(commits_reached(writer, index + 1))
            assert writer.last_result is not None
            assert not writer.last_result.engine_saved
            with Store.open(path) as crashed_view:
                restored = crashed_view.load()
            assert restored.engine_batch == 1
            assert len(restored.engine_replay) == 5
            copy = Engine()
            restored.restore_engine(copy)
            assert copy.to_dict() == engine.to_dict()
        assert writer.last_result is not None
        assert writer.last_result.engine_saved  # aclose() saves the engine state
        assert store.load().engine_replay == []


async def test_aclose_flushes_even_when_the_service_is_cancelled() -> None:
    """On SIGTERM the task group is cancelled; aclose() in a finally still commits everything."""
    stub = StubStore(delay=0.05)
    writer = make_writer(stub, max_delay=3600)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(writer.run)
            try:
                writer.submit(result(1), {}, empty_engine)
                scope.cancel()
                await anyio.sleep(10)
            finally:
                await writer.aclose()
    assert [item.events[0].key for item in stub.results] == ["key-1"]
    with pytest.raises(StoreError, match="closed"):
        writer.submit(result(2), {}, empty_engine)


async def test_prune_runs_periodically_in_the_background() -> None:
    """The writer calls Store.prune every prune_interval seconds."""
    stub = StubStore()
    writer = make_writer(stub, prune_interval=0.03, first_prune_delay=0.0)
    async with running(writer):
        await wait_for(lambda: len(stub.prunes) >= 2)
    assert writer.prunes >= 2
    assert writer.stats().prune_failures == 0
