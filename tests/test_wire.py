"""Parsing every frame format the proxy and the gateway send."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given
from hypothesis import strategies as st

from cco_cost_monitor import wire as wire_module
from cco_cost_monitor.errors import WireError
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.reconciler import Reconciler
from cco_cost_monitor.wire import (
    GatewayCompleted,
    GatewayError,
    GatewayLag,
    GatewayStarted,
    GatewayTextDelta,
    OldSnapshot,
    ProxyError,
    Snapshot,
    event_key,
    parse_frame,
    parse_timestamp,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2025, 11, 17, 23, 0, tzinfo=UTC)


def sse_events(name: str) -> list[tuple[str, str]]:
    """Decode a fixture with httpx-sse's own decoder, as the source does."""
    lines = SSELineDecoder().decode((FIXTURES / name).read_text())
    decoder = SSEDecoder()
    events = []
    for line in [*lines, ""]:
        event = decoder.decode(line)
        if event is not None and event.data:
            events.append((event.event, event.data))
    return events


def test_active_fixture_parses_to_the_right_values() -> None:
    """The current format gives totals, uptime and the three activity kinds."""
    frames = [parse_frame(name, data) for name, data in sse_events("analytics_active.sse")]
    assert len(frames) == 3
    first = frames[0]
    assert isinstance(first, Snapshot)
    assert first.project.cost == 0.0105
    assert first.project.calls == 2
    assert first.machine.uptime == 2157
    kinds = [event.event_type for event in first.activity]
    assert kinds == ["model_override", "api_call", "cache_hit"]
    assert first.activity[1].tokens == 1500
    assert first.activity[1].cost == 0.0105
    assert first.activity[0].cost is None


def test_active_fixture_gives_the_expected_accounting() -> None:
    """Baseline first, the replay adds nothing, the third snapshot adds one opus call."""
    reconciler = Reconciler("p", PriceTable.default())
    frames = [parse_frame(name, data) for name, data in sse_events("analytics_active.sse")]
    assert reconciler.apply(frames[0], NOW).first_contact
    assert reconciler.apply(frames[1], NOW).is_empty
    third = reconciler.apply(frames[2], NOW)
    assert [(e.event_type, e.model, e.cost_usd) for e in third.events] == [
        ("api_call", "claude-opus-4", 0.108)
    ]
    assert third.unattributed is None
    assert third.events[0].tier == "opus"
    assert third.events[0].cost_basis == "recorded"


def test_idle_then_active_fixture_is_one_proxy_run_not_a_restart() -> None:
    """last_updated - uptime moves 14.6 s between these two snapshots of one proxy run:
    that is no restart, and growth without visible events is unattributed, never dropped."""
    reconciler = Reconciler("p", PriceTable.default())
    (idle,) = [parse_frame(name, data) for name, data in sse_events("analytics_idle.sse")]
    active = next(parse_frame(name, data) for name, data in sse_events("analytics_active.sse"))
    assert isinstance(active, Snapshot)
    assert reconciler.apply(idle, NOW).first_contact
    grown = active.model_copy(
        update={"project": active.project.model_copy(update={"calls": 5, "cost": 0.5})}
    )
    accounting = reconciler.apply(grown, NOW)
    assert not accounting.proxy_restart
    assert accounting.requests == 2  # the visible events; the rest once settled
    later = grown.model_copy(
        update={
            "project": grown.project.model_copy(
                update={"last_updated": "2025-11-17T22:40:10.118790223+00:00"}
            )
        }
    )
    settled = reconciler.apply(later, NOW + timedelta(seconds=5))
    assert not settled.proxy_restart
    assert settled.unattributed is not None
    assert settled.unattributed.requests == 3
    assert accounting.cost_usd + settled.cost_usd == pytest.approx(0.5)


def test_idle_fixture_has_an_empty_window() -> None:
    """An idle proxy sends totals of zero and no activity."""
    (frame,) = [parse_frame(name, data) for name, data in sse_events("analytics_idle.sse")]
    assert isinstance(frame, Snapshot)
    assert (frame.project.cost, frame.project.calls, frame.activity) == (0.0, 0, [])


