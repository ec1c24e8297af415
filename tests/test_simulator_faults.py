"""Tests of the simulator's fault specs (``--fault AT:KIND[:ARG]`` and the JSON bodies)."""

from __future__ import annotations

import pytest

from cco_cost_monitor.simulator.faults import (
    DEFAULT_HUGE_LINE,
    FAULT_HELP,
    FAULT_KINDS,
    Fault,
    parse_fault_spec,
    parse_size,
)


@pytest.mark.parametrize(
    ("spec", "kind", "field", "value"),
    [
        ("30:restart", "restart", "down_seconds", None),
        ("30:restart:1.5", "restart", "down_seconds", 1.5),
        ("10:burst:80", "burst", "count", 80),
        ("1:http_500:3", "http_500", "count", 3),
        ("1:http_401", "http_401", "count", 1),
        ("2:stall:0.5", "stall", "seconds", 0.5),
        ("5:huge_line:1M", "huge_line", "size", 1024 * 1024),
        ("5:huge_line", "huge_line", "size", DEFAULT_HUGE_LINE),
        ("1:lag:7", "lag", "skipped", 7),
        ("0.5:wrong_content_type:2", "wrong_content_type", "count", 2),
    ],
)
def test_spec_sets_the_main_parameter(spec: str, kind: str, field: str, value: object) -> None:
    """``AT:KIND[:ARG]`` sets the time, the kind and the kind's main parameter."""
    scheduled = parse_fault_spec(spec)
    assert scheduled.at == float(spec.split(":", maxsplit=1)[0])
    assert scheduled.fault.kind == kind
    assert getattr(scheduled.fault, field) == value


def test_error_message_keeps_its_colons() -> None:
    """The error_event message is everything after the second colon."""
    fault = parse_fault_spec("3:error_event:Serialization failed: key: x").fault
    assert fault.message == "Serialization failed: key: x"


def test_burst_defaults_to_more_than_a_window() -> None:
    """A burst without a count has more requests than the 20-event window."""
    assert parse_fault_spec("1:burst").fault.count > 20
    assert Fault.from_json({"kind": "burst"}).count > 20


@pytest.mark.parametrize(
    "spec",
    ["restart", "x:restart", "-1:drop", "1:nope", "1:drop:3", "1:burst:many", "1:stall:soon"],
)
def test_bad_specs_are_rejected(spec: str) -> None:
    """A malformed spec raises ValueError with a message, never a default guess."""
    with pytest.raises(ValueError, match=r"\w"):
        parse_fault_spec(spec)


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "burst", "count": "9"},
        {"kind": "burst", "count": True},
        {"kind": "burst", "count": 0},
        {"kind": "burst", "count": 10**9},
        {"kind": "huge_line", "size": 1 << 40},
        {"kind": "stall", "seconds": -1},
        {"kind": "drop", "abort": "yes"},
        {"kind": "restart", "colour": "red"},
        {"kind": "meteor"},
        {"count": 3},
        ["restart"],
    ],
)
def test_bad_bodies_are_rejected(body: object) -> None:
    """A JSON body with a wrong type, value, key or kind is refused."""
    with pytest.raises(ValueError, match=r"\w"):
        Fault.from_json(body)


def test_json_round_trip_keeps_only_the_kinds_parameters() -> None:
    """A fault's JSON names its kind and its own parameters only."""
    fault = Fault.from_json({"kind": "drop", "abort": True})
    assert fault.to_json() == {"kind": "drop", "abort": True}
    assert Fault.from_json({"kind": "huge_line", "size": "2K"}).to_json() == {
        "kind": "huge_line",
        "size": 2048,
    }


def test_every_kind_is_documented() -> None:
    """Each fault kind has a help line for ``--help``."""
    assert set(FAULT_HELP) == set(FAULT_KINDS)


@pytest.mark.parametrize(("text", "size"), [("10", 10), ("2K", 2048), ("1.5M", 1572864)])
def test_sizes_accept_binary_suffixes(text: str, size: int) -> None:
    """Sizes are bytes, or K/M/G binary multiples."""
    assert parse_size(text) == size
