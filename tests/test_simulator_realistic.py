"""The simulator's realistic mode on real loopback sockets: what the proxy's code does.

Each behaviour of the wire-format spec's "What a snapshot does not promise" and of its
ActivityEvent notes, driven through the fault API so that each case is deterministic:
totals and ring read apart, the save that holds snapshots back, restarts that keep the
uptime or reload nothing, identical events, overrides with no call, failed calls, ``-0.0``,
axum 0.7's spaced framing and frames cut inside UTF-8 characters. The ledger must say what
a monitor has to count.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cco_cost_monitor.simulator import SimulatorSettings, TrafficProfile, running
from cco_cost_monitor.simulator.faults import Fault, parse_fault_spec
from cco_cost_monitor.simulator.proxy import ProxyState, ProxyTotals, Read
from cco_cost_monitor.simulator.server import Simulator
from cco_cost_monitor.simulator.traffic import split_frame, sse_frame

FIXTURES = Path(__file__).parent / "fixtures"
NS = 1_000_000_000
# Realistic mode, but no random races or odd records: the faults below pick each case.
QUIET = TrafficProfile(rate=0.0, identical_rate=0.0, orphan_override_rate=0.0, failed_rate=0.0)
BASE = SimulatorSettings(
    port=0,
    interval=0.1,
    seed=5,
    traffic=QUIET,
    race_rate=0.0,
    late_event_rate=0.0,
    save_interval=3600.0,
)
_TLS = ssl.create_default_context()


class Reader:
    """Raw chunks off a response, split into frames; remembers each chunk as received."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buf = bytearray()
        self.chunks: list[bytes] = []

    async def frame(self, timeout: float = 3.0) -> bytes:
        while (end := self._buf.find(b"\n\n")) < 0:
            chunk = await asyncio.wait_for(anext(self._chunks), timeout)
            self.chunks.append(chunk)
            self._buf += chunk
        frame = bytes(self._buf[: end + 2])
        del self._buf[: end + 2]
        return frame

    async def snapshot(self, timeout: float = 3.0) -> dict[str, Any]:
        while True:
            frame = await self.frame(timeout)
            if frame.startswith(b"event: analytics\ndata: "):
                value: dict[str, Any] = orjson.loads(frame[len(b"event: analytics\ndata: ") :])
                return value


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, verify=_TLS) as c:
        yield c


@asynccontextmanager
async def stream(client: httpx.AsyncClient, sim: Simulator) -> AsyncIterator[Reader]:
    async with client.stream("GET", sim.stream_url) as response:
        assert response.status_code == 200
        yield Reader(response)


async def fault(client: httpx.AsyncClient, sim: Simulator, **body: object) -> dict[str, Any]:
    response = await client.post(sim.url + "/_sim/fault", json=body)
    assert response.status_code == 200, response.text
    value: dict[str, Any] = response.json()
    return value


async def ledger(client: httpx.AsyncClient, sim: Simulator) -> dict[str, Any]:
    value: dict[str, Any] = (await client.get(sim.url + "/_sim/ledger")).json()
    return value


async def drain(reader: Reader) -> None:
    """Read until the server ends the stream (a restart closes it)."""
    with contextlib.suppress(StopAsyncIteration, httpx.RemoteProtocolError, httpx.ReadError):
        while True:
            await reader.frame(timeout=3.0)


def counted(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in snapshot["activity"] if e["event_type"] in ("api_call", "cache_hit")]


def stamps(snapshot: dict[str, Any]) -> set[str]:
    return {e["timestamp"] for e in snapshot["activity"]}


