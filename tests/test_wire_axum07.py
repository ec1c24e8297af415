"""The bytes axum 0.7.9 really writes (``analytics_axum07.sse``) parse as the proxy meant them.

The fixture is a copy of the shared reference fixture: ``name: value`` with one space,
``: keep-alive`` comments between frames and ``"cost":-0.0`` on an empty proxy. It goes
through the source's read path -- an incremental UTF-8 decode of byte chunks, the line
limiter, httpx-sse's decoders -- then :func:`wire.parse_frame`, chunked every way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cco_cost_monitor.source import SseDecoder
from cco_cost_monitor.wire import Frame, Snapshot, parse_frame

FIXTURE = Path(__file__).parent / "fixtures" / "analytics_axum07.sse"


def read_path(data: bytes, step: int) -> tuple[list[Frame], list[str]]:
    """Frames and event names of ``data`` delivered in ``step``-byte chunks, through the
    source's own bounded decoder (bytes in, so a chunk may end inside a UTF-8 character)."""
    kinds: list[str] = []
    decoder = SseDecoder(1 << 20, 1 << 20, kinds.append)
    frames: list[Frame] = []
    names: list[str] = []
    for start in range(0, len(data), step):
        for event in decoder.feed(data[start : start + step]):
            if event.data:
                names.append(event.event)
                frames.append(parse_frame(event.event, event.data))
    assert kinds == [], "no line or event of the fixture is oversized"
    return frames, names


@pytest.mark.parametrize("step", [1, 2, 7, 64, 1000, 1 << 20])
def test_axum07_fixture_parses_whatever_the_chunking(step: int) -> None:
    """Four analytics snapshots with the fixture's values; the comments are no events."""
    frames, names = read_path(FIXTURE.read_bytes(), step)
    assert names == ["analytics"] * 4
    assert all(isinstance(f, Snapshot) for f in frames)
    snapshots = [f for f in frames if isinstance(f, Snapshot)]
    assert [s.project.calls for s in snapshots] == [0, 2, 2, 3]
    assert [s.project.cost for s in snapshots] == [0.0, 0.0105, 0.0105, 0.1185]
    assert [s.machine.uptime for s in snapshots] == [2015, 2157, 2162, 2167]
    assert [len(s.activity) for s in snapshots] == [0, 3, 3, 4]
    assert [e.event_type for e in snapshots[3].activity] == [
        "model_override",
        "api_call",
        "cache_hit",
        "api_call",
    ]
    opus = snapshots[3].activity[3]
    assert (opus.model, opus.tokens, opus.cost) == ("claude-opus-4", 2400, 0.108)
    assert snapshots[1].activity == snapshots[2].activity  # re-sent while idle


def test_the_empty_proxys_cost_is_negative_zero() -> None:
    """``-0.0`` parses as a zero cost (its sign kept: nothing is negative spend)."""
    frames, _ = read_path(FIXTURE.read_bytes(), 1 << 20)
    first = frames[0]
    assert isinstance(first, Snapshot)
    assert first.project.cost == 0.0
    assert first.project.cost is not None
    assert math.copysign(1.0, first.project.cost) == -1.0
    assert first.activity == []


def test_the_fixture_is_axum_07s_spaced_form() -> None:
    """Every field line has one space after the colon; keep-alives are ': keep-alive'."""
    text = FIXTURE.read_text()
    fields = [line for line in text.splitlines() if line and not line.startswith(":")]
    assert fields
    assert all(line.startswith(("event: ", "data: ")) for line in fields)
    assert text.count("\n: keep-alive\n\n") == 2
