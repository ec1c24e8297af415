"""Budget states and the alert state machine: each threshold once per period, predictions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.budgets import Alert, AlertTracker, evaluate
from cco_cost_monitor.config import BudgetLimits, BudgetSettings
from cco_cost_monitor.engine import Engine
from tests.test_projections import feed

BERLIN = ZoneInfo("Europe/Berlin")
NOON = datetime(2026, 3, 3, 12, tzinfo=BERLIN)


def budget(
    ratio: float,
    *,
    state: str | None = None,
    projected_ratio: float | None = None,
    start: str = "2026-03-03T00:00:00+01:00",
    period: str = "daily",
    tier: str | None = None,
    crossing_at: str | None = None,
) -> dict[str, Any]:
    """An evaluate()-shaped entry with a $100 limit."""
    projected = 100 * (projected_ratio if projected_ratio is not None else ratio)
    if state is None:
        state = "exceeded" if ratio >= 1 else "projected_to_exceed" if projected > 100 else "ok"
    return {
        "period": period,
        "tier": tier,
        "limit_usd": 100.0,
        "spent_usd": 100 * ratio,
        "used_ratio": ratio,
        "projected_usd": projected,
        "state": state,
        "crossing_at": crossing_at,
        "period_start": start,
        "period_end": "2026-03-04T00:00:00+01:00",
    }


def test_states() -> None:
    """ok, warning, projected_to_exceed and exceeded follow spend and projection."""
    engine = Engine(zone=BERLIN)
    limits = BudgetSettings(daily_usd=10, weekly_usd=100, monthly_usd=1000)
    feed(engine, (NOON - timedelta(hours=1)).astimezone(UTC), 1.0)
    assert {b["state"] for b in evaluate(limits, engine, None, NOON)} == {"ok"}

    projections = {
        "end_of_day": {"cost_usd": 12.0, "low_usd": 9.0, "high_usd": 15.0},
        "end_of_week": {"cost_usd": 50.0, "low_usd": 9.0, "high_usd": 80.0},
        "end_of_month": {"cost_usd": 50.0, "low_usd": 9.0, "high_usd": 80.0},
    }
    rows = {b["period"]: b for b in evaluate(limits, engine, projections, NOON)}
    assert rows["daily"]["state"] == "projected_to_exceed"
    assert rows["weekly"]["state"] == "ok"
    # $11 more over 12 h: $0.9167/h, so $9 more to the limit takes 9.82 h -> 21:49.
    assert rows["daily"]["crossing_at"].startswith("2026-03-03T21:49")

    feed(engine, (NOON - timedelta(minutes=30)).astimezone(UTC), 6.5)
    rows = {b["period"]: b for b in evaluate(limits, engine, None, NOON)}
    assert rows["daily"]["used_ratio"] == 0.75
    assert rows["daily"]["state"] in ("warning", "projected_to_exceed")

    feed(engine, (NOON - timedelta(minutes=10)).astimezone(UTC), 3.0)
    rows = {b["period"]: b for b in evaluate(limits, engine, None, NOON)}
    assert rows["daily"]["state"] == "exceeded"
    assert rows["daily"]["spent_usd"] == 10.5


def test_warning_state_without_projection_overrun() -> None:
    """Spend at 80 % with a projection under the limit reads as a warning."""
    engine = Engine(zone=BERLIN)
    feed(engine, (NOON - timedelta(hours=1)).astimezone(UTC), 8.0)
    projections = {"end_of_day": {"cost_usd": 9.0, "low_usd": 8.0, "high_usd": 9.5}}
    rows = evaluate(BudgetSettings(daily_usd=10), engine, projections, NOON)
    assert [r["state"] for r in rows] == ["warning"]


def test_contract_fields_and_per_tier() -> None:
    """Entries carry the contract fields plus tier; per-tier limits count only that tier."""
    engine = Engine(zone=BERLIN)
    feed(engine, (NOON - timedelta(hours=1)).astimezone(UTC), 3.0, "opus")
    feed(engine, (NOON - timedelta(hours=1)).astimezone(UTC), 1.0, "haiku")
    limits = BudgetSettings(daily_usd=20, per_tier={"opus": BudgetLimits(daily_usd=2)})
    rows = evaluate(limits, engine, None, NOON)
    assert [(r["tier"], r["period"]) for r in rows] == [(None, "daily"), ("opus", "daily")]
    for row in rows:
        assert {"period", "limit_usd", "spent_usd", "used_ratio", "projected_usd", "state"} <= set(
            row
        )
    assert rows[0]["spent_usd"] == 4.0
    assert rows[1]["spent_usd"] == 3.0
    assert rows[1]["state"] == "exceeded"
    orjson.dumps(rows)


def test_no_limits_no_entries() -> None:
    """Without any configured limit the budgets list is empty."""
    assert evaluate(BudgetSettings(), Engine(zone=BERLIN), None, NOON) == []


def test_each_threshold_fires_once_per_period_while_spend_hovers() -> None:
    """Spend oscillating around every line fires each threshold exactly once."""
    tracker = AlertTracker(predictive=False)
    fired: list[float | None] = []
    for ratio in (0.1, 0.49, 0.5, 0.49, 0.51, 0.74, 0.76, 0.74, 0.76, 0.9, 0.89, 0.95, 1.0, 1.2):
        fired += [a.threshold for a in tracker.update([budget(ratio)], NOON)]
    assert fired == [0.5, 0.75, 0.9, 1.0]


def test_new_period_rearms_thresholds() -> None:
    """A new budget period fires the thresholds again."""
    tracker = AlertTracker(predictive=False)
    assert len(tracker.update([budget(0.6)], NOON)) == 1
    assert tracker.update([budget(0.6)], NOON) == []
    tomorrow = budget(0.6, start="2026-03-04T00:00:00+01:00")
    assert [a.threshold for a in tracker.update([tomorrow], NOON + timedelta(days=1))] == [0.5]


def test_jump_fires_only_the_highest_line() -> None:
    """A jump past several lines announces the highest one, lower ones count as fired."""
    tracker = AlertTracker(predictive=False)
    alerts = tracker.update([budget(0.95)], NOON)
    assert [a.threshold for a in alerts] == [0.9]
    assert alerts[0].payload["skipped_thresholds"] == [0.5, 0.75]
    assert [a.threshold for a in tracker.update([budget(1.0)], NOON)] == [1.0]


def test_budgets_are_tracked_separately() -> None:
    """Daily, weekly and per-tier budgets each have their own thresholds."""
    tracker = AlertTracker(predictive=False)
    rows = [budget(0.5), budget(0.5, period="weekly"), budget(0.5, tier="opus")]
    assert len(tracker.update(rows, NOON)) == 3
    assert tracker.update(rows, NOON) == []


def test_prediction_fires_once_with_crossing_time_then_recovers() -> None:
    """A predicted overrun alerts once with its crossing time; dropping back sends a notice."""
    tracker = AlertTracker(thresholds=[1.0])
    crossing = "2026-03-03T16:40:00+01:00"
    over = budget(0.3, projected_ratio=1.2, crossing_at=crossing)
    alerts = tracker.update([over], NOON)
    assert [a.kind for a in alerts] == ["predicted"]
    assert "projected to exceed the daily budget at 16:40" in alerts[0].message
    # Hovering at the limit neither re-fires nor recovers.
    assert tracker.update([budget(0.3, projected_ratio=0.99)], NOON) == []
    assert tracker.update([over], NOON) == []
    recovered = tracker.update([budget(0.3, projected_ratio=0.8)], NOON)
    assert [a.kind for a in recovered] == ["recovered"]
    assert tracker.update([budget(0.3, projected_ratio=0.8)], NOON) == []


def test_prediction_can_be_disabled() -> None:
    """With predictive=False no predicted alert fires."""
    tracker = AlertTracker(thresholds=[1.0], predictive=False)
    assert tracker.update([budget(0.3, projected_ratio=1.5)], NOON) == []


def test_alert_and_tracker_round_trip() -> None:
    """Alerts and tracker state survive to_dict/from_dict: nothing re-fires after a restore."""
    tracker = AlertTracker()
    alerts = tracker.update([budget(0.8, projected_ratio=1.3)], NOON)
    assert {a.kind for a in alerts} == {"threshold", "predicted"}
    for alert in alerts:
        data = orjson.loads(orjson.dumps(alert.to_dict()))
        assert Alert.from_dict(data) == alert
    saved = orjson.loads(orjson.dumps(tracker.to_dict()))
    restored = AlertTracker.from_dict(saved)
    assert restored.update([budget(0.8, projected_ratio=1.3)], NOON) == []
    assert [a.threshold for a in restored.update([budget(0.95, projected_ratio=1.3)], NOON)] == [
        0.9
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 2, allow_nan=False), max_size=60))
def test_any_spend_path_fires_each_threshold_at_most_once(path: list[float]) -> None:
    """For any spend path in one period no threshold fires twice, and all crossed are covered."""
    tracker = AlertTracker(predictive=False)
    fired: list[float] = []
    for ratio in path:
        for alert in tracker.update([budget(ratio)], NOON):
            assert alert.threshold is not None
            fired.append(alert.threshold)
    assert len(fired) == len(set(fired))
    assert fired == sorted(fired)
    if path and max(path) >= 0.5:
        assert fired
        assert max(t for t in tracker.thresholds if t <= max(path)) == fired[-1]