def test_early_format_with_spaced_data_parses() -> None:
    """Docs-style `data: ` spacing and six-field events without status or cost parse."""
    (frame,) = [
        parse_frame(name, data) for name, data in sse_events("analytics_early_format_spaced.sse")
    ]
    assert isinstance(frame, Snapshot)
    event = frame.activity[0]
    assert (event.model, event.tokens, event.status, event.cost) == (
        "claude-opus-4",
        1500,
        None,
        None,
    )


def test_old_format_parses_per_model_totals() -> None:
    """The old {cache, models, totals} body is recognised by its keys."""
    (frame,) = [parse_frame(name, data) for name, data in sse_events("analytics_old_format.sse")]
    assert isinstance(frame, OldSnapshot)
    assert frame.totals.requests == 2
    assert frame.models[0].model == "claude-opus-4"
    assert frame.models[0].actual_cost == 0.0525


def test_error_event_parses() -> None:
    """The proxy's serialization error event becomes a ProxyError."""
    (frame,) = [parse_frame(name, data) for name, data in sse_events("analytics_error_event.sse")]
    assert isinstance(frame, ProxyError)
    assert frame.error.startswith("Serialization failed")


def test_gateway_stream_parses_every_kind() -> None:
    """started, text_delta, completed, error and lag all parse from the gateway fixture."""
    frames = [parse_frame(name, data) for name, data in sse_events("gateway_stream_event.sse")]
    assert [type(frame) for frame in frames] == [
        GatewayStarted,
        GatewayTextDelta,
        GatewayCompleted,
        GatewayStarted,
        GatewayError,
        GatewayLag,
    ]
    completed = frames[2]
    assert isinstance(completed, GatewayCompleted)
    assert (completed.input_tokens, completed.output_tokens, completed.cost_usd) == (
        1200,
        340,
        0.0087,
    )
    lag = frames[5]
    assert isinstance(lag, GatewayLag)
    assert lag.skipped == 3


@pytest.mark.parametrize(
    ("event", "data", "kind"),
    [
        ("analytics", "{not json", "invalid_json"),
        ("analytics", "[1, 2]", "invalid_shape"),
        ("analytics", '{"project": {"calls": "12"}}', "invalid_shape"),
        ("analytics", '{"activity": [{"timestamp": 5}]}', "invalid_shape"),
        ("analytics", '{"something": 1}', "unknown_format"),
        ("surprise", "{}", "unknown_event"),
        ("stream_event", '{"type": "nope", "request_id": "x"}', "invalid_shape"),
        # u64 on the wire, but beyond SQLite's integers: a bad frame, not a poisoned batch
        (
            "analytics",
            '{"activity": [{"timestamp": "t", "event_type": "api_call", '
            '"tokens": 9223372036854775808}]}',
            "invalid_value",
        ),
        # Valid JSON, absurd values (issue 14): refused at the edge, never summed
        (
            "analytics",
            '{"activity": [{"timestamp": "t", "event_type": "api_call", "cost": 1e308}]}',
            "invalid_value",
        ),
        ("analytics", '{"project": {"cost": -1e10}}', "invalid_value"),
        ("analytics", '{"project": {"calls": 1000000000001}}', "invalid_value"),
        (
            "analytics",
            '{"project": {}, "machine": {"uptime": 9223372036854775807}}',
            "invalid_value",
        ),
        (
            "analytics",
            '{"activity": [{"timestamp": "t", "event_type": "api_call", "tokens": 1000000001}]}',
            "invalid_value",
        ),
        (
            "stream_event",
            '{"type": "completed", "request_id": "r", "cost_usd": 1e300}',
            "invalid_value",
        ),
        ("analytics", '{"totals": {"requests": 1, "actual_cost": 2e9}}', "invalid_value"),
        (
            "analytics",
            '{"activity": [{"timestamp": "t", "event_type": "x", "cost": 1e400}]}',
            "invalid_json",
        ),
    ],
)
def test_bad_frames_raise_a_bounded_kind(event: str, data: str, kind: str) -> None:
    """Every bad frame is a WireError with a short kind for counters."""
    with pytest.raises(WireError) as caught:
        parse_frame(event, data)
    assert caught.value.kind == kind


