"""Projections: non-negative, finite, plausible, stable under bursts, correct across DST."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.engine import Engine, bucket_start
from cco_cost_monitor.projections import (
    HORIZONS,
    LEVEL_MAX,
    billing_month_bounds,
    horizon_bounds,
    project,
)
from cco_cost_monitor.reconciler import AccountedEvent, Accounting
from tests.builders import accounted_event

BERLIN = ZoneInfo("Europe/Berlin")
_keys = count()


def event(at: datetime, cost: float, tier: str = "sonnet") -> AccountedEvent:
    return accounted_event(
        source="s",
        key=f"k{next(_keys)}",
        occurred_at=at,
        cost=cost,
        tier=tier,
        event_type="api",
        model="m",
        tokens=None,
        latency_ms=None,
        status=None,
    )


def feed(engine: Engine, at: datetime, cost: float, tier: str = "sonnet") -> None:
    engine.record(Accounting(source="s", observed_at=at, events=(event(at, cost, tier),)))


def check_invariants(result: dict[str, dict[str, Any]]) -> None:
    for name, row in result.items():
        values = [row["cost_usd"], row["low_usd"], row["high_usd"], row["spent_usd"]]
        assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in values), name
        spent, low, central, high = (
            float(row[k]) for k in ("spent_usd", "low_usd", "cost_usd", "high_usd")
        )
        assert spent <= low <= central <= high, name


def steady_history(
    engine: Engine, start: datetime, days: int, per_hour: float, until: datetime | None = None
) -> None:
    """One call per local office hour (09-17) of ``per_hour`` dollars, every day until ``until``."""
    for day in range(days):
        base = (start + timedelta(days=day)).replace(hour=0)
        for hour in range(9, 18):
            at = base.replace(hour=hour, minute=30).astimezone(UTC)
            if until is None or at <= until:
                feed(engine, at, per_hour)


def test_empty_engine_projects_zero() -> None:
    """With nothing recorded every projection is zero with a zero-width band."""
    result = project(Engine(zone=BERLIN), datetime(2026, 3, 3, 12, tzinfo=UTC))
    assert set(result) == set(HORIZONS)
    for row in result.values():
        assert row["cost_usd"] == row["low_usd"] == row["high_usd"] == 0.0


def test_single_burst_early_in_the_day_does_not_explode() -> None:
    """A $5 burst 10 s into the day projects tens of dollars, not thousands."""
    engine = Engine(zone=BERLIN)
    midnight = datetime(2026, 3, 3, tzinfo=BERLIN)
    feed(engine, midnight.astimezone(UTC), 5.0)
    now = midnight + timedelta(seconds=10)
    result = project(engine, now)
    check_invariants(result)
    day = result["end_of_day"]
    assert day["spent_usd"] == 5.0
    # The floored burn rate: $5 over >= half the 3 h window, i.e. <= $3.34/h for 24 h.
    assert day["cost_usd"] < 5 + 3.34 * 24
    assert day["high_usd"] < 500
    assert result["end_of_hour"]["cost_usd"] < 5 + 10.0


def test_projection_bounded_by_plausible_rates() -> None:
    """With steady history, projections stay within the highest observed hourly spend."""
    engine = Engine(zone=BERLIN)
    now = datetime(2026, 3, 10, 12, 45, tzinfo=BERLIN)
    steady_history(engine, datetime(2026, 3, 1, tzinfo=BERLIN), 10, 2.0, now)
    result = project(engine, now)
    check_invariants(result)
    day = result["end_of_day"]
    assert day["method"] == "blended"
    assert day["history_weight"] > 0.8
    # 9 office hours a day at $2: the day should land near $18.
    assert 14 <= day["cost_usd"] <= 22
    for row in result.values():
        remaining = (datetime.fromisoformat(row["period_end"]) - now).total_seconds() / 3600
        assert row["cost_usd"] <= row["spent_usd"] + 1.5 * 2.0 * max(remaining, 0) + 1e-9


def test_history_follows_the_hour_of_day_profile() -> None:
    """After office hours, the rest of the day projects almost nothing (no linear smear)."""
    engine = Engine(zone=BERLIN)
    evening = datetime(2026, 3, 10, 20, 0, tzinfo=BERLIN)
    steady_history(engine, datetime(2026, 3, 1, tzinfo=BERLIN), 10, 2.0, evening)
    day = project(engine, evening)["end_of_day"]
    assert day["spent_usd"] == 18.0
    assert day["cost_usd"] < 19.0
    naive = 18.0 / 20 * 24
    assert abs(day["cost_usd"] - 18) < abs(naive - 18)


def test_across_midnight_the_day_restarts() -> None:
    """Just after midnight the day's spent resets while the week and month keep counting."""
    engine = Engine(zone=BERLIN)
    before = datetime(2026, 3, 4, 23, 59, tzinfo=BERLIN)
    feed(engine, before.astimezone(UTC), 3.0)
    after = datetime(2026, 3, 5, 0, 1, tzinfo=BERLIN)
    result = project(engine, after)
    check_invariants(result)
    assert result["end_of_day"]["spent_usd"] == 0.0
    assert result["end_of_week"]["spent_usd"] == 3.0
    assert result["end_of_month"]["spent_usd"] == 3.0
    assert result["end_of_day"]["period_start"] == "2026-03-05T00:00:00+01:00"


