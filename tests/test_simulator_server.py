"""Tests of the simulator on real loopback sockets: bytes on the wire, faults, ledger."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import httpx
import orjson
import pytest

from cco_cost_monitor.errors import StartupError
from cco_cost_monitor.simulator import (
    Simulator,
    SimulatorSettings,
    TrafficProfile,
    classic,
    running,
    serve,
)

FIXTURES = Path(__file__).parent / "fixtures"


def plain(**fields: Any) -> TrafficProfile:
    """A traffic profile without the realistic mode's odd records (twins, orphans, failures)."""
    return TrafficProfile(identical_rate=0.0, orphan_override_rate=0.0, failed_rate=0.0, **fields)


# The classic mode (realistic behaviours off): these tests pin the exact bytes and totals
# of each feature; tests/test_simulator_realistic.py covers the realistic mode.
BASE = classic(
    SimulatorSettings(port=0, interval=0.05, keepalive=30.0, seed=11, traffic=plain(rate=40.0))
)


class FrameReader:
    """Reads raw SSE frames (bytes up to and including the blank line) off a response."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buf = bytearray()
        self._scanned = 0

    async def next(self, timeout: float = 3.0) -> bytes:
        """The next frame; raises StopAsyncIteration at the end of the stream."""
        while (end := self._buf.find(b"\n\n", self._scanned)) < 0:
            self._scanned = max(0, len(self._buf) - 1)
            self._buf += await asyncio.wait_for(anext(self._chunks), timeout)
        frame = bytes(self._buf[: end + 2])
        del self._buf[: end + 2]
        self._scanned = 0
        return frame

    async def snapshot(self, timeout: float = 3.0) -> dict[str, Any]:
        """The next analytics snapshot, skipping comments and other frames."""
        while True:
            frame = await self.next(timeout)
            if is_snapshot(frame):
                return data_of(frame)


def is_snapshot(frame: bytes) -> bool:
    """Whether a frame is a well-formed analytics snapshot."""
    if not frame.startswith(b"event:analytics\ndata:{"):
        return False
    try:
        data_of(frame)
    except orjson.JSONDecodeError:
        return False
    return True


async def read_to_end(reader: FrameReader) -> list[bytes]:
    """Every frame until the server ends the stream."""
    frames: list[bytes] = []
    try:
        while True:
            frames.append(await reader.next())
    except StopAsyncIteration:
        return frames


def data_of(frame: bytes) -> dict[str, Any]:
    """The JSON of a frame's single data line."""
    lines = frame.rstrip(b"\n").split(b"\n")
    data = [line for line in lines if line.startswith(b"data:")]
    assert len(data) == 1, frame[:200]
    value: dict[str, Any] = orjson.loads(data[0][5:])
    return value


@asynccontextmanager
async def stream(
    client: httpx.AsyncClient, url: str
) -> AsyncIterator[tuple[httpx.Response, FrameReader]]:
    async with client.stream("GET", url) as response:
        yield response, FrameReader(response)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


# Loading the CA bundle takes ~0.2 s per client; every URL here is plain HTTP on loopback.
_TLS = ssl.create_default_context()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, verify=_TLS) as c:
        yield c


