"""Spend projections to the end of this hour, day, week and month. Pure: ``now`` is an argument.

Central value = spent so far in the period + expected remaining spend. The expected remaining
spend blends two estimates:

* **recent**: the engine's burn rate (its denominator has a floor, so a burst in the first
  seconds cannot explode it) times the remaining time;
* **history**: the user's own hour-of-day profile (hour buckets, up to 14 days) scaled by a
  weekday factor (day buckets, up to 8 weeks) and, for the rest of today, by how today is
  running against that profile. Used once at least ``MIN_HISTORY_DAYS`` of history exist.

The history weight grows with the remaining time: ``c * R / (R + TAU)`` (``R`` remaining hours,
``c`` the history confidence). The band (``low_usd``/``high_usd``) comes from the dispersion of
the historical hourly and daily spend, or a Poisson-like band from the recent request count.
Periods are the engine's (local zone, DST-safe); remaining time is computed on absolute
instants. See docs/projections.md for a worked example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cco_cost_monitor.engine import BucketKind, Engine, bucket_start, local

__all__ = [
    "HORIZONS",
    "MIN_HISTORY_DAYS",
    "HistoryProfile",
    "billing_month_bounds",
    "horizon_bounds",
    "horizon_kind",
    "period_spent",
    "project",
]

# horizon name -> engine period name
HORIZONS: dict[str, str] = {
    "end_of_hour": "this_hour",
    "end_of_day": "today",
    "end_of_week": "this_week",
    "end_of_month": "this_month",
}
MIN_HISTORY_DAYS = 3.0
HISTORY_DAYS = 14
WEEKDAY_DAYS = 56
# Days of history at which the history gets full confidence.
FULL_CONFIDENCE_DAYS = 5.0
# Hours of remaining time at which history and recent rate weigh the same (at full confidence).
TAU_HOURS = 1.0
# Recent-rate windows: the hour uses the last hour; longer horizons the last 3 hours.
SHORT_WINDOW = 3600.0
LONG_WINDOW = 3 * 3600.0
# About a 90 % band.
Z = 1.645
# The level of today against its profile is shrunk toward 1 by this many profile-hours.
LEVEL_PRIOR_HOURS = 3.0
LEVEL_MIN, LEVEL_MAX = 0.2, 5.0
MIN_WEEKDAY_FACTOR = 0.05
HOUR = 3600.0


def billing_month_bounds(
    engine: Engine, now: datetime, billing_day: int
) -> tuple[datetime, datetime]:
    """Local start and end of the billing month containing ``now`` (from ``billing_day``)."""
    if billing_day <= 1:
        return engine.period_bounds(now, "this_month")
    here = local(now, engine.zone)
    year, month = here.year, here.month
    if here.day < billing_day:
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    start = here.replace(
        year=year, month=month, day=billing_day, hour=0, minute=0, second=0, microsecond=0, fold=0
    )
    next_year, next_month = (year, month + 1) if month < 12 else (year + 1, 1)
    end = start.replace(year=next_year, month=next_month)
    return local(start, engine.zone), local(end, engine.zone)


def horizon_bounds(
    engine: Engine, now: datetime, horizon: str, billing_day: int = 1
) -> tuple[datetime, datetime]:
    """Start and end (aware, local zone) of the period a horizon ends."""
    period = HORIZONS[horizon]
    if period == "this_hour":
        # An hour is 3600 absolute seconds even in a repeated DST hour.
        start_ts = bucket_start(now, "hour", engine.zone)
        return (
            datetime.fromtimestamp(start_ts, engine.zone),
            datetime.fromtimestamp(start_ts + HOUR, engine.zone),
        )
    if period == "this_month":
        return billing_month_bounds(engine, now, billing_day)
    return engine.period_bounds(now, period)


def _bucket_cost(bucket: Any, tier: str | None) -> float:
    if tier is None:
        return float(bucket.total_cost)
    return float(bucket.cost.get(tier, 0.0))


def _bucket_requests(bucket: Any, tier: str | None) -> int:
    if tier is None:
        return int(bucket.total_requests)
    return int(bucket.requests.get(tier, 0))


def _spent(engine: Engine, kind: BucketKind, start: float, end: float, tier: str | None) -> float:
    table = engine.buckets[kind]
    return sum(_bucket_cost(b, tier) for at, b in table.items() if start <= at < end)


def _coverage_start(engine: Engine) -> float | None:
    """Epoch seconds since which the engine has been observing (the earliest evidence)."""
    candidates = [engine.first_observation.timestamp()] if engine.first_observation else []
    for table in (engine.buckets["hour"], engine.buckets["day"]):
        if table:
            candidates.append(min(table))
    return min(candidates) if candidates else None


def _recent(engine: Engine, now: datetime, seconds: float, tier: str | None) -> tuple[float, int]:
    """Recent rate in USD/h (the engine's floored burn rate) and requests in the window."""
    since = now.timestamp() - seconds
    requests = sum(
        _bucket_requests(b, tier) for at, b in engine.buckets["minute"].items() if at + 60 > since
    )
    if tier is None:
        return engine.burn_rate(now, seconds), requests
    total = engine.window_cost(now, seconds)
    rate_all = engine.burn_rate(now, seconds)
    if total <= 0:
        return 0.0, requests
    # The engine's window has no tier filter: apply the tier's share of the window's cost.
    share_cost = sum(
        b.cost.get(tier, 0.0) * (max(0.0, min(1.0, (at + 60 - since) / 60)))
        for at, b in engine.buckets["minute"].items()
        if at + 60 > since
    )
    return rate_all * min(1.0, share_cost / total), requests


@dataclass
class HistoryProfile:
    """Hour-of-day means and variances, weekday factors and the spread of daily totals."""

    days: float = 0.0
    hod_mean: list[float] = field(default_factory=lambda: [0.0] * 24)
    hod_var: list[float] = field(default_factory=lambda: [0.0] * 24)
    weekday_factor: list[float] = field(default_factory=lambda: [1.0] * 7)
    day_mean: float = 0.0
    day_cv: float = 0.0

    @property
    def usable(self) -> bool:
        return self.days >= MIN_HISTORY_DAYS

    @property
    def confidence(self) -> float:
        return min(1.0, self.days / FULL_CONFIDENCE_DAYS) if self.usable else 0.0

    def slot(self, moment: datetime) -> tuple[float, float]:
        """Expected cost and variance of the local hour containing ``moment``."""
        hour, weekday = moment.hour, moment.weekday()
        factor = self.weekday_factor[weekday]
        return self.hod_mean[hour] * factor, self.hod_var[hour] * factor * factor

    @classmethod
    def build(cls, engine: Engine, now: datetime, tier: str | None = None) -> HistoryProfile:
        profile = cls()
        covered_from = _coverage_start(engine)
        current_hour = bucket_start(now, "hour", engine.zone)
        if covered_from is None:
            return profile
        first = max(covered_from, now.timestamp() - HISTORY_DAYS * 86400.0)
        first_hour = math.ceil((first - current_hour) / HOUR) * HOUR + current_hour
        profile.days = max(0.0, (current_hour - first_hour) / 86400.0)
        if not profile.usable:
            return profile
        # Weekday factors first: hourly samples are divided by their day's factor, so the
        # hour-of-day profile and its variance are free of the weekly pattern.
        profile._weekdays(engine, now, covered_from, tier)
        hours = engine.buckets["hour"]
        samples: list[list[float]] = [[] for _ in range(24)]
        at = first_hour
        while at < current_hour:
            bucket = hours.get(at)
            cost = _bucket_cost(bucket, tier) if bucket is not None else 0.0
            moment = datetime.fromtimestamp(at, engine.zone)
            factor = max(profile.weekday_factor[moment.weekday()], MIN_WEEKDAY_FACTOR)
            samples[moment.hour].append(cost / factor)
            at += HOUR
        for hour, values in enumerate(samples):
            if values:
                mean = sum(values) / len(values)
                profile.hod_mean[hour] = mean
                if len(values) > 1:
                    profile.hod_var[hour] = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        return profile

    def _weekdays(
        self, engine: Engine, now: datetime, covered_from: float, tier: str | None
    ) -> None:
        """Weekday factors and the daily coefficient of variation from complete days."""
        today = bucket_start(now, "day", engine.zone)
        first_day = bucket_start(datetime.fromtimestamp(covered_from, UTC), "day", engine.zone)
        if first_day < covered_from:  # the first day was only partly observed
            first_day = bucket_start(
                datetime.fromtimestamp(first_day, UTC) + timedelta(hours=30), "day", engine.zone
            )
        cutoff = today - WEEKDAY_DAYS * 86400.0 - 7200.0
        days = engine.buckets["day"]
        totals: list[tuple[int, float]] = []
        at = first_day
        while at < today:
            bucket = days.get(at)
            moment = datetime.fromtimestamp(at, engine.zone)
            if at >= cutoff:
                totals.append((moment.weekday(), _bucket_cost(bucket, tier) if bucket else 0.0))
            at = bucket_start(moment + timedelta(hours=30), "day", engine.zone)
        if len(totals) < 2:
            return
        values = [cost for _, cost in totals]
        mean = sum(values) / len(values)
        self.day_mean = mean
        if mean <= 0:
            return
        if len(totals) >= 14:
            for weekday in range(7):
                own = [cost for day, cost in totals if day == weekday]
                # Shrink toward the overall mean with one pseudo-day.
                self.weekday_factor[weekday] = (sum(own) + mean) / ((len(own) + 1) * mean)
            # Renormalise so that the factors average to 1 over the week.
            average = sum(self.weekday_factor) / 7
            if average > 0:
                self.weekday_factor = [f / average for f in self.weekday_factor]
        # The day-to-day spread of the level, once the weekly pattern is taken out.
        levels = [
            cost / max(self.weekday_factor[day], MIN_WEEKDAY_FACTOR) / mean for day, cost in totals
        ]
        level_mean = sum(levels) / len(levels)
        variance = sum((v - level_mean) ** 2 for v in levels) / (len(levels) - 1)
        self.day_cv = math.sqrt(variance)

    def expected(self, engine: Engine, start: float, end: float) -> tuple[float, float]:
        """Expected cost and variance between two instants, hour slot by hour slot.

        The hot loop of every evaluation (up to ~1,000 slots to the end of a month): one
        local time per slot serves both its start (``bucket_start(..., "hour")`` counts back
        the same local minutes and seconds) and its hour-of-day and weekday.
        """
        zone = engine.zone
        hod_mean, hod_var, weekday_factor = self.hod_mean, self.hod_var, self.weekday_factor
        total = 0.0
        variance = 0.0
        at = start
        while at < end:
            here = datetime.fromtimestamp(at, zone)
            slot_start = float(math.floor(here.timestamp()) - here.second - here.minute * 60)
            slot_end = min(slot_start + HOUR, end)
            fraction = max(0.0, (slot_end - at) / HOUR)
            factor = weekday_factor[here.weekday()]
            hour = here.hour
            total += hod_mean[hour] * factor * fraction
            variance += hod_var[hour] * factor * factor * fraction
            at = slot_end if slot_end > at else at + HOUR
        return total, variance


def horizon_kind(horizon: str) -> BucketKind:
    """The finest bucket kind that covers a horizon's whole period."""
    if horizon == "end_of_hour":
        return "minute"
    if horizon == "end_of_day":
        return "hour"
    return "day"


def period_spent(
    engine: Engine, now: datetime, horizon: str, *, billing_day: int = 1, tier: str | None = None
) -> float:
    """Spend so far in the period a horizon ends (``tier`` restricts to one tier)."""
    start, _ = horizon_bounds(engine, now, horizon, billing_day)
    return _finite(_spent(engine, horizon_kind(horizon), start.timestamp(), math.inf, tier))


def _finite(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def project(
    engine: Engine,
    now: datetime,
    *,
    billing_day: int = 1,
    tier: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Projections for ``end_of_hour``, ``end_of_day``, ``end_of_week`` and ``end_of_month``.

    Each is ``{cost_usd, low_usd, high_usd, spent_usd, rate_usd_per_hour, method,
    history_weight, period_start, period_end}``; ``rate_usd_per_hour`` is the average rate
    the central value assumes over the remaining time. ``tier`` restricts to one tier.
    """
    profile = HistoryProfile.build(engine, now, tier)
    now_ts = now.timestamp()
    today_start, _ = engine.period_bounds(now, "today")
    today_ts = today_start.timestamp()
    today_end_ts = horizon_bounds(engine, now, "end_of_day")[1].timestamp()
    level = 1.0
    # The share of the day's level still unknown (1 at midnight, shrinking as the day runs).
    level_unknown = 1.0
    if profile.usable:
        expected_so_far, _ = profile.expected(engine, today_ts, now_ts)
        spent_today = _spent(engine, "hour", today_ts, math.inf, tier)
        prior = LEVEL_PRIOR_HOURS * max(profile.day_mean, sum(profile.hod_mean)) / 24.0
        if prior > 0:
            level_unknown = prior / (expected_so_far + prior)
            level = (spent_today + prior) / (expected_so_far + prior)
            level = min(LEVEL_MAX, max(LEVEL_MIN, level))

    result: dict[str, dict[str, Any]] = {}
    for horizon in HORIZONS:
        start, end = horizon_bounds(engine, now, horizon, billing_day)
        start_ts, end_ts = start.timestamp(), end.timestamp()
        spent = _finite(_spent(engine, horizon_kind(horizon), start_ts, math.inf, tier))
        remaining_h = max(0.0, end_ts - now_ts) / HOUR

        window = SHORT_WINDOW if horizon == "end_of_hour" else LONG_WINDOW
        rate, requests = _recent(engine, now, window, tier)
        rate = _finite(rate)
        recent_rem = rate * remaining_h
        # Poisson-like: the count of future requests, and the rate's own estimation error.
        count = max(requests, 1)
        per_request = rate * (window / HOUR) / count
        future_count = count / (window / HOUR) * remaining_h
        recent_sd = math.sqrt(per_request**2 * future_count + recent_rem**2 / count)

        weight = 0.0
        hist_rem = hist_sd = 0.0
        if profile.usable and remaining_h > 0:
            weight = profile.confidence * remaining_h / (remaining_h + TAU_HOURS)
            split = min(end_ts, today_end_ts)
            today_part, today_var = profile.expected(engine, now_ts, max(now_ts, split))
            later_part, later_var = profile.expected(engine, max(now_ts, split), end_ts)
            hist_rem = today_part * level + later_part
            later_days = max(1.0, (end_ts - max(now_ts, split)) / 86400.0)
            # Slot noise, plus the level of today (partly known) and of each later day
            # (independent from day to day, so it averages out over a week or a month).
            hist_sd = math.sqrt(
                today_var * level * level
                + later_var
                + level_unknown * (profile.day_cv * today_part * level) ** 2
                + (profile.day_cv * later_part) ** 2 / later_days
            )
        expected_rem = _finite(weight * hist_rem + (1 - weight) * recent_rem)
        sd = _finite(weight * hist_sd + (1 - weight) * recent_sd)
        central = spent + expected_rem
        low = max(spent, central - Z * sd)
        high = central + Z * sd
        result[horizon] = {
            "cost_usd": central,
            "low_usd": min(low, central),
            "high_usd": max(high, central),
            "spent_usd": spent,
            "rate_usd_per_hour": expected_rem / remaining_h if remaining_h > 0 else 0.0,
            "recent_rate_usd_per_hour": rate,
            "method": "blended" if weight > 0 else "recent",
            "history_weight": round(weight, 4),
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
        }
    return result
