"""The metrics engine: bounded in-memory aggregates of what the reconciler accounted.

Owns, per source x tier x model: cost, requests, cache hits, overrides, tokens; a bounded
ring of recent events; time buckets in the configured time zone (per minute for the last
3 hours, per hour for 14 days, per day for 400 days); burn rates; and the periods this
hour / today / this month. Pure: time comes in as arguments, nothing here does I/O.

Every table is bounded: buckets are pruned by age, the model table folds names beyond
``MAX_MODELS`` per source into ``"(other models)"``, the recent ring has a fixed length.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Literal

from cco_cost_monitor.pricing import TIERS, PriceTable, Tier
from cco_cost_monitor.reconciler import AccountedEvent, Accounting, Unattributed

__all__ = [
    "MAX_MODELS",
    "Aggregate",
    "BucketKind",
    "BucketStarts",
    "Engine",
    "PruneClock",
    "SourceTotals",
    "bucket_start",
    "local",
    "next_bucket_start",
    "spread",
]

MAX_MODELS = 64
OTHER_MODELS = "(other models)"
UNATTRIBUTED = "unattributed"
BucketKind = Literal["minute", "hour", "day"]
BUCKET_RETENTION: dict[BucketKind, timedelta] = {
    "minute": timedelta(hours=3),
    "hour": timedelta(days=14),
    "day": timedelta(days=400),
}
# A burn rate never divides by less than this share of its window: one call in the
# first seconds of a run must not read as thousands of dollars an hour.
BURN_RATE_FLOOR_SHARE = 0.5
# Event timestamps come from the proxy's clock; one far in the future is pinned to now.
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Events per second are counted per second of arrival, for this many seconds back.
ARRIVAL_SECONDS = 300


def local(moment: datetime, zone: tzinfo) -> datetime:
    """``moment`` in the configured zone."""
    return moment.astimezone(zone)


def bucket_start(moment: datetime, kind: BucketKind, zone: tzinfo) -> float:
    """Epoch seconds of the start of the local minute/hour/day containing ``moment``."""
    here = local(moment, zone)
    if kind != "day":
        # Count back on absolute time, never by rewriting wall-clock fields: in the repeated
        # half hour of Lord Howe's fall-back, replace(minute=0) lands *outside* the hour
        # that contains the moment (the other offset), and buckets would stop advancing.
        # Whole seconds keep bucket keys exact (zone offsets are whole minutes).
        back = here.second + (here.minute * 60 if kind == "hour" else 0)
        return float(math.floor(moment.timestamp()) - back)
    start = here.replace(hour=0, minute=0, second=0, microsecond=0)
    # Local midnight may not exist or be ambiguous on a DST day: normalise via UTC.
    return local(start, zone).timestamp()


def next_bucket_start(start: float, kind: BucketKind, zone: tzinfo) -> float:
    """Epoch seconds of the bucket after the one starting at ``start``."""
    if kind == "minute":
        return start + 60
    if kind == "hour":
        return start + 3600
    here = local(datetime.fromtimestamp(start, UTC), zone)
    tomorrow = (here + timedelta(days=1, hours=3)).replace(hour=0, minute=0, second=0)
    return local(tomorrow, zone).timestamp()


class BucketStarts:
    """Minute, hour and day bucket starts of an epoch time, memoised per UTC minute.

    Every zone's offset since 1972 is a whole number of minutes, so the local minute starts
    with the UTC minute and the three starts depend only on it. (Before that a few zones
    had offsets with seconds, e.g. Africa/Monrovia: an event in the first seconds of one
    of their local hours may count in the hour before.) Bounded: the memo is cleared past
    4096 minutes (events of one run mostly share a few).
    """

    __slots__ = ("_memo", "zone")

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._memo: dict[float, tuple[float, float, float]] = {}

    def of(self, at: float) -> tuple[float, float, float]:
        """The starts for ``at`` (epoch seconds)."""
        minute = at // 60 * 60
        starts = self._memo.get(minute)
        if starts is None:
            if len(self._memo) > 4096:
                self._memo.clear()
            moment = datetime.fromtimestamp(minute, UTC)
            starts = (
                minute,
                bucket_start(moment, "hour", self.zone),
                bucket_start(moment, "day", self.zone),
            )
            self._memo[minute] = starts
        return starts


def spread(
    start: datetime,
    end: datetime,
    kind: BucketKind,
    zone: tzinfo,
    *,
    not_before: datetime | None = None,
) -> Iterator[tuple[datetime, float]]:
    """Shares of the interval [start, end] falling in each bucket (they sum to 1).

    With ``not_before``, buckets before it are skipped: their shares are left out, and
    the rest keep their shares of the whole interval.
    """
    total = (end - start).total_seconds()
    if total <= 0:
        yield end, 1.0
        return
    cursor = start if not_before is None or not_before <= start else min(not_before, end)
    while cursor < end:
        boundary_at = next_bucket_start(bucket_start(cursor, kind, zone), kind, zone)
        # Never stall, whatever a zone's rules do: a bucket ends after the cursor.
        boundary_at = max(boundary_at, cursor.timestamp() + 60)
        boundary = min(datetime.fromtimestamp(boundary_at, UTC), end)
        yield cursor, (boundary - cursor).total_seconds() / total
        cursor = boundary


@dataclass
class Aggregate:
    """Counters of one source x tier x model."""

    cost_usd: float = 0.0
    requests: int = 0
    cache_hits: int = 0
    overrides: int = 0
    events: int = 0
    tokens: int = 0
    recorded_cost_usd: float = 0.0
    calculated_cost_usd: float = 0.0
    unpriced_requests: int = 0


MODEL_FIELDS = tuple(item.name for item in fields(Aggregate))
#: What ``calculated_cost_usd`` is, on every row of ``by_model``: list prices applied to the
#: input and output tokens the stream shows, never to cache reads or writes, which neither
#: the analytics stream (one combined ``tokens`` count, split by an assumed input share) nor
#: the gateway stream reports. On cache-heavy traffic (Claude Code) it reads several times
#: low against the recorded cost, so its difference from ``recorded_cost_usd`` is no
#: measure of price drift and nothing raises a drift warning from it.
CALCULATED_COST_BASIS = "list_prices_without_cache_tokens"


@dataclass
class SourceTotals:
    """Counters of one source, including what no event explains."""

    cost_usd: float = 0.0
    requests: int = 0
    cache_hits: int = 0
    model_overrides: int = 0
    events: int = 0
    unattributed_cost_usd: float = 0.0
    unattributed_requests: int = 0
    lost_events: int = 0
    # What the cache hits would have cost: each cache_hit event's model and tokens priced.
    cache_savings_usd: float = 0.0
    requests_by_type: dict[tuple[Tier, str], int] = field(default_factory=dict)


@dataclass
class Bucket:
    """Cost and requests of one time bucket, per tier (plus ``unattributed``)."""

    cost: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)

    def add(self, tier: str, cost: float, requests: int) -> None:
        self.cost[tier] = self.cost.get(tier, 0.0) + cost
        if requests:
            self.requests[tier] = self.requests.get(tier, 0) + requests

    @property
    def total_cost(self) -> float:
        return sum(self.cost.values())

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


class Engine:
    """Aggregates accounted facts; every query takes ``now`` so tests control the clock."""

    def __init__(self, *, zone: tzinfo = UTC, recent_capacity: int = 1000) -> None:
        self.zone = zone
        self.sources: dict[str, SourceTotals] = {}
        self.models: dict[tuple[str, Tier, str], Aggregate] = {}
        self.recent: deque[AccountedEvent] = deque(maxlen=recent_capacity)
        self.buckets: dict[BucketKind, dict[float, Bucket]] = {
            "minute": {},
            "hour": {},
            "day": {},
        }
        self.first_observation: datetime | None = None
        self.last_event_at: dict[str, datetime] = {}
        self.unpriced_models: dict[str, int] = {}
        # Prices of what cache hits saved (the service sets it; None: savings stay 0).
        self.prices: PriceTable | None = None
        # [second of arrival, accounted events]: one entry per second while the clock runs
        # forward, so ARRIVAL_SECONDS + 1 entries cover the window (not persisted).
        self._arrivals: deque[list[int]] = deque(maxlen=ARRIVAL_SECONDS + 1)
        self._arrivals_since: float | None = None
        self._starts = BucketStarts(zone)

    # -- recording ---------------------------------------------------------------------

    def record(self, accounting: Accounting) -> None:
        """Add one :class:`Accounting` (events and unattributed remainder)."""
        if self.first_observation is None or accounting.observed_at < self.first_observation:
            self.first_observation = accounting.observed_at
        if accounting.events:
            self._record_events(accounting.events, accounting.observed_at)
        if accounting.unattributed is not None:
            self.record_unattributed(accounting.unattributed, accounting.observed_at)

    def _record_events(self, events: Iterable[AccountedEvent], observed_at: datetime) -> None:
        # The ingestion hot path: locals and inlined look-ups on purpose.
        latest_allowed = observed_at + MAX_CLOCK_SKEW
        models = self.models
        grouped: dict[tuple[float, str], list[float]] = {}
        minute_table, hour_table, day_table = (
            self.buckets["minute"],
            self.buckets["hour"],
            self.buckets["day"],
        )
        prices = self.prices
        accounted = 0
        for event in events:
            source = event.source
            totals = self.sources.get(source)
            if totals is None:
                totals = self.sources[source] = SourceTotals()
            cost = event.cost_usd
            requests = event.requests
            tier = event.tier
            is_override = event.event_type == "model_override"
            totals.cost_usd += cost
            totals.requests += requests
            totals.events += 1
            accounted += 1
            if event.cache_hits:
                totals.cache_hits += event.cache_hits
                if event.tokens and prices is not None and event.event_type == "cache_hit":
                    saved = prices.combined_usd(event.model, event.tokens)
                    if saved:
                        totals.cache_savings_usd += saved
            if is_override:
                totals.model_overrides += 1
            if requests:
                type_key = (tier, event.event_type)
                by_type = totals.requests_by_type
                by_type[type_key] = by_type.get(type_key, 0) + requests
            model = event.model or "(none)"
            aggregate = models.get((source, tier, model))
            if aggregate is None:
                aggregate = self._aggregate(source, tier, model)
            aggregate.cost_usd += cost
            aggregate.requests += requests
            aggregate.cache_hits += event.cache_hits
            aggregate.events += 1
            if is_override:
                aggregate.overrides += 1
            if event.tokens:
                aggregate.tokens += event.tokens
            if event.recorded_cost_usd:
                aggregate.recorded_cost_usd += event.recorded_cost_usd
            if event.calculated_cost_usd:
                aggregate.calculated_cost_usd += event.calculated_cost_usd
            if requests and not event.priced:
                aggregate.unpriced_requests += requests
                if model in self.unpriced_models or len(self.unpriced_models) < MAX_MODELS:
                    self.unpriced_models[model] = self.unpriced_models.get(model, 0) + requests
            self.recent.append(event)
            moment = event.occurred_at
            moment = min(moment, latest_allowed)
            previous = self.last_event_at.get(source)
            if previous is None or moment > previous:
                self.last_event_at[source] = moment
            if cost or requests:
                # Events of one snapshot mostly share a minute: sum per minute and tier
                # first, touch the three bucket tables once per group.
                group = (moment.timestamp() // 60 * 60, tier)
                sums = grouped.get(group)
                if sums is None:
                    grouped[group] = [cost, requests]
                else:
                    sums[0] += cost
                    sums[1] += requests
        for (minute_at, group_tier), (group_cost, group_requests) in grouped.items():
            minute, hour, day = self._starts.of(minute_at)
            for table, start in ((minute_table, minute), (hour_table, hour), (day_table, day)):
                bucket = table.get(start)
                if bucket is None:
                    bucket = table[start] = Bucket()
                bucket.add(group_tier, group_cost, int(group_requests))
        if accounted:
            self._count_arrivals(observed_at, accounted)

    def _count_arrivals(self, observed_at: datetime, count: int) -> None:
        second = int(observed_at.timestamp())
        if self._arrivals_since is None:
            self._arrivals_since = observed_at.timestamp()
        arrivals = self._arrivals
        if arrivals and arrivals[-1][0] == second:
            arrivals[-1][1] += count
        else:
            arrivals.append([second, count])

    def record_unattributed(self, remainder: Unattributed, observed_at: datetime) -> None:
        totals = self.sources.setdefault(remainder.source, SourceTotals())
        totals.cost_usd += remainder.cost_usd
        totals.requests += remainder.requests
        totals.unattributed_cost_usd += remainder.cost_usd
        totals.unattributed_requests += remainder.requests
        totals.lost_events += remainder.lost_events
        end = min(remainder.occurred_at, observed_at + MAX_CLOCK_SKEW)
        start = remainder.since if remainder.since is not None and remainder.since < end else end
        for kind, keep in BUCKET_RETENTION.items():
            # Only what falls inside a table's retention is spread into it: after days of
            # downtime, not thousands of minute buckets that pruning would drop again.
            for moment, share in spread(start, end, kind, self.zone, not_before=end - keep):
                self._bucket(kind, moment).add(UNATTRIBUTED, remainder.cost_usd * share, 0)
            self._bucket(kind, end).add(UNATTRIBUTED, 0.0, remainder.requests)

    def _aggregate(self, source: str, tier: Tier, model: str) -> Aggregate:
        key = (source, tier, model)
        aggregate = self.models.get(key)
        if aggregate is None:
            known = sum(1 for existing in self.models if existing[0] == source)
            if known >= MAX_MODELS:
                key = (source, tier, OTHER_MODELS)
                aggregate = self.models.get(key)
            if aggregate is None:
                aggregate = self.models[key] = Aggregate()
        return aggregate

    def _bucket(self, kind: BucketKind, moment: datetime) -> Bucket:
        start = bucket_start(moment, kind, self.zone)
        table = self.buckets[kind]
        bucket = table.get(start)
        if bucket is None:
            bucket = table[start] = Bucket()
        return bucket

    def prune(self, now: datetime) -> None:
        """Drop buckets older than their retention."""
        for kind, keep in BUCKET_RETENTION.items():
            cutoff = (now - keep).timestamp()
            table = self.buckets[kind]
            for start in [start for start in table if start < cutoff]:
                del table[start]

    # -- queries -----------------------------------------------------------------------

    def total_cost(self) -> float:
        return sum(totals.cost_usd for totals in self.sources.values())

    def events_processed(self) -> int:
        return sum(totals.events for totals in self.sources.values())

    def by_tier(self) -> dict[Tier, dict[str, float | int]]:
        result: dict[Tier, dict[str, float | int]] = {
            tier: {"cost_usd": 0.0, "requests": 0, "tokens": 0} for tier in TIERS
        }
        for (_, tier, _), aggregate in self.models.items():
            row = result[tier]
            row["cost_usd"] += aggregate.cost_usd
            row["requests"] += aggregate.requests
            row["tokens"] += aggregate.tokens
        return result

    def by_model(self) -> dict[str, dict[str, Any]]:
        """Per model name (summed over sources): its tier and every Aggregate counter."""
        result: dict[str, dict[str, Any]] = {}
        for (_, tier, model), aggregate in self.models.items():
            row = result.setdefault(
                model,
                {
                    "tier": tier,
                    **dict.fromkeys(MODEL_FIELDS, 0),
                    "calculated_cost_basis": CALCULATED_COST_BASIS,
                },
            )
            for name in MODEL_FIELDS:
                row[name] += getattr(aggregate, name)
        return result

    def window_cost(self, now: datetime, seconds: float) -> float:
        """Cost in the minute buckets overlapping the last ``seconds``."""
        since = bucket_start(now - timedelta(seconds=seconds), "minute", self.zone)
        # The bucket containing the window start is only partly inside it.
        total = 0.0
        for start, bucket in self.buckets["minute"].items():
            if start < since:
                continue
            weight = 1.0
            if start == since:
                window_start = now.timestamp() - seconds
                weight = max(0.0, min(1.0, (start + 60 - window_start) / 60))
            total += bucket.total_cost * weight
        return total

    def window_requests(self, now: datetime, seconds: float) -> int:
        """Requests in the last ``seconds``, weighted like :meth:`window_cost` (rounded)."""
        since = bucket_start(now - timedelta(seconds=seconds), "minute", self.zone)
        window_start = now.timestamp() - seconds
        total = 0.0
        for start, bucket in self.buckets["minute"].items():
            if start < since:
                continue
            weight = 1.0
            if start == since:
                weight = max(0.0, min(1.0, (start + 60 - window_start) / 60))
            total += bucket.total_requests * weight
        return round(total)

    def events_per_second(self, now: datetime, seconds: float) -> float:
        """Accounted events per second that arrived in the last ``seconds`` (at most 300).

        Counted by arrival in this process; like :meth:`burn_rate`, the denominator is the
        time observed so far but never below half the window.
        """
        seconds = min(float(seconds), float(ARRIVAL_SECONDS))
        now_ts = now.timestamp()
        first = now_ts - seconds
        events = sum(count for second, count in self._arrivals if first <= second <= now_ts)
        covered = seconds
        if self._arrivals_since is not None:
            covered = min(seconds, max(0.0, now_ts - self._arrivals_since))
        return events / max(covered, seconds * BURN_RATE_FLOOR_SHARE)

    def cache_savings(self) -> float:
        """What the cache hits would have cost, summed over sources (USD)."""
        return sum(totals.cache_savings_usd for totals in self.sources.values())

    def burn_rate(self, now: datetime, seconds: float) -> float:
        """USD per hour over the last ``seconds``, never over a denominator below the floor."""
        covered = seconds
        if self.first_observation is not None:
            covered = min(seconds, max(0.0, (now - self.first_observation).total_seconds()))
        denominator = max(covered, seconds * BURN_RATE_FLOOR_SHARE)
        return self.window_cost(now, seconds) / denominator * 3600.0

    def period_bounds(self, now: datetime, period: str) -> tuple[datetime, datetime]:
        """Local start and end of ``this_hour``, ``today``, ``this_week`` or ``this_month``."""
        here = local(now, self.zone)
        if period == "this_hour":
            begin = bucket_start(now, "hour", self.zone)
            # An hour is 3600 s even on a DST day (wall-clock addition would give two).
            start = datetime.fromtimestamp(begin, UTC).astimezone(self.zone)
            end = datetime.fromtimestamp(begin + 3600, UTC).astimezone(self.zone)
            return start, end
        if period == "today":
            start = here.replace(hour=0, minute=0, second=0, microsecond=0)
            end = (start + timedelta(days=1, hours=3)).replace(hour=0)
            return local(start, self.zone), local(end, self.zone)
        if period == "this_week":
            monday = here - timedelta(days=here.weekday())
            start = monday.replace(hour=0, minute=0, second=0, microsecond=0)
            end = (start + timedelta(days=7, hours=3)).replace(hour=0)
            return local(start, self.zone), local(end, self.zone)
        start = here.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=32)).replace(day=1)
        return local(start, self.zone), local(following, self.zone)

    def period_totals(
        self, now: datetime, period: str, tier: str | None = None
    ) -> tuple[float, int]:
        """Cost and requests in a period so far, from the finest buckets that cover it."""
        start, _ = self.period_bounds(now, period)
        kind: BucketKind = "minute" if period == "this_hour" else "hour"
        if period in ("this_week", "this_month"):
            kind = "day"
        if period == "today":
            kind = "hour"
        cutoff = start.timestamp()
        cost = 0.0
        requests = 0
        for bucket_at, bucket in self.buckets[kind].items():
            if bucket_at < cutoff:
                continue
            if tier is None:
                cost += bucket.total_cost
                requests += bucket.total_requests
            else:
                cost += bucket.cost.get(tier, 0.0)
                requests += bucket.requests.get(tier, 0)
        return cost, requests

    def timeseries(self, kind: BucketKind, since: datetime | None = None) -> list[dict[str, Any]]:
        cutoff = since.timestamp() if since is not None else float("-inf")
        rows = []
        for start in sorted(self.buckets[kind]):
            if start < cutoff:
                continue
            bucket = self.buckets[kind][start]
            rows.append(
                {
                    "start": datetime.fromtimestamp(start, self.zone).isoformat(),
                    "cost_usd": bucket.total_cost,
                    "requests": bucket.total_requests,
                    "cost_by_tier": dict(bucket.cost),
                    "requests_by_tier": dict(bucket.requests),
                }
            )
        return rows

    def recent_events(self, limit: int) -> list[AccountedEvent]:
        """The newest ``limit`` accounted events, newest first."""
        result: list[AccountedEvent] = []
        for event in reversed(self.recent):
            if len(result) >= limit:
                break
            result.append(event)
        return result

    def restore_events(self, events: Iterable[AccountedEvent]) -> None:
        """Refill the recent ring (oldest first) without touching counters."""
        for event in events:
            self.recent.append(event)

    # -- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Counters and buckets as plain data (the recent ring is rebuilt from events)."""
        return {
            "version": 1,
            "first_observation": (
                self.first_observation.isoformat() if self.first_observation else None
            ),
            "sources": {
                name: {
                    **{
                        key: value
                        for key, value in vars(totals).items()
                        if key != "requests_by_type"
                    },
                    "requests_by_type": [
                        [tier, event_type, count]
                        for (tier, event_type), count in totals.requests_by_type.items()
                    ],
                }
                for name, totals in self.sources.items()
            },
            "models": [
                [source, tier, model, vars(agg)]
                for (source, tier, model), agg in self.models.items()
            ],
            "buckets": {
                kind: [[start, bucket.cost, bucket.requests] for start, bucket in table.items()]
                for kind, table in self.buckets.items()
            },
            "last_event_at": {name: at.isoformat() for name, at in self.last_event_at.items()},
            "unpriced_models": dict(self.unpriced_models),
        }

    def load_dict(self, data: dict[str, Any]) -> int:
        """Replace counters and buckets with ``data`` from :meth:`to_dict`.

        A state saved by a version that let absurd values in (a cost of 1e308 summed to
        ``inf`` and saved as ``null``, a token count past 2**63) must not stop every later
        start: such a number is read as 0. Returns how many were, for the log.
        """
        data = dict(data)
        repaired = _Repair()
        data["sources"] = {
            name: {
                key: (value if key == "requests_by_type" else repaired.number(value))
                for key, value in stored.items()
            }
            for name, stored in data.get("sources", {}).items()
        }
        for stored in data["sources"].values():
            stored["requests_by_type"] = [
                [tier, event_type, repaired.number(count)]
                for tier, event_type, count in stored.get("requests_by_type", [])
            ]
        data["models"] = [
            [source, tier, model, {key: repaired.number(v) for key, v in values.items()}]
            for source, tier, model, values in data.get("models", [])
        ]
        data["buckets"] = {
            kind: [
                [
                    start,
                    {tier: repaired.number(v) for tier, v in cost.items()},
                    {tier: repaired.number(v) for tier, v in requests.items()},
                ]
                for start, cost, requests in table
            ]
            for kind, table in data.get("buckets", {}).items()
        }
        self._load(data)
        return repaired.count

    def _load(self, data: dict[str, Any]) -> None:
        first = data.get("first_observation")
        self.first_observation = datetime.fromisoformat(first) if first else None
        self.sources = {}
        for name, stored in data.get("sources", {}).items():
            values = dict(stored)
            by_type = {
                (tier, event_type): count
                for tier, event_type, count in values.pop("requests_by_type", [])
            }
            self.sources[name] = SourceTotals(**values, requests_by_type=by_type)
        self.models = {
            (source, tier, model): Aggregate(**values)
            for source, tier, model, values in data.get("models", [])
        }
        for kind in BUCKET_RETENTION:
            self.buckets[kind] = {
                float(start): Bucket(dict(cost), dict(requests))
                for start, cost, requests in data.get("buckets", {}).get(kind, [])
            }
        self.last_event_at = {
            name: datetime.fromisoformat(at) for name, at in data.get("last_event_at", {}).items()
        }
        self.unpriced_models = dict(data.get("unpriced_models", {}))