async def post(client: httpx.AsyncClient, sim: Simulator, path: str, body: object) -> Any:
    response = await client.post(sim.url + path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def ledger(client: httpx.AsyncClient, sim: Simulator) -> dict[str, Any]:
    response = await client.get(sim.url + "/_sim/ledger")
    value: dict[str, Any] = response.json()
    return value


class TestWire:
    async def test_snapshot_on_connect_with_the_proxys_framing(
        self, client: httpx.AsyncClient
    ) -> None:
        """The first snapshot arrives at once, framed byte for byte like the fixtures."""
        fixture = (FIXTURES / "analytics_active.sse").read_bytes()
        fixture_frame = fixture.split(b"\n\n")[0] + b"\n\n"
        async with running(replace(BASE, interval=30.0)) as sim:
            started = time.monotonic()
            async with stream(client, sim.stream_url) as (response, reader):
                frame = await reader.next()
                assert time.monotonic() - started < 2.0
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                assert response.headers["cache-control"] == "no-cache"
        prefix = b'event:analytics\ndata:{"project":{"name":"Claude Orchestra","cost":'
        assert frame.startswith(prefix)
        assert fixture_frame.startswith(prefix)
        assert frame.count(b"\n") == fixture_frame.count(b"\n") == 3
        assert frame.endswith(b"}}\n\n")
        assert fixture_frame.endswith(b"}}\n\n")
        assert b"\nid:" not in frame
        assert b"\nretry:" not in frame
        body = data_of(frame)
        assert list(body) == list(data_of(fixture_frame))
        assert body["machine"]["process_count"] == 1

    async def test_snapshots_keep_coming_every_interval(self, client: httpx.AsyncClient) -> None:
        """Snapshots follow every interval, with growing totals and no keep-alives."""
        async with running(BASE) as sim, stream(client, sim.stream_url) as (_, reader):
            frames = [await reader.next() for _ in range(8)]
        assert all(f.startswith(b"event:analytics\ndata:{") for f in frames)
        calls = [data_of(f)["project"]["calls"] for f in frames]
        assert calls == sorted(calls)
        assert calls[-1] > calls[0]
        stamps = [data_of(f)["project"]["last_updated"] for f in frames]
        assert len(set(stamps)) == len(stamps)

    async def test_keep_alive_after_silence(self, client: httpx.AsyncClient) -> None:
        """Without an event for ``keepalive`` seconds, a ``:keep-alive`` comment is sent."""
        settings = replace(BASE, interval=30.0, keepalive=0.05)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            await reader.snapshot()
            assert await reader.next() == b":keep-alive\n\n"
            assert await reader.next() == b":keep-alive\n\n"

    async def test_spaced_early_format(self, client: httpx.AsyncClient) -> None:
        """``early`` + ``spaced`` writes ``data: `` and six-field events, like its fixture."""
        settings = replace(BASE, format="early", spaced=True)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            frame = await reader.next()
            while b'"activity":[]' in frame:
                frame = await reader.next()
        assert frame.startswith(b"event: analytics\ndata: {")
        body = orjson.loads(frame.split(b"data: ", 1)[1])
        assert all(len(e) == 6 for e in body["activity"])
        assert "chart_data" not in body

    async def test_old_format(self, client: httpx.AsyncClient) -> None:
        """``old`` sends cumulative cache/models/totals and no events."""
        async with running(replace(BASE, format="old")) as sim:
            async with stream(client, sim.stream_url) as (_, reader):
                body = data_of(await reader.next())
                while not body["models"]:
                    body = data_of(await reader.next())
            truth = await ledger(client, sim)
        assert list(body) == ["cache", "models", "totals"]
        assert body["totals"]["requests"] <= truth["true_calls"]
        assert body["totals"]["requests"] > 0

    async def test_pause_then_totals_match_the_ledger(self, client: httpx.AsyncClient) -> None:
        """With traffic paused, the snapshots and the ledger agree exactly."""
        async with running(BASE) as sim, stream(client, sim.stream_url) as (_, reader):
            first = await reader.snapshot()
            await asyncio.sleep(0.3)
            answer = await post(client, sim, "/_sim/traffic", {"rate": 0})
            assert answer["traffic"]["rate"] == 0
            truth = await ledger(client, sim)
            last = await reader.snapshot()
            while last["project"]["calls"] != truth["proxy_calls"]:
                last = await reader.snapshot()
            for _ in range(3):
                assert (await reader.snapshot())["project"] == last["project"] | {
                    "last_updated": ANY
                }
        assert truth["proxy_calls"] == last["project"]["calls"] == truth["true_calls"]
        assert truth["proxy_cost"] == last["project"]["cost"] == truth["true_cost_usd"]
        baseline = truth["connections"][0]["first_snapshot"]
        assert baseline["proxy_calls"] == first["project"]["calls"]
        assert baseline["proxy_cost"] == first["project"]["cost"]
        growth = truth["true_cost_usd"] - baseline["true_cost_usd"]
        assert growth == pytest.approx(last["project"]["cost"] - first["project"]["cost"])
        assert growth > 0
        assert sum(m["requests"] for m in truth["true_by_model"].values()) == truth["true_calls"]
        assert truth["events_generated"] >= truth["true_calls"] > 0

    async def test_connections_are_listed_in_order(self, client: httpx.AsyncClient) -> None:
        """Each stream connection's first snapshot and snapshot count are in the ledger."""
        async with running(BASE) as sim:
            for _ in range(3):
                async with stream(client, sim.stream_url) as (_, reader):
                    for _ in range(3):
                        await reader.snapshot()
            await asyncio.sleep(0.1)
            truth = await ledger(client, sim)
        connections = truth["connections"]
        assert [c["index"] for c in connections] == [0, 1, 2]
        assert all(c["snapshots_sent"] >= 3 for c in connections)
        assert all(c["closed_at"] is not None for c in connections)
        calls = [c["first_snapshot"]["true_calls"] for c in connections]
        assert calls == sorted(calls)
        assert truth["snapshots_sent"] >= 9

    async def test_control_endpoints_refuse_bad_requests(self, client: httpx.AsyncClient) -> None:
        """Unknown faults, bad JSON and bad traffic settings get 400 with a reason."""
        async with running(BASE) as sim:
            for path, content in [
                ("/_sim/fault", b'{"kind": "meteor"}'),
                ("/_sim/fault", b"{not json"),
                ("/_sim/traffic", b'{"rate": -1}'),
                ("/_sim/traffic", b'{"speed": 1}'),
                ("/_sim/traffic", b'{"rate": "fast"}'),
                ("/_sim/traffic", b'{"unpriced_model": 5}'),
            ]:
                response = await client.post(sim.url + path, content=content)
                assert response.status_code == 400, (path, content)
                assert response.json()["error"]


class TestFaults:
    @pytest.mark.parametrize(("kind", "status"), [("http_500", 500), ("http_401", 401)])
    async def test_http_errors_for_the_next_attempts(
        self, client: httpx.AsyncClient, kind: str, status: int
    ) -> None:
        """The next N connection attempts get the status with a JSON body, then SSE again."""
        async with running(BASE) as sim:
            await post(client, sim, "/_sim/fault", {"kind": kind, "count": 2})
            for _ in range(2):
                response = await client.get(sim.stream_url)
                assert response.status_code == status
                assert response.headers["content-type"].startswith("application/json")
                assert response.json()["error"]
            async with stream(client, sim.stream_url) as (response, reader):
                assert response.status_code == 200
                await reader.snapshot()

    async def test_wrong_content_type(self, client: httpx.AsyncClient) -> None:
        """wrong_content_type answers 200 with an HTML page instead of SSE."""
        async with running(BASE) as sim:
            await post(client, sim, "/_sim/fault", {"kind": "wrong_content_type"})
            response = await client.get(sim.stream_url)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")

    async def test_restart(self, client: httpx.AsyncClient, tmp_path: Path) -> None:
        """A restart follows a snapshot, refuses connections, then reloads lower totals."""
        path = tmp_path / "ledger.jsonl"
        settings = replace(BASE, start_uptime=1000, down_seconds=0.3, ledger_path=path)
        async with running(settings) as sim:
            port = sim.port
            async with stream(client, sim.stream_url) as (_, reader):
                before = await reader.snapshot()
                assert before["machine"]["uptime"] >= 1000
                await asyncio.sleep(0.3)
                await post(client, sim, "/_sim/fault", {"kind": "restart"})
                tail = [f for f in await read_to_end(reader) if f.startswith(b"event:analytics")]
                last = data_of(tail[-1]) if tail else before
            with pytest.raises(httpx.ConnectError):
                await client.get(sim.url + "/health")
            await sim.wait_up()
            assert sim.port == port
            async with stream(client, sim.stream_url) as (_, reader):
                after = await reader.snapshot()
            truth = await ledger(client, sim)
        assert after["machine"]["uptime"] < 5
        assert after["project"]["calls"] < last["project"]["calls"]
        assert truth["restarts"] == 1
        records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        restart = next(r for r in records if r["kind"] == "restart")
        # Every call before the restart was in the last snapshot the client got.
        assert restart["calls_before"] == last["project"]["calls"]
        assert restart["cost_before"] == last["project"]["cost"]
        assert restart["reloaded_calls"] == 0
        assert truth["lost_calls"] == restart["lost_calls"] > 0
        assert truth["true_calls"] == truth["proxy_calls"] + truth["lost_calls"]
        events = [r for r in records if r["kind"] == "event"]
        assert len(events) == truth["events_generated"]
        assert sum(r["kind"] == "connection" for r in records) == 2

    async def test_restart_keeps_the_saved_totals(self, client: httpx.AsyncClient) -> None:
        """Totals saved before a restart survive it; only the unsaved tail is lost."""
        settings = replace(BASE, save_interval=0.2, history_cost=12.5, history_calls=100)
        async with running(settings) as sim:
            await asyncio.sleep(0.5)
            await post(client, sim, "/_sim/traffic", {"rate": 0})
            await asyncio.sleep(0.3)
            saved = (await ledger(client, sim))["proxy_calls"]
            await post(client, sim, "/_sim/fault", {"kind": "restart", "down_seconds": 0.05})
            await eventually(lambda: asyncio.sleep(0, result=not sim.is_up))
            await sim.wait_up()
            async with stream(client, sim.stream_url) as (_, reader):
                after = await reader.snapshot()
        assert after["project"]["calls"] == saved > 100
        assert after["project"]["cost"] > 12.5
        assert after["activity"] == []

    async def test_burst_overflows_the_window(self, client: httpx.AsyncClient) -> None:
        """A burst of N>20 requests inside one interval: calls jump by N, 20 are visible."""
        settings = replace(BASE, traffic=plain(rate=0.0), interval=0.1)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            before = await reader.snapshot()
            await post(client, sim, "/_sim/fault", {"kind": "burst", "count": 45})
            after = await reader.snapshot()
            while after["project"]["calls"] == before["project"]["calls"]:
                after = await reader.snapshot()
        assert after["project"]["calls"] - before["project"]["calls"] == 45
        assert len(after["activity"]) == 20

    async def test_bad_json_garbage_and_error_event(self, client: httpx.AsyncClient) -> None:
        """Malformed frames arrive as sent, and the stream goes on afterwards."""
        error_fixture = (FIXTURES / "analytics_error_event.sse").read_bytes()
        settings = replace(BASE, interval=0.2)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            await reader.snapshot()
            for kind in ("bad_json", "garbage", "error_event"):
                await post(client, sim, "/_sim/fault", {"kind": kind})
            frames: list[bytes] = []
            while len(frames) < 3:
                frame = await reader.next()
                if not is_snapshot(frame):
                    frames.append(frame)
            await reader.snapshot()
        bad_json, garbage, error = frames
        assert bad_json.startswith(b"event:analytics\ndata:{")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bad_json.split(b"data:", 1)[1])
        assert b"\xff" in garbage
        assert not garbage.startswith(b"event:")
        assert error == error_fixture

    async def test_faults_wait_for_a_connection(self, client: httpx.AsyncClient) -> None:
        """A frame fault with nobody connected goes to the next connection, after its snapshot."""
        async with running(BASE) as sim:
            await post(client, sim, "/_sim/fault", {"kind": "bad_json"})
            async with stream(client, sim.stream_url) as (_, reader):
                await reader.snapshot()
                frame = await reader.next()
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(frame.split(b"data:", 1)[1])

    async def test_huge_line(self, client: httpx.AsyncClient) -> None:
        """huge_line sends one data line of exactly the default 10 MiB, then carries on."""
        settings = replace(BASE, interval=0.5)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            await reader.snapshot()
            await post(client, sim, "/_sim/fault", {"kind": "huge_line"})
            frame = await reader.next()
            while not frame.startswith(b'event:analytics\ndata:{"padding"'):
                frame = await reader.next()
            await reader.snapshot()
        line = frame[len(b"event:analytics\ndata:") : -2]
        assert len(line) == 10 * 1024 * 1024
        assert b"\n" not in line
        assert len(orjson.loads(line)["padding"]) == len(line) - 14

    async def test_stall_sends_nothing(self, client: httpx.AsyncClient) -> None:
        """A stall sends not even keep-alives, then the stream resumes."""
        settings = replace(BASE, interval=0.05, keepalive=0.02)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            await reader.snapshot()
            await post(client, sim, "/_sim/fault", {"kind": "stall", "seconds": 0.4})
            arrivals = [time.monotonic()]
            while arrivals[-1] - arrivals[0] < 0.7:
                await reader.next()
                arrivals.append(time.monotonic())
            await reader.snapshot()
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert max(gaps) > 0.3
        assert sorted(gaps)[-2] < 0.1

    @pytest.mark.parametrize("abort", [False, True])
    async def test_drop_closes_streams(self, client: httpx.AsyncClient, abort: bool) -> None:
        """drop ends every open stream (cleanly, or cut short with abort); reconnects work."""
        async with running(BASE) as sim:
            async with stream(client, sim.stream_url) as (_, reader):
                await reader.snapshot()
                await post(client, sim, "/_sim/fault", {"kind": "drop", "abort": abort})
                if abort:
                    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                        await read_to_end(reader)
                else:
                    assert all(f.startswith(b"event:") for f in await read_to_end(reader))
            async with stream(client, sim.stream_url) as (_, reader):
                await reader.snapshot()