class TestFraming:
    def test_an_empty_proxy_is_byte_for_byte_the_axum_07_fixture(self) -> None:
        """Same time and uptime as the fixture's first frame: the very same bytes, -0.0 too."""
        fixture = (FIXTURES / "analytics_axum07.sse").read_bytes()
        first = fixture.split(b"\n\n")[0] + b"\n\n"
        at = 1_763_419_048 * NS + 550_021_334  # its last_updated
        data = ProxyState(ProxyTotals(), at, uptime_offset=2015).snapshot_bytes(at)
        assert sse_frame("analytics", data, spaced=True) == first
        assert b'"cost":-0.0,' in first
        assert b"\n\n: keep-alive\n\n" in fixture

    async def test_spaced_frames_negative_zero_and_spaced_keep_alive(
        self, client: httpx.AsyncClient
    ) -> None:
        """On the wire: 'event: analytics', 'data: ', cost -0.0 when empty, ': keep-alive'."""
        settings = replace(BASE, interval=30.0, keepalive=0.05)
        async with running(settings) as sim, stream(client, sim) as reader:
            first = await reader.frame()
            assert await reader.frame() == b": keep-alive\n\n"
        assert first.startswith(b'event: analytics\ndata: {"project":{"name":"Claude Orchestra"')
        cost = orjson.loads(first[len(b"event: analytics\ndata: ") :])["project"]["cost"]
        assert cost == 0.0
        assert math.copysign(1.0, cost) == -1.0

    def test_split_frame_cuts_inside_a_multibyte_character(self) -> None:
        """split_frame's pieces join to the frame; one ends inside a UTF-8 character."""
        frame = sse_frame("analytics", '{"model":"claude-opus-4\u20131"}'.encode(), spaced=True)
        pieces = split_frame(frame)
        assert b"".join(pieces) == frame
        assert len(pieces) == 4
        broken = []
        for piece in pieces:
            try:
                piece.decode()
            except UnicodeDecodeError:
                broken.append(piece)
        assert broken
        assert split_frame(b"event: x\ndata: {}\n\n")[-1] == b"\n"

    async def test_chunks_on_the_wire_split_a_utf8_character(
        self, client: httpx.AsyncClient
    ) -> None:
        """A window holding a non-ASCII model string arrives in chunks cut inside it."""
        model = "claude\u2011sonnet\u20114.5"
        async with running(BASE) as sim, stream(client, sim) as reader:
            await reader.snapshot()
            await fault(client, sim, kind="orphan_override", model=model)
            snapshot = await reader.snapshot()
            while not snapshot["activity"]:
                snapshot = await reader.snapshot()
        assert snapshot["activity"][-1]["model"] == model
        undecodable = 0
        for chunk in reader.chunks:
            try:
                chunk.decode()
            except UnicodeDecodeError:
                undecodable += 1
        assert undecodable >= 2  # the halves of the cut character arrive apart
        assert b"".join(reader.chunks).decode().count(model) >= 1


