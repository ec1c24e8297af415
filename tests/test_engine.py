"""The metrics engine: aggregates, buckets, burn rates, periods, bounds."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.engine import BUCKET_RETENTION, MAX_MODELS, OTHER_MODELS, Engine
from cco_cost_monitor.reconciler import AccountedEvent, Accounting, Unattributed
from tests.builders import accounted_event

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def event(
    at: datetime, cost: float, model: str = "claude-sonnet-4", key: str = ""
) -> AccountedEvent:
    return accounted_event(
        source="p",
        key=key or f"{at.timestamp()}-{model}-{cost}",
        occurred_at=at,
        cost=cost,
        model=model,
        tier="sonnet" if "sonnet" in model else "other",
        latency_ms=10,
    )


def record(engine: Engine, at: datetime, cost: float, model: str = "claude-sonnet-4") -> None:
    engine.record(Accounting("p", at, (event(at, cost, model),)))


def test_totals_by_tier_and_model_add_up() -> None:
    """Costs land in their tier and model, and the totals are their sum."""
    engine = Engine()
    record(engine, T0, 1.0)
    record(engine, T0, 2.5, "gpt-4")
    assert engine.total_cost() == pytest.approx(3.5)
    assert engine.by_tier()["sonnet"]["cost_usd"] == pytest.approx(1.0)
    assert engine.by_tier()["other"]["cost_usd"] == pytest.approx(2.5)
    assert engine.by_model()["gpt-4"]["requests"] == 1


def test_burn_rate_does_not_explode_on_a_first_burst() -> None:
    """$1 in the first 5 s of a run reads as at most $24/h over 5 minutes, not $720/h."""
    engine = Engine()
    record(engine, T0, 1.0)
    rate = engine.burn_rate(T0 + timedelta(seconds=5), 300)
    assert rate == pytest.approx(1.0 / 150 * 3600)
    assert rate <= 24.0


def test_burn_rate_over_a_full_window() -> None:
    """$6 spread over the last hour is $6/h over the 1 h window."""
    engine = Engine()
    for minute in range(60):
        record(engine, T0 + timedelta(minutes=minute, seconds=30), 0.1)
    now = T0 + timedelta(hours=1)
    assert engine.burn_rate(now, 3600) == pytest.approx(6.0, rel=0.02)


def test_unattributed_spend_is_spread_over_the_disconnected_interval() -> None:
    """$6 found after an hour-long disconnect is spread over that hour, not one minute."""
    engine = Engine()
    record(engine, T0, 0.0)
    remainder = Unattributed("p", T0 + timedelta(hours=1), 3, 6.0, 0, "gap", T0)
    engine.record(Accounting("p", T0 + timedelta(hours=1), (), remainder))
    minutes = engine.timeseries("minute")
    assert max(row["cost_usd"] for row in minutes) == pytest.approx(0.1, rel=0.05)
    assert sum(row["cost_usd"] for row in minutes) == pytest.approx(6.0)
    assert engine.sources["p"].unattributed_requests == 3


def test_today_follows_the_configured_zone_across_midnight() -> None:
    """Spend before local midnight is yesterday's, after it today's."""
    zone = ZoneInfo("America/New_York")
    engine = Engine(zone=zone)
    midnight = datetime(2026, 3, 10, 0, 0, tzinfo=zone)
    record(engine, midnight - timedelta(minutes=5), 2.0)
    record(engine, midnight + timedelta(minutes=5), 3.0)
    cost, requests = engine.period_totals(midnight + timedelta(hours=1), "today")
    assert (cost, requests) == (pytest.approx(3.0), 1)


def test_an_hour_is_3600_seconds_on_the_autumn_dst_day() -> None:
    """this_hour spans 3600 s even in the repeated hour of a DST change."""
    zone = ZoneInfo("Europe/Berlin")
    engine = Engine(zone=zone)
    repeated = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, first of two 02:30s
    start, end = engine.period_bounds(repeated, "this_hour")
    assert end.timestamp() - start.timestamp() == 3600  # same-zone subtraction ignores fold
    day_start, day_end = engine.period_bounds(repeated, "today")
    assert (day_end.timestamp() - day_start.timestamp()) == 25 * 3600


def test_model_table_folds_unknown_models_into_a_bounded_set() -> None:
    """More than MAX_MODELS distinct names fold into one bucket: labels stay bounded."""
    engine = Engine()
    for index in range(MAX_MODELS + 40):
        record(engine, T0, 0.01, f"model-{index}")
    assert len(engine.models) <= MAX_MODELS + 1
    assert any(model == OTHER_MODELS for _, _, model in engine.models)
    assert engine.total_cost() == pytest.approx(0.01 * (MAX_MODELS + 40))


def test_memory_stays_bounded_over_a_long_compressed_run() -> None:
    """200 days of traffic compressed in time: buckets are pruned, memory stops growing."""
    engine = Engine(recent_capacity=1000)
    tracemalloc.start()
    try:
        sizes = []
        for day in range(200):
            base = T0 + timedelta(days=day)
            for step in range(96):  # one event every 15 minutes
                record(engine, base + timedelta(minutes=15 * step), 0.01)
            engine.prune(base + timedelta(days=1))
            if day in (120, 199):
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert len(engine.buckets["minute"]) <= 3 * 60 + 1
    assert len(engine.buckets["hour"]) <= 14 * 24 + 1
    assert len(engine.buckets["day"]) == 201  # 200 days from noon: 201 dates, all retained
    assert len(engine.recent) == 1000
    assert sizes[1] < sizes[0] * 1.05 + 200_000  # no growth beyond noise after retention
    assert engine.total_cost() == pytest.approx(200 * 96 * 0.01)


def test_day_buckets_older_than_their_retention_are_pruned() -> None:
    """One event a day for longer than the day retention: the oldest days are dropped."""
    engine = Engine()
    days = BUCKET_RETENTION["day"].days + 20
    for day in range(days):
        record(engine, T0 + timedelta(days=day), 0.01)
    engine.prune(T0 + timedelta(days=days))
    assert len(engine.buckets["day"]) <= BUCKET_RETENTION["day"].days + 1
    assert engine.total_cost() == pytest.approx(days * 0.01)  # totals keep everything


def test_state_round_trip_keeps_every_counter() -> None:
    """to_dict/load_dict restores totals, models and buckets exactly."""
    engine = Engine(zone=ZoneInfo("Asia/Kolkata"))
    for minute in range(30):
        record(
            engine,
            T0 + timedelta(minutes=minute),
            0.25,
            "claude-sonnet-4" if minute % 2 else "gpt-4",
        )
    data = orjson.loads(orjson.dumps(engine.to_dict(), option=orjson.OPT_NON_STR_KEYS))
    restored = Engine(zone=ZoneInfo("Asia/Kolkata"))
    restored.load_dict(data)
    now = T0 + timedelta(minutes=30)
    assert restored.total_cost() == pytest.approx(engine.total_cost())
    assert restored.by_model() == engine.by_model()
    assert restored.period_totals(now, "today") == engine.period_totals(now, "today")
    assert restored.burn_rate(now, 300) == pytest.approx(engine.burn_rate(now, 300))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 86400), st.floats(0, 5)), max_size=60))
def test_day_buckets_sum_to_the_total(points: list[tuple[int, float]]) -> None:
    """Whatever the timing, the day buckets hold exactly the total cost."""
    engine = Engine(zone=ZoneInfo("Europe/Berlin"))
    for offset, cost in points:
        record(engine, T0 + timedelta(seconds=offset), cost)
    total = sum(row["cost_usd"] for row in engine.timeseries("day"))
    assert total == pytest.approx(engine.total_cost(), abs=1e-9)


def test_a_long_gap_fills_only_the_buckets_inside_retention() -> None:
    """$100 found after 10 days away fills 3 h of minutes, not 14,400 minute buckets."""
    engine = Engine()
    end = T0 + timedelta(days=10)
    engine.record(Accounting("p", end, (), Unattributed("p", end, 7, 100.0, 0, "gap", T0)))
    assert len(engine.buckets["minute"]) <= 3 * 60 + 1
    day_total = sum(row["cost_usd"] for row in engine.timeseries("day"))
    assert day_total == pytest.approx(100.0)
    minute_total = sum(row["cost_usd"] for row in engine.timeseries("minute"))
    assert minute_total == pytest.approx(100.0 * 3 / 240, rel=0.01)
    assert engine.total_cost() == pytest.approx(100.0)


def test_spread_always_advances_through_lord_howes_half_hour_fall_back() -> None:
    """A gap across Lord Howe's repeated half hour (+11 -> +10:30) is spread and ends."""
    zone = ZoneInfo("Australia/Lord_Howe")
    engine = Engine(zone=zone)
    start = datetime(2026, 4, 4, 14, 50, tzinfo=UTC)  # 01:50 +11, ten minutes before the change
    end = datetime(2026, 4, 4, 15, 20, tzinfo=UTC)  # 01:50 +10:30, the second time round
    engine.record(Accounting("p", end, (), Unattributed("p", end, 1, 3.0, 0, "gap", start)))
    assert sum(row["cost_usd"] for row in engine.timeseries("hour")) == pytest.approx(3.0)
    assert sum(row["cost_usd"] for row in engine.timeseries("minute")) == pytest.approx(3.0)
    bucket_start_ = engine.period_bounds(end, "this_hour")[0].timestamp()
    assert bucket_start_ <= end.timestamp() < bucket_start_ + 3600


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from(["Australia/Lord_Howe", "Europe/Berlin", "America/Santiago", "Asia/Kolkata"]),
    st.sampled_from(["minute", "hour", "day"]),
)
def test_a_bucket_always_contains_its_moment(moment: datetime, zone_name: str, kind: str) -> None:
    """bucket_start <= moment < next_bucket_start, with whole-second starts, in any zone."""
    from cco_cost_monitor.engine import bucket_start, next_bucket_start

    zone = ZoneInfo(zone_name)
    start = bucket_start(moment, kind, zone)  # type: ignore[arg-type]
    assert start == int(start)
    assert start <= moment.timestamp() < next_bucket_start(start, kind, zone)  # type: ignore[arg-type]


def test_by_model_says_the_calculated_cost_cannot_see_cache_tokens() -> None:
    """Every by_model row labels calculated_cost_usd as list prices without cache tokens:
    the estimate from combined `tokens` is no price-drift signal (issue 19)."""
    from cco_cost_monitor.engine import CALCULATED_COST_BASIS

    engine = Engine()
    record(engine, T0, 0.5, "claude-sonnet-4-5")
    record(engine, T0, 0.1, "claude-haiku-4-5")
    rows = engine.by_model()
    assert rows
    assert {row["calculated_cost_basis"] for row in rows.values()} == {CALCULATED_COST_BASIS}
    assert CALCULATED_COST_BASIS == "list_prices_without_cache_tokens"