class TestGatewayAndFlood:
    async def test_gateway_requests(self, client: httpx.AsyncClient) -> None:
        """The gateway stream carries started/text_delta/completed per unique request."""
        settings = replace(BASE, traffic=plain(rate=200.0))
        async with running(settings) as sim, stream(client, sim.gateway_url) as (response, reader):
            assert response.headers["content-type"] == "text/event-stream"
            frames = [await reader.next() for _ in range(60)]
        assert all(f.startswith(b"event:stream_event\ndata:{") for f in frames)
        bodies = [data_of(f) for f in frames]
        completed = [b for b in bodies if b["type"] == "completed"]
        started = {b["request_id"] for b in bodies if b["type"] == "started"}
        assert completed
        assert len({b["request_id"] for b in completed}) == len(completed)
        assert {b["request_id"] for b in completed} <= started
        assert all(b["cost_usd"] > 0 for b in completed)

    async def test_gateway_ping_and_lag(self, client: httpx.AsyncClient) -> None:
        """The gateway pings when idle; a lag fault drops N events, then says so."""
        settings = replace(BASE, ping_interval=0.05, traffic=plain(rate=0.0))
        async with running(settings) as sim:
            async with stream(client, sim.gateway_url) as (_, reader):
                assert await reader.next() == b":ping\n\n"
                await post(client, sim, "/_sim/fault", {"kind": "lag", "skipped": 2})
                await post(client, sim, "/_sim/traffic", {"rate": 100.0})
                frame = await reader.next()
                while frame == b":ping\n\n":
                    frame = await reader.next()
            truth = await ledger(client, sim)
        assert frame == b'event:lag\ndata:{"skipped":2}\n\n'
        assert truth["gateway"]["frames_skipped"] == 2

    async def test_flood(self, client: httpx.AsyncClient) -> None:
        """Flood mode sends snapshots back to back, each with 20 brand-new api_calls."""
        settings = replace(BASE, flood=True, interval=5.0)
        async with running(settings) as sim, stream(client, sim.stream_url) as (_, reader):
            snapshots = [await reader.snapshot() for _ in range(30)]
        seen: set[str] = set()
        for previous, snapshot in itertools.pairwise(snapshots):
            assert snapshot["project"]["calls"] - previous["project"]["calls"] == 20
            stamps = {e["timestamp"] for e in snapshot["activity"]}
            assert len(stamps) == 20
            assert not stamps & seen
            assert {e["event_type"] for e in snapshot["activity"]} == {"api_call"}
            seen |= stamps


class TestLifecycle:
    async def test_serve_reports_the_simulator(self, client: httpx.AsyncClient) -> None:
        """serve() reports a started simulator through task_status and stops on cancel."""
        async with anyio.create_task_group() as tg:
            sim: Simulator = await tg.start(serve, BASE)
            assert sim.port > 0
            assert (await client.get(sim.url + "/health")).json()["status"] == "ok"
            tg.cancel_scope.cancel()
        with pytest.raises(httpx.ConnectError):
            await client.get(sim.url + "/health")

    async def test_port_in_use_is_a_startup_error(self) -> None:
        """Binding a taken port raises StartupError naming the address."""
        async with running(BASE) as sim:
            with pytest.raises(StartupError, match=str(sim.port)):
                async with running(replace(BASE, port=sim.port)):
                    pass
