"""``GET /api/stream`` (:mod:`cco_cost_monitor.stream`) and the sequence it rests on.

In-process tests run the stream handler on a real aiohttp server over a real SQLite store
(events committed with :meth:`Store.commit_batch`); the last test runs the real daemon
against the real simulator and resumes across a restart of the monitor.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cco_cost_monitor.reconciler import Accounting
from cco_cost_monitor.store import Batch, CommitResult, Store
from cco_cost_monitor.stream import StreamHub, install
from tests.builders import accounted_event
from tests.helpers_obs import get, monitor, simulator, wait_until

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def commit(store: Store, first: int, count: int, at: datetime = T0) -> CommitResult:
    events = tuple(
        accounted_event(key=f"k{i}", occurred_at=at + timedelta(seconds=i), cost=0.01 * i)
        for i in range(first, first + count)
    )
    return store.commit_batch(Batch([Accounting("default", at, events)]))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "monitor.db") as opened:
        yield opened


# -- the sequence ----------------------------------------------------------------------


def test_sequence_follows_commit_order_and_survives_reopening(tmp_path: Path) -> None:
    """Ids grow in commit order (not event time) and are the same after a reopen."""
    path = tmp_path / "monitor.db"
    with Store.open(path) as store:
        commit(store, 0, 3, T0)
        commit(store, 3, 2, T0 - timedelta(days=1))  # older events, committed later
        first = store.events_after(0, 100)
    assert [event.key for _, event in first] == ["k0", "k1", "k2", "k3", "k4"]
    ids = [seq for seq, _ in first]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    with Store.open(path) as store:
        assert store.events_after(0, 100) == first
        assert store.last_event_seq() == ids[-1]
        assert [event.key for _, event in store.events_after(ids[1], 2)] == ["k2", "k3"]


def test_prune_never_lets_an_id_be_handed_out_again(store: Store) -> None:
    """Pruning every old event keeps the newest row, so the next event gets a new id."""
    old = T0 - timedelta(days=400)
    commit(store, 0, 5, old)
    store.commit_batch(Batch(engine={"e": 1}))  # the engine state covers the rows
    newest = store.last_event_seq()
    result = store.prune(T0)
    assert result.events == 4
    commit(store, 10, 1, T0)
    assert store.last_event_seq() > newest
    assert [event.key for _, event in store.events_after(newest, 10)] == ["k10"]


# -- the stream, in process -----------------------------------------------------------


async def stream_app(hub: StreamHub) -> TestClient[Any, Any]:
    app = web.Application()
    install(app, hub)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(store: Store) -> AsyncIterator[tuple[TestClient[Any, Any], StreamHub]]:
    hub = StreamHub(lambda: store, page=3, keepalive=0.2, write_timeout=0.5)
    test_client = await stream_app(hub)
    try:
        yield test_client, hub
    finally:
        await test_client.close()


async def read_events(response: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Parse ``count`` SSE events (comments kept as ``{"comment": ...}``) from ``response``."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with asyncio.timeout(timeout):
        while len(out) < count:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith(":"):
                out.append({"comment": line[1:].strip()})
            elif not line:
                if current:
                    out.append(current)
                    current = {}
            else:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
    return out


def accounted(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [
        (int(e["id"]), orjson.loads(e["data"])["key"])
        for e in events
        if e.get("event") == "accounted"
    ]


async def test_live_events_arrive_with_ids_and_the_api_shape(
    client: tuple[TestClient[Any, Any], StreamHub], store: Store
) -> None:
    test_client, hub = client
    commit(store, 0, 2)  # before connecting: not sent without Last-Event-ID
    response = await test_client.get("/api/stream")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    head = await read_events(response, 2)
    assert {"retry": "2000"} in head
    hub.notify(commit(store, 2, 2))
    events = [e for e in await read_events(response, 4) if "event" in e]
    assert [key for _, key in accounted(events)] == ["k2", "k3"]
    stored = dict(store.events_after(0, 10))
    for event in events:
        assert orjson.loads(event["data"]) == stored[int(event["id"])].as_dict()
    response.close()


async def test_clients_at_the_newest_event_share_one_read_per_commit(store: Store) -> None:
    """Five live clients, one commit: one database read and encoding, five deliveries."""
    hub = StreamHub(lambda: store, keepalive=30)
    test_client = await stream_app(hub)
    try:
        responses = [await test_client.get("/api/stream") for _ in range(5)]
        for response in responses:
            await read_events(response, 2)  # the head: they are all waiting now
        await asyncio.sleep(0.1)
        reads = hub.reads
        hub.notify(commit(store, 0, 2))
        for response in responses:
            events = [e for e in await read_events(response, 2) if "event" in e]
            assert [key for _, key in accounted(events)] == ["k0", "k1"]
            response.close()
        assert hub.reads - reads == 1
    finally:
        await test_client.close()


async def test_a_shared_read_whose_client_left_is_read_again_for_the_others(
    store: Store,
) -> None:
    """The client whose task read a shared page is cancelled: the clients waiting for the
    same page are not cancelled with it, they read it themselves."""
    commit(store, 0, 2)
    gate = threading.Event()

    class Slow:
        def events_after(self, seq: int, limit: int) -> Any:
            gate.wait(5)
            return store.events_after(seq, limit)

    hub = StreamHub(lambda: store)
    first = asyncio.create_task(hub._page(Slow(), 0))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    second = asyncio.create_task(hub._page(Slow(), 0))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    first.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    last, count, chunk = await asyncio.wait_for(second, 5)
    assert count == 2
    assert b"id: %d" % last in chunk


async def test_last_event_id_resumes_from_the_database_in_pages(
    client: tuple[TestClient[Any, Any], StreamHub], store: Store
) -> None:
    """Everything after the id, once, in order, across pages of 3."""
    test_client, _ = client
    commit(store, 0, 10)
    ids = [seq for seq, _ in store.events_after(0, 100)]
    response = await test_client.get("/api/stream", headers={"Last-Event-ID": str(ids[2])})
    events = [e for e in await read_events(response, 12) if "event" in e]
    assert accounted(events) == [(seq, f"k{i}") for i, seq in enumerate(ids) if i > 2]
    response.close()


async def test_keep_alive_comments_flow_while_idle(
    client: tuple[TestClient[Any, Any], StreamHub],
) -> None:
    test_client, _ = client
    response = await test_client.get("/api/stream")
    lines = await read_events(response, 4, timeout=3)
    assert {"comment": "keep-alive"} in lines
    response.close()


async def test_bad_and_unknown_ids(
    client: tuple[TestClient[Any, Any], StreamHub], store: Store
) -> None:
    """A non-integer id is a 400; an id beyond the database gets a reset, then live events."""
    test_client, hub = client
    bad = await test_client.get("/api/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status == 400
    commit(store, 0, 1)
    response = await test_client.get("/api/stream", headers={"Last-Event-ID": "999"})
    first = [e for e in await read_events(response, 3) if "event" in e]
    assert first[0]["event"] == "reset"
    assert orjson.loads(first[0]["data"])["last_event_id"] == store.last_event_seq()
    hub.notify(commit(store, 1, 1))
    later = [e for e in await read_events(response, 2) if "event" in e]
    assert [key for _, key in accounted(later)] == ["k1"]
    response.close()


async def test_concurrent_clients_are_bounded(store: Store) -> None:
    hub = StreamHub(lambda: store, max_clients=2, keepalive=0.2)
    test_client = await stream_app(hub)
    try:
        open_ = [await test_client.get("/api/stream") for _ in range(2)]
        assert [r.status for r in open_] == [200, 200]
        third = await test_client.get("/api/stream")
        assert third.status == 503
        assert third.headers["Retry-After"] == "5"
        assert hub.refused == 1
        for response in open_:
            response.close()
        await asyncio.sleep(0.5)  # the handlers notice at their next keep-alive
        assert hub.clients == 0
        again = await test_client.get("/api/stream")
        assert again.status == 200
        again.close()
    finally:
        await test_client.close()


async def test_a_client_that_stops_reading_is_dropped_not_buffered(store: Store) -> None:
    """A reader that takes nothing: the server's buffer stays at one page and the client
    is dropped after the write timeout; nothing is queued for it meanwhile."""
    for batch in range(20):
        commit(store, batch * 500, 500)  # ~4 MB of SSE
    hub = StreamHub(lambda: store, page=100, keepalive=5, write_timeout=0.5)
    test_client = await stream_app(hub)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", test_client.port))  # type: ignore[arg-type]
        sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n")
        started = time.monotonic()
        while hub.dropped == 0 and time.monotonic() - started < 10:
            await asyncio.sleep(0.05)
        assert hub.dropped == 1
        assert hub.sent < 10_000  # it got only what fitted in the socket buffers
        await asyncio.sleep(0.1)
        assert hub.clients == 0
        sock.close()
    finally:
        await test_client.close()


async def test_shutdown_ends_open_streams_at_once(store: Store) -> None:
    """A server shutdown does not wait for open streams (aiohttp would wait 60 s)."""
    hub = StreamHub(lambda: store, keepalive=30)
    test_client = await stream_app(hub)
    reader, writer = await asyncio.open_connection("127.0.0.1", test_client.port)
    writer.write(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    while hub.clients == 0:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    async with asyncio.timeout(10):
        await test_client.server.close()
    assert time.monotonic() - started < 5
    assert hub.clients == 0
    writer.close()
    await test_client.close()


# -- against the real daemon -----------------------------------------------------------


def sse_lines(url: str, headers: dict[str, str], until: int) -> list[tuple[int, str]]:
    """(id, key) of accounted events read from ``url`` until id ``until`` is reached."""
    out: list[tuple[int, str]] = []
    seq = 0
    with httpx.stream("GET", url, headers=headers, timeout=20) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: "):
                out.append((seq, orjson.loads(line[6:])["key"]))
                if seq >= until:
                    break
    return out


@pytest.mark.slow
def test_stream_resumes_across_a_monitor_restart_exactly_once(tmp_path: Path) -> None:
    """Read part of the stream, stop the monitor, let traffic go on, start it again and
    resume with Last-Event-ID: the two parts are every stored event, once, in order."""
    with simulator(tmp_path) as (_, sim_url):
        source = f"{sim_url}/api/stream"
        with monitor(tmp_path, source) as (_, url):
            wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["events"] >= 5, 20)
            first = sse_lines(f"{url}/api/stream", {"Last-Event-ID": "0"}, 5)
        time.sleep(1.0)  # traffic the monitor does not see live
        with monitor(tmp_path, source) as (_, url):
            resume_at = first[2][0]
            wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["events"] >= 15, 20)
            with Store.open(tmp_path / "monitor-state" / "monitor.db", readonly=True) as db:
                stored = [(seq, event.key) for seq, event in db.events_after(0, 10_000)]
            newest = stored[-1][0]
            second = sse_lines(f"{url}/api/stream", {"Last-Event-ID": str(resume_at)}, newest)
    assert first[:3] + second == stored[: len(first[:3]) + len(second)]
    assert second[-1][0] == newest
    keys = [key for _, key in first[:3] + second]
    assert len(keys) == len(set(keys))