def test_dst_autumn_day_has_25_hours() -> None:
    """On the autumn change the day is 25 h of absolute time and the hour is always 1 h."""
    engine = Engine(zone=BERLIN)
    # 02:30 CEST, the first of the two 02:30s of 2026-10-25.
    now = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    feed(engine, now - timedelta(minutes=20), 1.0)
    start, end = horizon_bounds(engine, now, "end_of_day")
    assert end.timestamp() - start.timestamp() == 25 * 3600
    for moment in (now, now + timedelta(hours=1)):  # both 02:30s
        hour_start, hour_end = horizon_bounds(engine, moment, "end_of_hour")
        assert hour_end.timestamp() - hour_start.timestamp() == 3600
        assert hour_start.timestamp() <= moment.timestamp() < hour_end.timestamp()
    result = project(engine, now)
    check_invariants(result)
    # 22.5 absolute hours remain, though the wall clock shows 21.5 until midnight.
    row = result["end_of_day"]
    remaining = (end - now).total_seconds() / 3600
    assert remaining == 22.5
    assert math.isclose(
        row["cost_usd"], row["spent_usd"] + row["rate_usd_per_hour"] * remaining, rel_tol=1e-9
    )


def test_dst_history_profile_is_finite_over_the_change() -> None:
    """A history spanning the autumn change keeps every projection finite and ordered."""
    engine = Engine(zone=BERLIN)
    for hours in range(0, 30, 3):
        now = datetime(2026, 10, 25, tzinfo=BERLIN).astimezone(UTC) + timedelta(hours=hours)
        engine = Engine(zone=BERLIN)
        steady_history(engine, datetime(2026, 10, 19, tzinfo=BERLIN), 9, 1.0, now)
        result = project(engine, now)
        check_invariants(result)
        assert result["end_of_day"]["method"] == "blended"


def test_billing_day_starts_the_month() -> None:
    """With billing_day=15 the month runs from the 15th to the next 15th, local midnight."""
    engine = Engine(zone=BERLIN)
    start, end = billing_month_bounds(engine, datetime(2026, 3, 10, 12, tzinfo=UTC), 15)
    assert start.isoformat() == "2026-02-15T00:00:00+01:00"
    assert end.isoformat() == "2026-03-15T00:00:00+01:00"
    start, end = billing_month_bounds(engine, datetime(2026, 12, 20, tzinfo=UTC), 15)
    assert (start.month, end.year, end.month) == (12, 2027, 1)
    feed(engine, datetime(2026, 3, 14, 10, tzinfo=UTC), 2.0)
    feed(engine, datetime(2026, 3, 16, 10, tzinfo=UTC), 3.0)
    result = project(engine, datetime(2026, 3, 16, 12, tzinfo=UTC), billing_day=15)
    assert result["end_of_month"]["spent_usd"] == 3.0


def test_tier_projection_counts_only_that_tier() -> None:
    """A per-tier projection ignores the other tiers' spend."""
    engine = Engine(zone=BERLIN)
    now = datetime(2026, 3, 3, 12, tzinfo=UTC)
    feed(engine, now - timedelta(minutes=30), 4.0, "opus")
    feed(engine, now - timedelta(minutes=20), 1.0, "haiku")
    opus = project(engine, now, tier="opus")["end_of_day"]
    haiku = project(engine, now, tier="haiku")["end_of_day"]
    assert opus["spent_usd"] == 4.0
    assert haiku["spent_usd"] == 1.0
    assert opus["cost_usd"] > haiku["cost_usd"]


