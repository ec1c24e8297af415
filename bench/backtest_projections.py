"""Backtest: end-of-day projection at noon vs the actual end-of-day spend, over a synthetic month.

Traffic has daily seasonality (office hours, a lunch dip, quiet nights), weekly seasonality
(quiet weekends) and a random level per day. Events are fed into an Engine in time order; at
each local noon the end-of-day projection of :func:`project` and of the naive linear method
(spent / elapsed x day length) are recorded, and compared with the day's actual total.

Run: ``python bench/backtest_projections.py [--seed N] [--days N] [--zone Europe/Berlin]``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cco_cost_monitor.engine import Engine
from cco_cost_monitor.projections import project
from cco_cost_monitor.reconciler import AccountedEvent, Accounting

# Requests per hour by local hour of day (weekday); weekends run at WEEKEND_SHARE.
HOURLY = [1, 0, 0, 0, 0, 0, 1, 3, 12, 30, 40, 38, 18, 30, 42, 40, 34, 22, 10, 8, 10, 8, 4, 2]
WEEKEND_SHARE = 0.25
MEAN_COST = 0.06


def event(at: datetime, cost: float, index: int) -> AccountedEvent:
    return AccountedEvent(
        source="bench",
        key=f"e{index}",
        occurred_at=at,
        event_type="api",
        model="m",
        tier="sonnet",
        requests=1,
        cache_hits=0,
        tokens=None,
        input_tokens=None,
        output_tokens=None,
        latency_ms=None,
        status=None,
        cost_usd=cost,
        recorded_cost_usd=cost,
        calculated_cost_usd=None,
        cost_basis="recorded",
        priced=True,
        price_version="bench",
    )


def traffic(rng: random.Random, zone: ZoneInfo, start: datetime, days: int) -> list[datetime]:
    """Event instants: a Poisson process per local hour, scaled by a daily random level."""
    moments: list[datetime] = []
    day = start
    for _ in range(days):
        level = rng.lognormvariate(0, 0.35)
        share = WEEKEND_SHARE if day.weekday() >= 5 else 1.0
        for hour in range(24):
            hour_start = day.replace(hour=hour)
            count = poisson(rng, HOURLY[hour] * share * level)
            for _ in range(count):
                moments.append(hour_start + timedelta(seconds=rng.uniform(0, 3600)))
        day = (day + timedelta(days=1, hours=3)).replace(hour=0)
    return sorted(moment.astimezone(UTC) for moment in moments)


def poisson(rng: random.Random, mean: float) -> int:
    limit, product, count = math.exp(-mean), rng.random(), 0
    while product > limit:
        product *= rng.random()
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--zone", default="Europe/Berlin")
    args = parser.parse_args()
    zone = ZoneInfo(args.zone)
    rng = random.Random(args.seed)
    start = datetime(2026, 10, 1, tzinfo=zone)
    moments = traffic(rng, zone, start, args.days)
    engine = Engine(zone=zone)

    actual: dict[str, float] = {}
    for moment in moments:
        key = moment.astimezone(zone).date().isoformat()
        actual[key] = actual.get(key, 0.0)
    costs = [rng.expovariate(1 / MEAN_COST) for _ in moments]
    for moment, cost in zip(moments, costs, strict=True):
        key = moment.astimezone(zone).date().isoformat()
        actual[key] += cost

    ours: list[float] = []
    naive: list[float] = []
    inside = 0
    widths: list[float] = []
    index = 0
    day = start
    for number in range(args.days):
        noon = day.replace(hour=12).astimezone(UTC)
        while index < len(moments) and moments[index] <= noon:
            engine.record(
                Accounting(
                    source="bench",
                    observed_at=moments[index],
                    events=(event(moments[index], costs[index], index),),
                )
            )
            index += 1
        engine.prune(noon)
        key = day.date().isoformat()
        truth = actual.get(key, 0.0)
        projection = project(engine, noon)["end_of_day"]
        spent = projection["spent_usd"]
        day_start, day_end = engine.period_bounds(noon, "today")
        elapsed = (noon - day_start).total_seconds()
        length = (day_end - day_start).total_seconds()
        linear = spent / elapsed * length
        if number >= 3 and truth > 0:  # from the first day with 3 days of history
            ours.append(abs(projection["cost_usd"] - truth) / truth)
            naive.append(abs(linear - truth) / truth)
            inside += projection["low_usd"] <= truth <= projection["high_usd"]
            widths.append((projection["high_usd"] - projection["low_usd"]) / truth)
        day = (day + timedelta(days=1, hours=3)).replace(hour=0)

    print(f"days scored: {len(ours)} (seed {args.seed}, zone {args.zone}, from day 4)")
    print(
        f"median abs % error, end-of-day at noon: ours {100 * statistics.median(ours):.1f} %"
        f"  vs naive linear {100 * statistics.median(naive):.1f} %"
    )
    print(
        f"mean abs % error: ours {100 * statistics.mean(ours):.1f} %"
        f"  vs naive linear {100 * statistics.mean(naive):.1f} %"
    )
    print(
        f"actual inside [low, high]: {inside}/{len(ours)},"
        f" median band width {100 * statistics.median(widths):.0f} % of the actual"
    )


if __name__ == "__main__":
    main()
