"""The SSE source's pure parts: backoff bounds, the line limiter, frame handling."""

from __future__ import annotations

import random
import re
from datetime import datetime

from httpx_sse import ServerSentEvent
from hypothesis import given
from hypothesis import strategies as st

from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.source import Backoff, LineLimiter, SseSource
from cco_cost_monitor.wire import Frame

SPEC = SourceSpec(name="p", url="http://127.0.0.1:1/api/stream")
SNAPSHOT = '{"project": {"cost": 0.0, "calls": 0}, "machine": {"uptime": 1}, "activity": []}'


@given(st.floats(0.01, 5), st.floats(5, 60), st.integers(0, 2**32))
def test_backoff_stays_within_its_bounds(initial: float, maximum: float, seed: int) -> None:
    """Full jitter never exceeds min(max, initial * 2^n) and never goes negative."""
    backoff = Backoff(initial, maximum, random.Random(seed))
    for attempt in range(40):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(maximum, initial * 2**attempt)


def test_backoff_honours_the_server_retry_floor() -> None:
    """A server `retry:` is a minimum delay."""
    backoff = Backoff(0.5, 30, random.Random(1))
    backoff.floor = 3.0
    assert all(backoff.next_delay() >= 3.0 for _ in range(20))


@given(st.lists(st.text(alphabet="ab\n\r:", max_size=40), max_size=30), st.integers(4, 20))
def test_line_limiter_keeps_short_lines_and_drops_long_ones(chunks: list[str], limit: int) -> None:
    """Whatever the chunking, every line that survives is at most the limit long."""
    dropped: list[int] = []
    limiter = LineLimiter(limit, lambda: dropped.append(1))
    out = "".join(limiter.feed(chunk) for chunk in chunks)
    for line in out.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        assert len(line) <= limit


def test_line_limiter_passes_a_normal_stream_unchanged() -> None:
    """Lines under the limit, split anywhere, come out byte for byte."""
    text = "event:analytics\ndata:" + SNAPSHOT + "\n\n:keep-alive\n\n"
    limiter = LineLimiter(1024, lambda: None)
    out = "".join(limiter.feed(text[i : i + 7]) for i in range(0, len(text), 7))
    assert out == text


def test_a_failing_frame_handler_is_counted_not_fatal() -> None:
    """An exception while accounting a frame is counted and logged; the source carries on."""
    calls: list[Frame] = []

    def handler(spec: SourceSpec, frame: Frame, at: datetime) -> None:
        calls.append(frame)
        raise RuntimeError("bug")

    source = SseSource(SPEC, Settings(), handler)
    event = ServerSentEvent(event="analytics", data=SNAPSHOT)
    source._handle(event)
    source._handle(event)
    assert len(calls) == 2
    assert source.state.bad_frames == {"internal_error": 2}
    assert source.state.snapshots == 2


def test_empty_and_bad_frames_are_skipped_and_counted() -> None:
    """Empty data is dropped silently; invalid JSON is counted by kind."""
    seen: list[Frame] = []
    source = SseSource(SPEC, Settings(), lambda spec, frame, at: seen.append(frame))
    source._handle(ServerSentEvent(event="analytics", data=""))
    source._handle(ServerSentEvent(event="analytics", data="{nope"))
    source._handle(ServerSentEvent(event="analytics", data=SNAPSHOT, id="7", retry=1500))
    assert len(seen) == 1
    assert source.state.bad_frames == {"invalid_json": 1}
    assert source.last_event_id == "7"
    assert source.backoff.floor == 1.5


@given(st.text(alphabet="ab\n\r", max_size=120), st.integers(1, 30), st.integers(2, 40))
def test_line_limiter_matches_a_reference(text: str, step: int, limit: int) -> None:
    """Chunked any way, the output is exactly the input's complete lines of at most
    `limit` characters (terminator included); each longer line is counted once."""
    dropped: list[int] = []
    limiter = LineLimiter(limit, lambda: dropped.append(1))
    out = "".join(limiter.feed(text[i : i + step]) for i in range(0, len(text), step))
    lines = re.findall(r"[^\r\n]*[\r\n]", text)
    assert out == "".join(line for line in lines if len(line) <= limit)
    assert len(dropped) >= sum(1 for line in lines if len(line) > limit)


def test_backoff_retries_quickly_after_losing_an_established_connection() -> None:
    """After a connection of 5 s or more drops, delays stay under 1 s for 30 s, then grow."""
    now = [0.0]
    backoff = Backoff(0.5, 30, random.Random(3), clock=lambda: now[0])
    backoff.connection_lost(lasted=600)
    quick = [backoff.next_delay() for _ in range(12)]
    assert max(quick) <= 1.0
    now[0] = 31.0
    later = [backoff.next_delay() for _ in range(6)]
    assert max(later) > 1.0


def test_a_flapping_connection_gets_no_quick_retries() -> None:
    """A connection that dropped within seconds does not open the quick-retry window."""
    backoff = Backoff(0.5, 30, random.Random(4), clock=lambda: 0.0)
    backoff.connection_lost(lasted=1.0)
    assert max(backoff.next_delay() for _ in range(12)) > 1.0


def test_snapshots_are_counted_by_what_the_frame_is_not_its_event_name() -> None:
    """A gateway frame on the default `message` event is a frame, not a snapshot."""
    source = SseSource(SPEC, Settings(), lambda spec, frame, at: None)
    source._handle(ServerSentEvent(event="message", data=SNAPSHOT))
    source._handle(
        ServerSentEvent(event="message", data='{"type":"started","request_id":"r","model":"m"}')
    )
    assert (source.state.frames, source.state.snapshots) == (2, 1)