bucket_costs = st.lists(
    st.tuples(st.integers(0, 16 * 24 * 60 - 1), st.floats(0, 1000, allow_nan=False)),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(bucket_costs, st.integers(0, 16 * 24 * 60 - 1), st.sampled_from(["UTC", "Europe/Berlin"]))
def test_bands_contain_the_central_value(
    entries: list[tuple[int, float]], now_minute: int, zone_name: str
) -> None:
    """For any bucket contents the band is finite, non-negative and ordered around the center."""
    engine = Engine(zone=ZoneInfo(zone_name))
    origin = datetime(2026, 10, 12, tzinfo=UTC)
    now = origin + timedelta(minutes=now_minute, seconds=17)
    for minute, cost in entries:
        at = origin + timedelta(minutes=minute)
        if at <= now:
            feed(engine, at, cost)
    engine.prune(now)
    check_invariants(project(engine, now))


def test_random_history_stays_plausible() -> None:
    """With 14 days of random office traffic the day projection stays within 3x the max day."""
    rng = random.Random(3)
    engine = Engine(zone=BERLIN)
    start = datetime(2026, 3, 1, tzinfo=BERLIN)
    totals: dict[int, float] = {}
    for day in range(15):
        for _ in range(rng.randint(0, 40)):
            at = (start + timedelta(days=day)).replace(hour=rng.randint(8, 19))
            if day == 14 and at.hour >= 23:
                continue
            cost = rng.uniform(0, 2)
            totals[day] = totals.get(day, 0.0) + cost
            feed(engine, at.astimezone(UTC), cost)
    now = datetime(2026, 3, 15, 23, 0, tzinfo=BERLIN)
    result = project(engine, now)
    check_invariants(result)
    assert result["end_of_day"]["cost_usd"] <= 3 * max(totals.values()) + 1


def test_hour_buckets_align_with_projection_periods() -> None:
    """The hour period starts at the engine's hour bucket containing now."""
    engine = Engine(zone=BERLIN)
    now = datetime(2026, 3, 3, 12, 34, tzinfo=UTC)
    start, _ = horizon_bounds(engine, now, "end_of_hour")
    assert start.timestamp() == bucket_start(now, "hour", BERLIN)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0, 50, allow_nan=False), min_size=24 * 3, max_size=24 * 15),
    st.integers(0, 3599),
)
def test_bands_with_history_contain_the_central_value(hourly: list[float], second: int) -> None:
    """With any 3-15 days of hourly history the blended band stays ordered and finite."""
    engine = Engine(zone=BERLIN)
    origin = datetime(2026, 10, 10, tzinfo=BERLIN).astimezone(UTC)
    for hour, cost in enumerate(hourly):
        if cost > 0:
            feed(engine, origin + timedelta(hours=hour, minutes=1), cost)
    now = origin + timedelta(hours=len(hourly), seconds=second)
    engine.first_observation = origin
    result = project(engine, now)
    check_invariants(result)
    assert result["end_of_month"]["method"] == "blended"
    top = max(hourly)
    for row in result.values():
        remaining = (datetime.fromisoformat(row["period_end"]) - now).total_seconds() / 3600
        assert row["cost_usd"] <= row["spent_usd"] + LEVEL_MAX * top * max(remaining, 0) + 1e-6


def test_worked_example_of_the_docs() -> None:
    """The worked example in docs/projections.md: $27.55 in [$24.60, $30.51] at 14:00."""
    engine = Engine(zone=BERLIN)
    steady_history(engine, datetime(2026, 3, 1, tzinfo=BERLIN), 9, 2.0)
    for hour in range(9, 14):
        feed(engine, datetime(2026, 3, 10, hour, 30, tzinfo=BERLIN).astimezone(UTC), 3.0)
    day = project(engine, datetime(2026, 3, 10, 14, tzinfo=BERLIN))["end_of_day"]
    assert (round(day["cost_usd"], 2), round(day["low_usd"], 2), round(day["high_usd"], 2)) == (
        27.55,
        24.60,
        30.51,
    )
