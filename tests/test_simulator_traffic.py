"""Tests of the simulator's pure model: traffic, timestamps, the proxy process, snapshots."""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.simulator.proxy import ACTIVITY_WINDOW, RING_SIZE, ProxyState, ProxyTotals
from cco_cost_monitor.simulator.traffic import (
    PROXY_PRICES,
    ActivityEvent,
    TrafficGenerator,
    TrafficProfile,
    format_timestamp,
    gateway_frames,
    sse_frame,
)

FIXTURES = Path(__file__).parent / "fixtures"


def plain(**fields: Any) -> TrafficProfile:
    """A traffic profile without the realistic mode's odd records (twins, orphans, failures)."""
    return TrafficProfile(identical_rate=0.0, orphan_override_rate=0.0, failed_rate=0.0, **fields)


NS = 1_000_000_000
T0 = 1_763_419_200 * NS  # 2025-11-17T22:40:00+00:00
FRACTION = re.compile(r"T\d\d:\d\d:\d\d(?:\.(\d+))?\+00:00$")


def fixture_snapshots(name: str) -> list[dict[str, object]]:
    """The JSON objects of a fixture's data lines."""
    text = (FIXTURES / name).read_bytes().decode()
    return [
        orjson.loads(line.split(":", 1)[1])
        for line in text.splitlines()
        if line.startswith("data:")
    ]


def generate(
    seed: int = 7, seconds: float = 60.0, start: int = T0, **profile: Any
) -> list[ActivityEvent]:
    """Events of ``seconds`` of traffic (default 5 requests per second)."""
    profile.setdefault("rate", 5.0)
    gen = TrafficGenerator(plain(**profile), seed, timestamp_digits=None)
    return gen.step(start, start + int(seconds * NS))


def fraction_digits(timestamp: str) -> int:
    match = FRACTION.search(timestamp)
    assert match is not None, timestamp
    return len(match.group(1) or "")


class TestTimestamps:
    def test_autosi_uses_the_fewest_exact_digits(self) -> None:
        """Timestamps print 0, 3, 6 or 9 fractional digits, like chrono's AutoSi."""
        assert format_timestamp(T0) == "2025-11-17T22:40:00+00:00"
        assert format_timestamp(T0 + 5_000_000) == "2025-11-17T22:40:00.005+00:00"
        assert format_timestamp(T0 + 5_000) == "2025-11-17T22:40:00.000005+00:00"
        assert format_timestamp(T0 + 118_204_611) == "2025-11-17T22:40:00.118204611+00:00"

    def test_early_format_prints_microseconds(self) -> None:
        """The early proxy's form always has six fractional digits."""
        assert format_timestamp(T0, 6) == "2025-11-17T22:40:00.000000+00:00"
        assert format_timestamp(T0 + 123_456_789, 6) == "2025-11-17T22:40:00.123456+00:00"

    @given(st.integers(min_value=0, max_value=4_000_000_000 * NS))
    def test_every_timestamp_parses(self, ns: int) -> None:
        """Python's fromisoformat reads every timestamp, to the microsecond."""
        text = format_timestamp(ns)
        parsed = datetime.fromisoformat(text)
        expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
        assert parsed == expected
        assert fraction_digits(text) in (0, 3, 6, 9)


class TestFraming:
    def test_frame_has_no_space_after_the_colon(self) -> None:
        """Frames are written as axum writes them: ``name:value``."""
        assert sse_frame("analytics", b"{}") == b"event:analytics\ndata:{}\n\n"

    def test_spaced_frame_matches_the_docs_form(self) -> None:
        """The spaced form is the one of the proxy's docs and the early fixture."""
        frame = sse_frame("analytics", b"{}", spaced=True)
        assert frame == b"event: analytics\ndata: {}\n\n"
        assert (
            (FIXTURES / "analytics_early_format_spaced.sse")
            .read_bytes()
            .startswith(b"event: analytics\ndata: {")
        )


