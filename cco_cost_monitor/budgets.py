"""Budget evaluation and the alert state machine. Pure: ``now`` is an argument, no I/O.

:func:`evaluate` turns the configured limits (daily / weekly / monthly, overall and per tier)
into the contract's ``budgets`` entries, each with a ``state``:

* ``exceeded`` -- spent >= limit;
* ``projected_to_exceed`` -- the central projection to the end of the period is above the limit;
* ``warning`` -- at least ``warning_ratio`` of the limit is spent;
* ``ok`` -- none of these.

:class:`AlertTracker` turns successive evaluations into :class:`Alert` objects: every threshold
fires at most once per budget period (a new period re-arms it, so spend hovering around a line
never re-fires), a ``predicted`` alert fires when the projection first crosses the limit (with
the crossing time from the projected rate), and a ``recovered`` notice when a predicted overrun
goes away (with a margin, so a projection hovering at the limit does not flap). The tracker's
state and the alerts are plain data (``to_dict``/``from_dict``) so they can be persisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from cco_cost_monitor.config import BudgetLimits, BudgetSettings
from cco_cost_monitor.engine import Engine
from cco_cost_monitor.projections import horizon_bounds, period_spent, project

__all__ = [
    "BUDGET_HORIZONS",
    "BUDGET_STATE",
    "BUDGET_STATES",
    "Alert",
    "AlertKind",
    "AlertTracker",
    "BudgetState",
    "evaluate",
]

BudgetState = Literal["ok", "warning", "exceeded", "projected_to_exceed"]
#: Every state a budget can be in, in order of severity (the words /api/summary sends).
BUDGET_STATES: tuple[BudgetState, ...] = get_args(BudgetState)
#: Name of the alert tracker's state in the store's component_state table.
BUDGET_STATE = "budgets"
AlertKind = Literal["threshold", "predicted", "recovered"]
BudgetPeriod = Literal["daily", "weekly", "monthly"]
BUDGET_HORIZONS: dict[BudgetPeriod, str] = {
    "daily": "end_of_day",
    "weekly": "end_of_week",
    "monthly": "end_of_month",
}
PERIOD_WORDS: dict[str, str] = {"daily": "day", "weekly": "week", "monthly": "month"}
DEFAULT_WARNING_RATIO = 0.75
# A predicted overrun is over once the projection is back below this share of the limit.
RECOVERY_MARGIN = 0.95


def _limits(settings: BudgetSettings | BudgetLimits) -> list[tuple[BudgetPeriod, float]]:
    values: list[tuple[BudgetPeriod, float | None]] = [
        ("daily", settings.daily_usd),
        ("weekly", settings.weekly_usd),
        ("monthly", settings.monthly_usd),
    ]
    return [(period, limit) for period, limit in values if limit is not None]


def _state(spent: float, projected: float, limit: float, warning_ratio: float) -> BudgetState:
    if spent >= limit:
        return "exceeded"
    if projected > limit:
        return "projected_to_exceed"
    if spent >= warning_ratio * limit:
        return "warning"
    return "ok"


def _entry(
    engine: Engine,
    now: datetime,
    period: BudgetPeriod,
    limit: float,
    tier: str | None,
    projection: Mapping[str, Any] | None,
    billing_day: int,
    warning_ratio: float,
) -> dict[str, Any]:
    horizon = BUDGET_HORIZONS[period]
    start, end = horizon_bounds(engine, now, horizon, billing_day)
    spent = period_spent(engine, now, horizon, billing_day=billing_day, tier=tier)
    projected = max(spent, float(projection["cost_usd"])) if projection else spent
    high = max(projected, float(projection.get("high_usd", projected))) if projection else spent
    remaining_h = max(0.0, (end - now).total_seconds()) / 3600.0
    rate = (projected - spent) / remaining_h if remaining_h > 0 else 0.0
    crossing_at = None
    if spent < limit < projected and rate > 0:
        crossing = now + timedelta(hours=(limit - spent) / rate)
        crossing_at = min(crossing, end).astimezone(engine.zone).isoformat()
    return {
        "period": period,
        "tier": tier,
        "limit_usd": limit,
        "spent_usd": spent,
        "used_ratio": spent / limit,
        "projected_usd": projected,
        "projected_high_usd": high,
        "projected_ratio": projected / limit,
        "state": _state(spent, projected, limit, warning_ratio),
        "rate_usd_per_hour": rate,
        "crossing_at": crossing_at,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
    }


def evaluate(
    budgets: BudgetSettings,
    engine: Engine,
    projections: Mapping[str, Mapping[str, Any]] | None,
    now: datetime,
    *,
    billing_day: int = 1,
    warning_ratio: float = DEFAULT_WARNING_RATIO,
) -> list[dict[str, Any]]:
    """The contract's ``budgets`` list (plus ``tier`` and a few extras), overall first.

    ``projections`` is :func:`project`'s result for all tiers (computed here when None);
    per-tier limits get per-tier projections.
    """
    result: list[dict[str, Any]] = []
    overall = _limits(budgets)
    if overall:
        if projections is None:
            projections = project(engine, now, billing_day=billing_day)
        for period, limit in overall:
            projection = projections.get(BUDGET_HORIZONS[period])
            result.append(
                _entry(engine, now, period, limit, None, projection, billing_day, warning_ratio)
            )
    for tier, limits in sorted(budgets.per_tier.items()):
        tier_limits = _limits(limits)
        if not tier_limits:
            continue
        tier_projections = project(engine, now, billing_day=billing_day, tier=tier)
        for period, limit in tier_limits:
            projection = tier_projections.get(BUDGET_HORIZONS[period])
            result.append(
                _entry(engine, now, period, limit, tier, projection, billing_day, warning_ratio)
            )
    return result


@dataclass
class Alert:
    """One alert: a threshold crossed, an overrun predicted, or a prediction recovered."""

    kind: AlertKind
    period: str
    tier: str | None
    threshold: float | None
    message: str
    at: datetime
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "period": self.period,
            "tier": self.tier,
            "threshold": self.threshold,
            "message": self.message,
            "at": self.at.isoformat(),
            "payload": dict(self.payload),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        return cls(
            kind=data["kind"],
            period=str(data["period"]),
            tier=data.get("tier"),
            threshold=data.get("threshold"),
            message=str(data["message"]),
            at=datetime.fromisoformat(data["at"]),
            payload=dict(data.get("payload") or {}),
        )


@dataclass
class _BudgetTrack:
    """What has fired for one budget (period x tier) in its current period."""

    period_start: str
    fired: set[float] = field(default_factory=set)
    predicted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "period_start": self.period_start,
            "fired": sorted(self.fired),
            "predicted": self.predicted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _BudgetTrack:
        return cls(
            period_start=str(data["period_start"]),
            fired={float(value) for value in data.get("fired", [])},
            predicted=bool(data.get("predicted", False)),
        )


def _label(period: str, tier: str | None) -> str:
    word = {"daily": "daily", "weekly": "weekly", "monthly": "monthly"}.get(period, period)
    return f"{word} {tier} budget" if tier else f"{word} budget"


def _clock(iso: str, period: str) -> str:
    moment = datetime.fromisoformat(iso)
    if period == "daily":
        return moment.strftime("%H:%M")
    if period == "weekly":
        return moment.strftime("%a %H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


class AlertTracker:
    """Turns successive budget evaluations into alerts, each at most once per period."""

    def __init__(
        self,
        thresholds: Iterable[float] = (0.5, 0.75, 0.9, 1.0),
        *,
        predictive: bool = True,
        recovery_margin: float = RECOVERY_MARGIN,
    ) -> None:
        self.thresholds = sorted({float(value) for value in thresholds})
        self.predictive = predictive
        self.recovery_margin = recovery_margin
        self.tracks: dict[tuple[str, str | None], _BudgetTrack] = {}

    def update(self, budgets: Sequence[Mapping[str, Any]], now: datetime) -> list[Alert]:
        """Alerts due for these :func:`evaluate` entries, in order; remembers what fired."""
        alerts: list[Alert] = []
        for budget in budgets:
            period = str(budget["period"])
            tier = budget.get("tier")
            key = (period, tier)
            period_start = str(budget.get("period_start", ""))
            track = self.tracks.get(key)
            if track is None or track.period_start != period_start:
                track = self.tracks[key] = _BudgetTrack(period_start=period_start)
            alerts.extend(self._thresholds(budget, track, now))
            alerts.extend(self._prediction(budget, track, now))
        return alerts

    def _payload(self, budget: Mapping[str, Any]) -> dict[str, Any]:
        return {key: budget[key] for key in budget}

    def _thresholds(
        self, budget: Mapping[str, Any], track: _BudgetTrack, now: datetime
    ) -> list[Alert]:
        ratio = float(budget["used_ratio"])
        crossed = [t for t in self.thresholds if ratio >= t and t not in track.fired]
        if not crossed:
            return []
        # Only the highest newly crossed line is announced; the lower ones are covered by it.
        threshold = crossed[-1]
        track.fired.update(crossed)
        period, tier = str(budget["period"]), budget.get("tier")
        limit, spent = float(budget["limit_usd"]), float(budget["spent_usd"])
        if threshold >= 1.0:
            what = (
                f"{_label(period, tier)} exceeded"
                if ratio > 1.0
                else f"{_label(period, tier)} reached"
            )
        else:
            what = f"{threshold:.0%} of the {_label(period, tier)} used"
        message = f"{what}: ${spent:,.2f} of ${limit:,.2f}"
        payload = self._payload(budget)
        payload["skipped_thresholds"] = crossed[:-1]
        return [Alert("threshold", period, tier, threshold, message, now, payload)]

    def _prediction(
        self, budget: Mapping[str, Any], track: _BudgetTrack, now: datetime
    ) -> list[Alert]:
        if not self.predictive:
            return []
        period, tier = str(budget["period"]), budget.get("tier")
        limit = float(budget["limit_usd"])
        projected = float(budget.get("projected_usd") or 0.0)
        state = budget["state"]
        if state == "projected_to_exceed" and not track.predicted:
            track.predicted = True
            words = PERIOD_WORDS.get(period, period)
            crossing = budget.get("crossing_at")
            when = f" at {_clock(crossing, period)}" if crossing else ""
            message = (
                f"projected to exceed the {_label(period, tier)}{when}: "
                f"${projected:,.2f} by the end of the {words} (limit ${limit:,.2f})"
            )
            return [Alert("predicted", period, tier, None, message, now, self._payload(budget))]
        if (
            track.predicted
            and state in ("ok", "warning")
            and projected <= self.recovery_margin * limit
        ):
            track.predicted = False
            message = (
                f"{_label(period, tier)} back on track: "
                f"projected ${projected:,.2f} of ${limit:,.2f}"
            )
            return [Alert("recovered", period, tier, None, message, now, self._payload(budget))]
        return []

    def to_dict(self) -> dict[str, Any]:
        """The tracker's state as plain data (to persist across restarts)."""
        return {
            "version": 1,
            "thresholds": list(self.thresholds),
            "tracks": [
                {"period": period, "tier": tier, **track.to_dict()}
                for (period, tier), track in self.tracks.items()
            ],
        }

    def load_dict(self, data: Mapping[str, Any]) -> None:
        """Restore what :meth:`to_dict` saved (thresholds stay as configured)."""
        self.tracks = {
            (str(item["period"]), item.get("tier")): _BudgetTrack.from_dict(item)
            for item in data.get("tracks", [])
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, predictive: bool = True) -> AlertTracker:
        tracker = cls(data.get("thresholds", (0.5, 0.75, 0.9, 1.0)), predictive=predictive)
        tracker.load_dict(data)
        return tracker