class TestRaces:
    async def _race(
        self, client: httpx.AsyncClient, mode: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with running(BASE) as sim, stream(client, sim) as reader:
            await fault(client, sim, kind="burst", count=3)
            before = await reader.snapshot()
            while not before["activity"]:
                before = await reader.snapshot()
            await fault(client, sim, kind="race", mode=mode, count=2)
            raced = await reader.snapshot()
            while stamps(raced) == stamps(before) and raced["project"] == before["project"]:
                raced = await reader.snapshot()
            after = await reader.snapshot()
            truth = await ledger(client, sim)
        return before, raced, after, truth

    async def test_event_ahead_of_both_totals(self, client: httpx.AsyncClient) -> None:
        """event_ahead: two new requests in the window, in neither total; next time in both."""
        before, raced, after, truth = await self._race(client, "event_ahead")
        new = [e for e in counted(raced) if e["timestamp"] not in stamps(before)]
        assert len(new) == 2
        assert raced["project"]["calls"] == before["project"]["calls"]
        assert raced["project"]["cost"] == before["project"]["cost"]
        assert after["project"]["calls"] == before["project"]["calls"] + 2
        assert (
            after["project"]["cost"] == before["project"]["cost"] + new[0]["cost"] + new[1]["cost"]
        )
        assert after["project"]["calls"] == truth["true_calls"] == truth["proxy_calls"]

    async def test_cost_ahead_of_calls(self, client: httpx.AsyncClient) -> None:
        """cost_ahead: the window and cost include two new requests, calls does not yet."""
        before, raced, after, _ = await self._race(client, "cost_ahead")
        new = [e for e in counted(raced) if e["timestamp"] not in stamps(before)]
        assert len(new) == 2
        assert raced["project"]["calls"] == before["project"]["calls"]
        assert (
            raced["project"]["cost"] == before["project"]["cost"] + new[0]["cost"] + new[1]["cost"]
        )
        assert raced["project"]["cost"] > before["project"]["cost"]
        assert after["project"]["calls"] == before["project"]["calls"] + 2
        assert after["project"]["cost"] == raced["project"]["cost"]

    async def test_total_whose_event_comes_in_the_next_snapshot(
        self, client: httpx.AsyncClient
    ) -> None:
        """event_late: both totals count two new requests whose events show only next time."""
        before, raced, after, _ = await self._race(client, "event_late")
        assert raced["project"]["calls"] == before["project"]["calls"] + 2
        assert raced["project"]["cost"] > before["project"]["cost"]
        assert stamps(raced) == stamps(before)
        late = [e for e in counted(after) if e["timestamp"] not in stamps(before)]
        assert len(late) == 2
        assert after["project"] == raced["project"] | {
            "last_updated": after["project"]["last_updated"]
        }

    async def test_random_races_show_every_interleaving_and_catch_up(
        self, client: httpx.AsyncClient
    ) -> None:
        """race_rate/late_event_rate: calls behind the events seen (cost behind too, or
        already ahead), and calls ahead of them; once traffic stops, exact totals."""
        settings = replace(
            BASE,
            interval=0.05,
            race_rate=0.5,
            late_event_rate=0.5,
            traffic=replace(QUIET, rate=40.0),
        )
        shapes: set[str] = set()
        seen: dict[str, float] = {}
        async with running(settings) as sim, stream(client, sim) as reader:
            for _ in range(80):
                snapshot = await reader.snapshot()
                for event in counted(snapshot):
                    seen.setdefault(event["timestamp"], event["cost"])
                calls, cost = snapshot["project"]["calls"], snapshot["project"]["cost"]
                spent = math.fsum(seen.values())
                if calls < len(seen):
                    shapes.add("cost_ahead" if abs(cost - spent) < 1e-12 else "event_ahead")
                elif calls > len(seen):
                    shapes.add("event_late")
            await client.post(sim.url + "/_sim/traffic", json={"rate": 0})
            truth = await ledger(client, sim)
            await reader.snapshot()
            last = await reader.snapshot()
        assert shapes == {"event_ahead", "cost_ahead", "event_late"}
        assert last["project"]["calls"] == truth["true_calls"] == truth["proxy_calls"] > 100
        assert last["project"]["cost"] == truth["true_cost_usd"]

    def test_a_lagged_cost_is_the_exact_running_total(self) -> None:
        """A read that lags k records reports the proxy's running sum then, not a difference."""
        from cco_cost_monitor.simulator.traffic import TrafficGenerator

        gen = TrafficGenerator(replace(QUIET, rate=50.0), 4, timestamp_digits=None)
        state = ProxyState(ProxyTotals(), 0)
        running_costs = [0.0]
        for event in gen.step(10 * NS, 12 * NS):
            state.record(event)
            if event.counts_as_call:
                running_costs.append(state.totals.cost)
        for lag in range(4):
            calls, cost = state.read_totals(Read(calls_lag=lag, cost_lag=lag))
            assert calls == state.totals.calls - lag
            assert cost == running_costs[-1 - lag]


class TestSaveHold:
    async def test_save_holds_snapshots_then_bursts_them(self, client: httpx.AsyncClient) -> None:
        """A 0.6 s save: only keep-alives, then the held snapshot (old calls, new cost and
        ring) and the missed ticks back to back; the totals catch up."""
        settings = replace(BASE, keepalive=0.15)
        async with running(settings) as sim, stream(client, sim) as reader:
            before = await reader.snapshot()
            await fault(client, sim, kind="save", seconds=0.6)
            await fault(client, sim, kind="burst", count=4)
            arrivals: list[tuple[float, bytes]] = []
            while True:
                frame = await reader.frame()
                arrivals.append((time.monotonic(), frame))
                if frame.startswith(b"event: analytics"):
                    break
            held = orjson.loads(arrivals[-1][1][len(b"event: analytics\ndata: ") :])
            burst = [await reader.frame() for _ in range(3)]
            burst_at = time.monotonic()
            truth = await ledger(client, sim)
        comments = [f for _, f in arrivals[:-1]]
        assert comments
        assert set(comments) == {b": keep-alive\n\n"}
        assert arrivals[-1][0] - arrivals[0][0] > 0.2
        assert held["project"]["calls"] == before["project"]["calls"]
        new = [e for e in counted(held) if e["timestamp"] not in stamps(before)]
        assert len(new) == 4
        assert held["project"]["cost"] > before["project"]["cost"]
        caught_up = [orjson.loads(f[len(b"event: analytics\ndata: ") :]) for f in burst]
        assert all(s["project"]["calls"] == before["project"]["calls"] + 4 for s in caught_up)
        # Six ticks of 0.1 s were missed: they came back to back, not one per interval.
        assert burst_at - arrivals[-1][0] < 0.2  # paced, three frames would take 0.3 s
        assert truth["saves"] == 1

    async def test_a_connection_during_the_hold_waits_for_its_first_snapshot(
        self, client: httpx.AsyncClient
    ) -> None:
        """Connecting while a save holds the lock: keep-alives, then the held snapshot; the
        ledger's baseline leaves out the queued requests its calls did not include."""
        settings = replace(BASE, keepalive=0.1)
        async with running(settings) as sim:
            await fault(client, sim, kind="burst", count=2)
            await asyncio.sleep(0.25)
            await fault(client, sim, kind="save", seconds=0.5)
            await fault(client, sim, kind="burst", count=3)
            await asyncio.sleep(0.05)
            async with stream(client, sim) as reader:
                first = await reader.frame()
                assert first == b": keep-alive\n\n"
                snapshot = await reader.snapshot()
            truth = await ledger(client, sim)
        assert snapshot["project"]["calls"] == 2
        assert len(counted(snapshot)) == 5
        baseline = truth["connections"][0]["first_snapshot"]
        assert baseline["proxy_calls"] == 2
        assert baseline["true_calls"] == 2
        assert truth["since_first_contact"]["requests"] == 3
        assert truth["true_calls"] == 5

    async def test_periodic_saves_hold_by_default_length(self, client: httpx.AsyncClient) -> None:
        """save_interval + save_hold: the periodic save holds snapshots back by itself."""
        settings = replace(BASE, save_interval=0.3, save_hold=0.4, keepalive=0.1)
        async with running(settings) as sim, stream(client, sim) as reader:
            frames = []
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                frames.append(await reader.frame())
            truth = await ledger(client, sim)
        assert b": keep-alive\n\n" in frames
        assert truth["saves"] >= 1


class TestRestarts:
    async def _restart(
        self, client: httpx.AsyncClient, settings: SimulatorSettings, **params: object
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with running(settings) as sim:
            async with stream(client, sim) as reader:
                await fault(client, sim, kind="burst", count=4)
                before = await reader.snapshot()
                while not before["activity"]:
                    before = await reader.snapshot()
                while before["machine"]["uptime"] < 1:  # let the uptime tick on
                    before = await reader.snapshot()
                await fault(client, sim, kind="restart", down_seconds=0.05, **params)
                await drain(reader)
            await sim.wait_up()
            async with stream(client, sim) as reader:
                after = await reader.snapshot()
            truth = await ledger(client, sim)
        return before, after, truth

    async def test_hidden_restart_keeps_the_uptime(self, client: httpx.AsyncClient) -> None:
        """hidden=true: the new process reports no less uptime; the window starts empty."""
        before, after, truth = await self._restart(
            client, replace(BASE, start_uptime=0), hidden=True
        )
        assert after["machine"]["uptime"] >= before["machine"]["uptime"] >= 1
        assert after["activity"] == []
        assert truth["restarts"] == 1
        assert after["project"]["calls"] == 0  # nothing was saved

    async def test_hidden_restart_with_queued_requests_lifts_the_totals(
        self, client: httpx.AsyncClient
    ) -> None:
        """Saved totals plus queued requests: calls above the last value seen, no uptime drop."""
        before, after, truth = await self._restart(
            client, BASE, hidden=True, save_first=True, queued=3
        )
        assert after["machine"]["uptime"] >= before["machine"]["uptime"]
        assert after["project"]["calls"] == before["project"]["calls"] + 3
        assert len(counted(after)) == 3
        assert not stamps(after) & stamps(before)
        assert truth["true_calls"] == after["project"]["calls"]

    async def test_reload_nothing_restarts_totals_from_zero(
        self, client: httpx.AsyncClient
    ) -> None:
        """reload=nothing: even saved history is gone; the empty proxy says -0.0."""
        settings = replace(BASE, history_calls=50, history_cost=9.0)
        before, after, truth = await self._restart(
            client, settings, reload="nothing", save_first=True
        )
        assert before["project"]["calls"] == 54
        assert after["project"]["calls"] == 0
        assert math.copysign(1.0, after["project"]["cost"]) == -1.0
        assert after["machine"]["uptime"] < before["machine"]["uptime"]
        restart = next(f for f in truth["faults"] if f["fault"] == "restart")
        assert restart["reload"] == "nothing"
        assert truth["lost_calls"] == 54


class TestOddRecords:
    async def test_identical_events_are_byte_identical_and_each_counted(
        self, client: httpx.AsyncClient
    ) -> None:
        """Two simulated 100/50-token calls with one microsecond stamp: same bytes, two calls."""
        async with running(BASE) as sim, stream(client, sim) as reader:
            before = await reader.snapshot()
            await fault(client, sim, kind="identical", count=2)
            after = await reader.snapshot()
            while len(after["activity"]) < 2:
                after = await reader.snapshot()
            truth = await ledger(client, sim)
        first, second = after["activity"]
        assert orjson.dumps(first) == orjson.dumps(second)
        assert first["tokens"] == 150
        assert first["latency_ms"] == 0
        assert len(first["timestamp"].split(".")[1]) == len("123456+00:00")
        assert after["project"]["calls"] == before["project"]["calls"] + 2
        assert truth["true_calls"] == 2
        assert truth["odd_records"] == {"identical": 2}

    async def test_random_twins_can_fall_either_side_of_a_snapshot(self) -> None:
        """identical_rate: each twin is one request; the pair is adjacent in the ring."""
        from cco_cost_monitor.simulator.traffic import TrafficGenerator

        gen = TrafficGenerator(
            TrafficProfile(rate=20.0, identical_rate=0.3), 8, timestamp_digits=None
        )
        events = [e for t in range(20) for e in gen.step(t * NS // 4, (t + 1) * NS // 4)]
        twins = [(a, b) for a, b in itertools.pairwise(events) if a == b]
        assert twins
        assert all(a.note == "identical" and a.tokens == 150 for a, _ in twins)

    async def test_override_with_no_call_is_no_request(self, client: httpx.AsyncClient) -> None:
        """An orphan model_override shows in the window; calls, cost and truth stay put."""
        async with running(BASE) as sim, stream(client, sim) as reader:
            before = await reader.snapshot()
            await fault(client, sim, kind="orphan_override", count=2)
            after = await reader.snapshot()
            while len(after["activity"]) < 2:
                after = await reader.snapshot()
            truth = await ledger(client, sim)
        assert [e["event_type"] for e in after["activity"]] == ["model_override"] * 2
        assert all(e["tokens"] is None and e["cost"] is None for e in after["activity"])
        assert after["project"]["calls"] == before["project"]["calls"] == 0
        assert truth["true_calls"] == 0
        assert truth["events_generated"] == 2
        assert truth["odd_records"] == {"orphan_override": 2}

    async def test_failed_call_then_cached_repeats(self, client: httpx.AsyncClient) -> None:
        """A failed call is an api_call with tokens 0, cost 0.0, status success; its repeats
        are cache_hits with tokens 0; all three count as calls, none costs anything."""
        async with running(BASE) as sim, stream(client, sim) as reader:
            await reader.snapshot()
            await fault(client, sim, kind="failed_call", count=2)
            after = await reader.snapshot()
            while len(after["activity"]) < 3:
                after = await reader.snapshot()
            truth = await ledger(client, sim)
        failed, *repeats = after["activity"]
        assert (failed["event_type"], failed["tokens"], failed["cost"], failed["status"]) == (
            "api_call",
            0,
            0.0,
            "success",
        )
        assert [(r["event_type"], r["tokens"], r["cost"]) for r in repeats] == [
            ("cache_hit", 0, 0.0)
        ] * 2
        assert after["project"]["calls"] == 3
        assert truth["true_calls"] == 3
        assert truth["true_cost_usd"] == 0.0


class TestFaultApi:
    async def test_a_typo_in_a_parameter_names_the_valid_ones(
        self, client: httpx.AsyncClient
    ) -> None:
        """POST /_sim/fault with a misspelt parameter: 400 listing the kind's parameters."""
        async with running(BASE) as sim:
            response = await client.post(
                sim.url + "/_sim/fault", json={"kind": "restart", "hiden": True}
            )
        assert response.status_code == 400
        error = response.json()["error"]
        assert "hiden" in error
        for name in ("down_seconds", "hidden", "reload", "queued", "save_first"):
            assert name in error

    def test_specs_take_key_value_pairs(self) -> None:
        """--fault AT:KIND:MAIN,key=value sets any parameter; a typo names the valid ones."""
        fault = parse_fault_spec("3:restart:0.5,hidden=true,reload=nothing,queued=2").fault
        assert (fault.down_seconds, fault.hidden, fault.reload, fault.queued) == (
            0.5,
            True,
            "nothing",
            2,
        )
        assert parse_fault_spec("1:race:cost_ahead,count=3").fault.count == 3
        with pytest.raises(ValueError, match="valid: mode, count"):
            parse_fault_spec("1:race:mode=cost_ahead,cuont=3")
        with pytest.raises(ValueError, match="mode must be one of"):
            Fault.from_json({"kind": "race", "mode": "sideways"})
        with pytest.raises(ValueError, match="reload must be one of"):
            Fault.from_json({"kind": "restart", "reload": "some"})