class TestGenerator:
    @settings(max_examples=40, deadline=None)
    @given(
        seed=st.integers(0, 2**32),
        rate=st.floats(0.5, 200.0),
        cache_hit_rate=st.floats(0.0, 1.0),
        override_rate=st.floats(0.0, 1.0),
        coarse=st.floats(0.0, 1.0),
    )
    def test_timestamps_strictly_increase(
        self, seed: int, rate: float, cache_hit_rate: float, override_rate: float, coarse: float
    ) -> None:
        """Event timestamps are unique, increasing, parseable and within the step."""
        gen = TrafficGenerator(
            plain(
                rate=rate,
                cache_hit_rate=cache_hit_rate,
                override_rate=override_rate,
                coarse_timestamp_rate=coarse,
            ),
            seed,
            timestamp_digits=None,
        )
        events = gen.step(T0, T0 + 2 * NS) + gen.step(T0 + 2 * NS, T0 + 3 * NS, extra=30)
        stamps = [e.ts_ns for e in events]
        assert stamps == sorted(set(stamps))
        assert len({e.timestamp for e in events}) == len(events)
        for event in events:
            assert datetime.fromisoformat(event.timestamp) == datetime.fromtimestamp(
                event.ts_ns // 1000 / 1e6, UTC
            )
            assert event.timestamp == format_timestamp(event.ts_ns)

    def test_same_seed_same_traffic(self) -> None:
        """A seed reproduces the traffic exactly; another seed does not."""
        assert generate(seed=3) == generate(seed=3)
        assert generate(seed=3) != generate(seed=4)

    def test_steps_do_not_change_the_traffic(self) -> None:
        """Generating in many small steps yields exactly the events of one big step."""
        whole = generate(seed=9, seconds=60.0)
        gen = TrafficGenerator(plain(rate=5.0), 9, timestamp_digits=None)
        cuts = [T0 + int(s * NS) for s in (0, 0.3, 7, 7.001, 22, 59.9, 60)]
        pieces = [e for a, b in itertools.pairwise(cuts) for e in gen.step(a, b)]
        assert pieces == whole

    def test_arrivals_follow_the_rate(self) -> None:
        """The number of requests over a long span is close to rate x seconds."""
        events = generate(rate=10.0, seconds=1000.0, override_rate=0.0, tiny_cost_rate=0.0)
        assert 9_400 < len(events) < 10_600

    def test_rate_zero_is_idle(self) -> None:
        """A paused generator produces nothing, but a burst still arrives."""
        gen = TrafficGenerator(plain(rate=0.0), 1, timestamp_digits=None)
        assert gen.step(T0, T0 + 100 * NS) == []
        burst = gen.step(T0 + 100 * NS, T0 + 105 * NS, extra=45)
        assert sum(e.counts_as_call for e in burst) == 45
        assert all(T0 + 100 * NS < e.ts_ns <= T0 + 105 * NS for e in burst)

    def test_event_shapes_follow_the_proxy(self) -> None:
        """api_call costs the proxy's price, cache_hit is free, overrides carry nulls."""
        events = generate(seconds=200.0, cache_hit_rate=0.2, override_rate=0.5)
        kinds = {e.event_type for e in events}
        assert kinds == {"api_call", "cache_hit", "model_override"}
        for i, event in enumerate(events):
            assert event.model in PROXY_PRICES
            assert event.status == "success"
            if event.event_type == "model_override":
                assert (event.tokens, event.latency_ms, event.cost) == (None, None, None)
                following = events[i + 1]
                assert following.event_type == "api_call"
                assert following.model != event.model
                continue
            assert event.tokens == event.input_tokens + event.output_tokens
            price = PROXY_PRICES[event.model].cost(event.input_tokens, event.output_tokens)
            if event.event_type == "cache_hit":
                assert (event.cost, event.latency_ms) == (0.0, 0)
                assert event.would_be_cost == price
            else:
                assert event.cost == price
                assert event.latency_ms is not None
                assert event.latency_ms > 0

    def test_models_span_every_tier(self) -> None:
        """Traffic covers opus, sonnet, haiku and a non-Anthropic model."""
        models = {e.model for e in generate(seconds=200.0)}
        for family in ("opus", "sonnet", "haiku", "gpt"):
            assert any(family in m for m in models), family

    def test_unpriced_model_option(self) -> None:
        """With unpriced_rate 1 every request uses the unpriced model, at a real cost."""
        events = generate(unpriced_rate=1.0, unpriced_model="new-model-x", tiny_cost_rate=0.0)
        assert {e.model for e in events} == {"new-model-x"}
        assert all(e.cost for e in events if e.event_type == "api_call")

    def test_tiny_costs_print_in_exponent_form(self) -> None:
        """Tiny calls cost about a micro-dollar, which orjson writes as ``1e-6``."""
        events = generate(tiny_cost_rate=1.0)
        body = orjson.dumps([e.to_wire() for e in events])
        assert re.search(rb'"cost":\d(\.\d+)?e-\d', body)

    def test_coarse_timestamps_appear_when_asked(self) -> None:
        """With the coarse rate up, some timestamps have fewer than nine digits."""
        fine = [fraction_digits(e.timestamp) for e in generate(coarse_timestamp_rate=0.0)]
        coarse = [fraction_digits(e.timestamp) for e in generate(coarse_timestamp_rate=1.0)]
        # Nanosecond times end in 000 by chance once in a thousand (then AutoSi prints 6).
        assert sum(d < 9 for d in fine) <= len(fine) // 100
        assert {0, 3, 6} <= set(coarse)

    def test_early_timestamps_are_unique_microseconds(self) -> None:
        """In the early format, timestamps are unique at microsecond resolution."""
        gen = TrafficGenerator(plain(rate=5000.0), 1, timestamp_digits=6)
        events = gen.step(T0, T0 + NS)
        assert len(events) > 4000
        assert len({e.timestamp for e in events}) == len(events)
        assert {fraction_digits(e.timestamp) for e in events} == {6}

    def test_flood_batch_is_new_api_calls(self) -> None:
        """A flood batch is N brand-new api_call events with unique timestamps."""
        gen = TrafficGenerator(plain(), 1, timestamp_digits=None)
        first, second = gen.flood(20, T0), gen.flood(20, T0)
        assert all(e.event_type == "api_call" for e in first + second)
        assert len({e.timestamp for e in first + second}) == 40