def test_unknown_keys_are_ignored() -> None:
    """New fields from a newer proxy do not break parsing."""
    frame = parse_frame("analytics", '{"project": {"calls": 1, "new_field": [1]}, "extra": {}}')
    assert isinstance(frame, Snapshot)
    assert frame.project.calls == 1


def test_exponent_floats_parse() -> None:
    """Tiny costs in exponent form are read as numbers."""
    frame = parse_frame("analytics", '{"project": {"cost": 1e-6, "calls": 1}}')
    assert isinstance(frame, Snapshot)
    assert frame.project.cost == 1e-6


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("2025-11-17T18:27:01+00:00", 0),
        ("2025-11-17T18:27:01.482+00:00", 482000),
        ("2025-11-17T18:27:01.482913+00:00", 482913),
        ("2025-11-17T18:27:01.482913517+00:00", 482913),
        ("2025-11-17T18:27:01.482913517Z", 482913),
    ],
)
def test_timestamps_with_0_to_9_fraction_digits(text: str, micro: int) -> None:
    """RFC 3339 with 0, 3, 6 or 9 fractional digits parses to the microsecond."""
    parsed = parse_timestamp(text)
    assert parsed is not None
    assert parsed.microsecond == micro
    assert parsed.utcoffset() is not None


def test_event_identity_keeps_nanoseconds() -> None:
    """Two events a nanosecond apart are different events."""
    base = {"event_type": "api_call", "model": "m", "tokens": 1, "latency_ms": 1, "cost": 0.1}
    first = Snapshot.model_validate(
        {"activity": [{**base, "timestamp": "2025-11-17T18:27:01.482913517+00:00"}]}
    ).activity[0]
    second = Snapshot.model_validate(
        {"activity": [{**base, "timestamp": "2025-11-17T18:27:01.482913518+00:00"}]}
    ).activity[0]
    assert event_key(first) != event_key(second)


@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    digits=st.text("0123456789", max_size=12),
    separator=st.sampled_from(["T", " "]),
    zone=st.sampled_from(["+00:00", "Z", "z", "+05:30", "-08:00", "", "+0530"]),
    padding=st.sampled_from(["", " "]),
)
def test_fast_timestamp_path_agrees_with_the_lenient_parser(
    moment: datetime, digits: str, separator: str, zone: str, padding: str
) -> None:
    """fromisoformat's fast path reads every RFC 3339 shape exactly as the normalising one,
    and whatever parse_timestamp returns lies within [EARLIEST, LATEST)."""
    fraction = f".{digits}" if digits else ""
    text = f"{padding}{moment.strftime(f'%Y-%m-%d{separator}%H:%M:%S')}{fraction}{zone}{padding}"
    fast = wire_module._parse_fast(text)
    assert fast is None or fast == wire_module._parse_lenient(text)
    parsed = parse_timestamp(text)
    assert parsed is None or wire_module.EARLIEST <= parsed < wire_module.LATEST
    assert parsed is None or parsed == wire_module._parse_lenient(text)


@pytest.mark.parametrize(
    "text",
    [
        "9999-12-31T23:30:00-01:00",  # year 10000 in UTC
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:30:00+01:00",  # year 0 in UTC
        "2200-01-01T00:00:00Z",
        "1899-12-31T23:59:59Z",
        "2025-11-17T18:27.01.48+00:00",  # shortened times Python 3.11 would read
        "2025-11-17T18.27:01+00:00",
        "2025-11-17T18:27",
    ],
)
def test_timestamps_out_of_range_or_shape_are_not_read(text: str) -> None:
    """A clock gone wrong or a malformed time gives None: the event counts when it was seen."""
    assert parse_timestamp(text) is None


@given(st.text(max_size=60))
def test_parse_timestamp_never_raises(text: str) -> None:
    """Garbage timestamps are None, never an exception."""
    parse_timestamp(text)


@given(st.text(max_size=200))
def test_parse_frame_only_raises_wire_errors(data: str) -> None:
    """Any data string either parses or raises WireError, never anything else."""
    with contextlib.suppress(WireError):
        parse_frame("analytics", data)
