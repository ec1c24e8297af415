"""The SSE source's pure parts: backoff bounds, the bounded SSE decoder, frame handling."""

from __future__ import annotations

import random
from datetime import datetime

from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given
from hypothesis import strategies as st

from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.source import Backoff, SseDecoder, SseSource
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


def _decode(
    chunks: list[bytes], max_line: int = 1 << 20, max_event: int = 1 << 20
) -> tuple[list[tuple[str, str, str, int | None]], list[str]]:
    kinds: list[str] = []
    decoder = SseDecoder(max_line, max_event, kinds.append)
    events = [(e.event, e.data, e.id, e.retry) for chunk in chunks for e in decoder.feed(chunk)]
    return events, kinds


def _reference(text: str) -> list[tuple[str, str, str, int | None]]:
    """httpx-sse's own decoders, fed the whole text at once."""
    lines, decoder = SSELineDecoder(), SSEDecoder()
    out = []
    for line in [*lines.decode(text), *lines.flush()]:
        event = decoder.decode(line.rstrip("\n"))
        if event is not None:
            out.append((event.event, event.data, event.id, event.retry))
    return out


_LINES = st.sampled_from(
    [
        "data:x",
        "data: ab",
        "data",
        "data:",
        "event:analytics",
        "event:",
        ":keep-alive",
        "retry:15",
        "retry:x",
        "other:1",
        "",
        'data:{"a": 1}',
        "data:\u00e9\u20ac",
    ]
)
_ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


@given(st.lists(st.tuples(_LINES, _ENDINGS), max_size=40), st.integers(1, 17))
def test_decoder_gives_httpx_sse_events_however_the_bytes_are_chunked(
    lines: list[tuple[str, str]], step: int
) -> None:
    """Events (name, data, retry) as httpx-sse decodes them, for any chunking and any of
    the three line endings, multi-byte characters split across chunks included."""
    raw = "".join(line + ending for line, ending in lines).encode()
    chunks = [raw[i : i + step] for i in range(0, len(raw), step)]
    events, kinds = _decode(chunks)
    assert events == _reference(raw.decode())
    assert kinds == []


def test_decoder_keeps_the_last_event_id_and_ignores_one_with_nul() -> None:
    """An id sticks to later events (the spec's last event ID); one containing NUL is ignored."""
    events, _ = _decode([b"id:7\ndata:a\n\ndata:b\n\nid:8\x00\ndata:c\n\n"])
    assert [(e[1], e[2]) for e in events] == [("a", "7"), ("b", "7"), ("c", "7")]


@given(st.lists(st.tuples(st.integers(0, 40), _ENDINGS), max_size=30), st.integers(1, 23))
def test_decoder_drops_every_line_over_the_limit_and_the_event_it_was_in(
    lengths: list[tuple[int, str]], step: int
) -> None:
    """Whatever the chunking, a data line over the limit is counted and its event never
    dispatched; every other event comes through whole, and nothing held exceeds the limit."""
    limit = 20
    raw = "".join(f"data:{'x' * n}{ending}{ending}" for n, ending in lengths).encode()
    kinds: list[str] = []
    decoder = SseDecoder(limit, 1 << 20, kinds.append)
    events = []
    for i in range(0, len(raw), step):
        events += decoder.feed(raw[i : i + step])
        assert decoder.buffered <= limit
    short = [n for n, _ in lengths if len("data:") + n <= limit]
    assert [e.data for e in events] == ["x" * n for n in short]
    assert kinds.count("oversized_line") == len(lengths) - len(short)


def test_one_event_of_many_short_data_lines_is_never_buffered_whole() -> None:
    """An event of 20 MB in 64-byte data: lines and no blank line holds at most the event
    bound; it is counted once, never dispatched, and the next event comes through whole."""
    limit = 64 * 1024
    kinds: list[str] = []
    decoder = SseDecoder(limit, limit, kinds.append)
    block = b"data:" + b"x" * 64 + b"\n"
    chunk = b"event:analytics\n" + block * 900
    events = []
    held = 0
    for _ in range(20 * 1024 * 1024 // len(chunk)):
        events += decoder.feed(chunk)
        held = max(held, decoder.buffered)
    events += decoder.feed(b"\nevent:analytics\ndata:" + SNAPSHOT.encode() + b"\n\n")
    assert held <= limit + 64
    assert kinds == ["oversized_event"]
    assert [(e.event, e.data) for e in events] == [("analytics", SNAPSHOT)]


def test_a_partial_event_that_would_parse_is_still_dropped() -> None:
    """Dropping an event's oversized tail must not dispatch its head (valid JSON alone)."""
    kinds: list[str] = []
    decoder = SseDecoder(1024, 40, kinds.append)
    events = decoder.feed(b'data:{"a": 1}\ndata:' + b"1" * 60 + b"\n\ndata:ok\n\n")
    assert [e.data for e in events] == ["ok"]
    assert kinds == ["oversized_event"]