def events_strategy() -> st.SearchStrategy[list[ActivityEvent]]:
    """Generated traffic of varying length and mix."""
    return st.builds(
        lambda seed, n, hits: TrafficGenerator(
            plain(rate=1.0, cache_hit_rate=hits, override_rate=0.3),
            seed,
            timestamp_digits=None,
        ).step(T0, T0 + 1, extra=n),
        st.integers(0, 2**16),
        st.integers(0, 260),
        st.floats(0.0, 1.0),
    )


class TestProxyState:
    @settings(max_examples=60, deadline=None)
    @given(events_strategy())
    def test_window_is_the_last_twenty_oldest_first(self, events: list[ActivityEvent]) -> None:
        """The activity window is the last <=20 of a 100-entry ring, oldest first."""
        state = ProxyState(ProxyTotals(), T0)
        for event in events:
            state.record(event)
        assert list(state.ring) == events[-RING_SIZE:]
        assert state.window() == events[-ACTIVITY_WINDOW:]
        snapshot = state.snapshot(T0 + NS)
        assert snapshot["activity"] == [e.to_wire() for e in events[-ACTIVITY_WINDOW:]]

    @settings(max_examples=60, deadline=None)
    @given(events_strategy())
    def test_totals_are_the_sum_of_what_was_generated(self, events: list[ActivityEvent]) -> None:
        """cost sums every event's cost; calls counts api_call and cache_hit only."""
        state = ProxyState(ProxyTotals(), T0)
        for event in events:
            state.record(event)
        calls = [e for e in events if e.event_type in ("api_call", "cache_hit")]
        assert state.totals.calls == len(calls)
        assert state.totals.cost == pytest.approx(math.fsum(e.cost or 0.0 for e in events))
        project = state.snapshot(T0 + NS)["project"]
        assert project["calls"] == len(calls)
        assert project["tokens"] == int(math.fsum(e.would_be_cost for e in calls) + 1e-9)

    @settings(max_examples=60, deadline=None)
    @given(events_strategy(), st.data())
    def test_restart_reloads_the_last_save(
        self, events: list[ActivityEvent], data: st.DataObject
    ) -> None:
        """A restart reloads the saved (lower) totals, empties the ring, resets uptime."""
        cut = data.draw(st.integers(0, len(events)))
        state = ProxyState(ProxyTotals(cost=1.5, calls=3), T0, uptime_offset=500)
        for event in events[:cut]:
            state.record(event)
        state.save(T0 + NS)
        for event in events[cut:]:
            state.record(event)
        later = T0 + 10 * NS
        assert state.uptime(later) == 510
        reborn = state.restarted(later)
        assert reborn.totals.calls == state.saved.calls <= state.totals.calls
        assert reborn.totals.cost <= state.totals.cost + 1e-12
        assert reborn.totals.calls == 3 + sum(e.counts_as_call for e in events[:cut])
        assert list(reborn.ring) == []
        assert reborn.uptime(later + 2 * NS) == 2
        assert reborn.snapshot(later)["activity"] == []

    def test_save_copies_the_totals(self) -> None:
        """A save is a snapshot of the totals, not an alias of the live counters."""
        state = ProxyState(ProxyTotals(), T0)
        state.save(T0)
        for event in generate(seconds=10.0, cache_hit_rate=0.0, override_rate=0.0):
            state.record(event)
        assert state.saved.calls == 0
        assert state.saved.models == {}
        assert state.save_due(T0 + 60 * NS, 60.0)
        assert not state.save_due(T0 + 59 * NS, 60.0)

    def test_current_snapshot_has_the_fixture_shape(self) -> None:
        """Keys and their order match the proxy's current snapshot, at every level."""
        fixture = fixture_snapshots("analytics_active.sse")[2]
        state = ProxyState(ProxyTotals(), T0)
        for event in generate(seconds=30.0, cache_hit_rate=0.3, override_rate=0.5):
            state.record(event)
        ours = state.snapshot(T0 + 31 * NS)
        assert list(ours) == list(fixture)
        for key in ("project", "machine", "chart_data"):
            assert list(ours[key]) == list(fixture[key])  # type: ignore[call-overload]
        fixture_event = fixture["activity"][0]  # type: ignore[index]
        assert all(list(e) == list(fixture_event) for e in ours["activity"])
        chart, fixture_chart = ours["chart_data"], fixture["chart_data"]
        for key in chart:
            assert list(chart[key][0]) == list(fixture_chart[key][0])  # type: ignore[index]
        assert ours["machine"] == {"cpu": "N/A", "memory": "N/A", "uptime": 31, "process_count": 1}
        assert ours["project"]["name"] == "Claude Orchestra"

    def test_chart_data_is_synthetic_like_the_proxy(self) -> None:
        """cost_over_time is total/30 for the 30 days ending today; shares sum to 100."""
        state = ProxyState(ProxyTotals(), T0)
        for event in generate(seconds=30.0):
            state.record(event)
        chart = state.snapshot(T0 + 31 * NS)["chart_data"]
        days = chart["cost_over_time"]
        assert len(days) == 30
        assert days[0]["date"] == "2025-10-19"
        assert days[-1]["date"] == "2025-11-17"
        assert {d["cost"] for d in days} == {state.totals.cost / 30}
        assert chart["cost_by_project"] == [
            {"project": "Claude Orchestra", "cost": state.totals.cost}
        ]
        assert sum(m["percentage"] for m in chart["model_distribution"]) == pytest.approx(100.0)

    def test_idle_snapshot_matches_the_idle_fixture(self) -> None:
        """An idle proxy's snapshot equals the idle fixture but for time and uptime."""
        fixture = fixture_snapshots("analytics_idle.sse")[0]
        at = 1_763_419_048 * NS + 550_021_334
        ours = ProxyState(ProxyTotals(), at, uptime_offset=2015, negative_zero=False).snapshot(at)
        assert orjson.dumps(ours) == orjson.dumps(fixture)

    def test_early_snapshot_has_six_field_events(self) -> None:
        """The early format drops status, cost and chart_data, like its fixture."""
        fixture = fixture_snapshots("analytics_early_format_spaced.sse")[0]
        state = ProxyState(ProxyTotals(), T0)
        gen = TrafficGenerator(plain(rate=5.0), 1, timestamp_digits=6)
        for event in gen.step(T0, T0 + 5 * NS):
            state.record(event)
        ours = state.snapshot(T0 + 5 * NS, "early")
        assert list(ours) == list(fixture)
        assert list(ours["project"]) == list(fixture["project"])  # type: ignore[call-overload]
        fixture_event = fixture["activity"][0]  # type: ignore[index]
        assert ours["activity"]
        assert all(list(e) == list(fixture_event) for e in ours["activity"])
        assert fraction_digits(ours["project"]["last_updated"]) == 6

    def test_old_snapshot_has_the_old_shape_and_sums(self) -> None:
        """The old format reports cumulative per-model totals that add up."""
        fixture = fixture_snapshots("analytics_old_format.sse")[0]
        state = ProxyState(ProxyTotals(), T0)
        events = generate(seconds=60.0, cache_hit_rate=0.3)
        for event in events:
            state.record(event)
        ours = state.snapshot(T0, "old")
        assert list(ours) == list(fixture)
        for key in ("cache", "totals"):
            assert list(ours[key]) == list(fixture[key])  # type: ignore[call-overload]
        assert list(ours["models"][0]) == list(fixture["models"][0])  # type: ignore[index]
        models = ours["models"]
        assert sum(m["requests"] for m in models) == ours["totals"]["requests"]
        assert ours["totals"]["requests"] == sum(e.counts_as_call for e in events)
        assert ours["cache"]["hits"] == sum(e.event_type == "cache_hit" for e in events)
        for m in models:
            assert m["requests"] == m["cache_hits"] + m["cache_misses"]
            assert m["would_be_cost"] == pytest.approx(m["actual_cost"] + m["savings"])

    def test_snapshot_bytes_are_compact(self) -> None:
        """The data line is compact JSON on one line, as serde_json writes it."""
        state = ProxyState(ProxyTotals(), T0)
        for event in generate(seconds=10.0):
            state.record(event)
        data = state.snapshot_bytes(T0 + 11 * NS)
        assert b"\n" not in data
        assert b", " not in data
        assert b'": ' not in data
        assert orjson.dumps(orjson.loads(data)) == data


