"""What the daemon does while nothing happens: no work repeated for nothing (issue 19)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.config import Settings
from cco_cost_monitor.engine import Engine, bucket_start
from cco_cost_monitor.projections import HOUR, HistoryProfile
from cco_cost_monitor.reconciler import Accounting
from cco_cost_monitor.server import Service
from tests.builders import accounted_event


def reference_expected(
    profile: HistoryProfile, engine: Engine, start: float, end: float
) -> tuple[float, float]:
    """The slot-by-slot walk as it was written first (bucket_start, then slot)."""
    total = 0.0
    variance = 0.0
    at = start
    while at < end:
        slot_start = bucket_start(datetime.fromtimestamp(at, UTC), "hour", engine.zone)
        slot_end = min(slot_start + HOUR, end)
        fraction = max(0.0, (slot_end - at) / HOUR)
        mean, var = profile.slot(datetime.fromtimestamp(at, engine.zone))
        total += mean * fraction
        variance += var * fraction
        at = slot_end if slot_end > at else at + HOUR
    return total, variance


ZONES = ["UTC", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata", "America/St_Johns"]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.floats(1.7e9, 1.8e9),
    st.floats(0, 40 * 86400),
    st.lists(st.floats(0, 5), min_size=24, max_size=24),
    st.lists(st.floats(0.05, 3), min_size=7, max_size=7),
)
def test_the_faster_hour_walk_gives_exactly_the_same_expectation(
    zone: str, start: float, length: float, means: list[float], factors: list[float]
) -> None:
    """Bit for bit the first implementation's result, across DST and half-hour zones."""
    engine = Engine(zone=ZoneInfo(zone))
    profile = HistoryProfile(days=10, hod_mean=means, hod_var=means[::-1], weekday_factor=factors)
    assert profile.expected(engine, start, start + length) == reference_expected(
        profile, engine, start, start + length
    )


def test_budgets_are_not_re_evaluated_while_nothing_changes(tmp_path: Path) -> None:
    """The evaluation loop (every second here) projects once, then again only when a count
    changes: with a month of history one evaluation costs ~2-3 ms, and it ran every 5 s."""
    service = Service(Settings(state_dir=tmp_path, snapshot_interval_seconds=0.2))
    calls: list[float] = []
    evaluate = service.evaluate_budgets

    def counted() -> None:
        calls.append(time.monotonic())
        evaluate()

    service.evaluate_budgets = counted  # type: ignore[method-assign]

    async def scenario() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(service.evaluate_loop)
            await anyio.sleep(3.5)
            assert len(calls) == 1
            now = datetime.now(UTC)
            event = accounted_event(
                source="p", key="k1", occurred_at=now, cost=0.25, model="claude-sonnet-4"
            )
            service.engine.record(Accounting("p", now, (event,)))
            await anyio.sleep(1.5)
            assert len(calls) == 2
            tasks.cancel_scope.cancel()

    anyio.run(scenario)
    assert math.isclose(calls[1] - calls[0], 4.0, abs_tol=1.2)
    assert service.projections is not None
