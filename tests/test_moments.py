"""The one ``since`` grammar (terminal, db export and the HTTP API share it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cco_cost_monitor.moments import UNITS, parse_moment

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # the night Europe/Berlin moves to summer time
BERLIN = ZoneInfo("Europe/Berlin")


@given(st.integers(0, 10_000), st.sampled_from(sorted(UNITS)))
def test_relative_forms_go_back_that_long(amount: int, unit: str) -> None:
    assert parse_moment(f"{amount}{unit}", NOW) == NOW - timedelta(seconds=amount * UNITS[unit])


def test_words_epoch_and_times() -> None:
    assert parse_moment("now", NOW) == NOW
    assert parse_moment(" Today ", NOW, BERLIN) == datetime(2026, 3, 29, tzinfo=BERLIN)
    assert parse_moment("1763400000", NOW) == datetime.fromtimestamp(1763400000, UTC)
    assert parse_moment("2026-11-20T10:00:00Z", NOW) == datetime(2026, 11, 20, 10, tzinfo=UTC)
    # Without an offset: the caller's zone (local on the terminal, UTC on the API).
    assert parse_moment("2026-01-05", NOW, BERLIN) == datetime(2026, 1, 5, tzinfo=BERLIN)
    assert parse_moment("2026-01-05T08:00", NOW) == datetime(2026, 1, 5, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    "value", ["inf", "nan", "1e20", "-1e20", "99999999999999d", "yesterday", "2026-13-40", ""]
)
def test_what_names_no_moment_is_a_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        parse_moment(value, NOW)