class TestGateway:
    def test_completed_request_frames(self) -> None:
        """A call becomes started, text_delta, completed with its split and cost."""
        event = generate(cache_hit_rate=0.0, override_rate=0.0, tiny_cost_rate=0.0)[0]
        frames = gateway_frames(event, "req_1", agent_type="python-specialist")
        bodies = [orjson.loads(f.split(b"data:", 1)[1]) for f in frames]
        assert all(f.startswith(b"event:stream_event\ndata:{") for f in frames)
        assert [b["type"] for b in bodies] == ["started", "text_delta", "completed"]
        assert bodies[0] == {
            "type": "started",
            "request_id": "req_1",
            "model": event.model,
            "agent_type": "python-specialist",
        }
        assert bodies[2]["input_tokens"] + bodies[2]["output_tokens"] == event.tokens
        assert bodies[2]["cost_usd"] == event.cost

    def test_gateway_frames_have_the_fixture_key_order(self) -> None:
        """Each frame type has the keys of the gateway fixture, in order."""
        bodies = fixture_snapshots("gateway_stream_event.sse")
        fixture: dict[str, list[str]] = {}
        for body in bodies:
            if "type" in body:
                fixture.setdefault(str(body["type"]), list(body))
        event = generate()[0]
        ours = gateway_frames(event, "req_2", agent_type="general") + gateway_frames(
            event, "req_3", agent_type=None, failed=True
        )
        for frame in ours:
            body = orjson.loads(frame.split(b"data:", 1)[1])
            if body["type"] == "started" and "agent_type" not in body:
                assert list(body) == fixture["started"][:3]
            else:
                assert list(body) == fixture[body["type"]]