class PruneClock:
    """The time to prune by: the wall clock, unless it just jumped ahead of the monotonic one.

    Pruning drops buckets and rows older than their retention *by this time*. A wall clock
    stepped 15 days ahead for a few seconds (a bad NTP answer, a VM restored, someone's
    ``date -s``) would otherwise drop the minute and hour buckets of the real present for
    good: ``this_hour`` and ``today`` at $0 after the clock comes back, the daily budget
    understated. So the clock follows the wall clock while it moves with the monotonic one
    (within ``TOLERANCE_SECONDS``) or steps back, and while the wall clock is further ahead
    it answers the monotonic estimate instead, until the step has lasted
    ``ADOPT_AFTER_SECONDS``: a step that stays is the real time (a clock set right at boot),
    and the memory of old buckets stays bounded.
    """

    TOLERANCE_SECONDS = 300.0
    ADOPT_AFTER_SECONDS = 3600.0

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._anchor_wall = wall()
        self._anchor_monotonic = monotonic()
        self._ahead_since: float | None = None

    def now(self) -> datetime:
        wall, steady_now = self._wall(), self._monotonic()
        steady = self._anchor_wall + (steady_now - self._anchor_monotonic)
        if wall > steady + self.TOLERANCE_SECONDS:
            if self._ahead_since is None:
                self._ahead_since = steady_now
            if steady_now - self._ahead_since < self.ADOPT_AFTER_SECONDS:
                return datetime.fromtimestamp(steady, UTC)
        self._anchor_wall, self._anchor_monotonic = wall, steady_now
        self._ahead_since = None
        return datetime.fromtimestamp(wall, UTC)


class _Repair:
    """Reads saved numbers, counting the unusable ones (``null``, not finite, too large)."""

    #: Larger than anything the wire's bounds let through in a lifetime of sums.
    LIMIT = 1e15

    def __init__(self) -> None:
        self.count = 0

    def number(self, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if abs(value) <= 2**62:
                return value
        elif isinstance(value, float):
            if math.isfinite(value) and abs(value) <= self.LIMIT:
                return value
            self.count += 1
            return 0.0
        elif value is not None:
            return value
        self.count += 1
        return 0
