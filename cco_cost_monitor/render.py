"""Rich renderables for ``status`` and ``watch``, built from the daemon's JSON documents.

Pure: every function takes the plain dicts of ``/health``, ``/api/summary``,
``/api/events`` and ``/api/timeseries`` (as decoded JSON) and returns a renderable; nothing
here does I/O or reads the clock unless given ``now``. Missing or ``null`` fields render as
``—`` so that an older or newer daemon never crashes the view.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cco_cost_monitor.client import budget_level

__all__ = [
    "WatchFrame",
    "budget_bar",
    "budgets_table",
    "connection_table",
    "events_rate",
    "events_table",
    "minute_series",
    "money",
    "periods_table",
    "projections_table",
    "sparkline",
    "status_view",
    "tiers_table",
    "watch_document",
    "watch_view",
]

TIERS = ("opus", "sonnet", "haiku", "other")
TIER_STYLES = {"opus": "magenta", "sonnet": "cyan", "haiku": "green", "other": "white"}
CONNECTION_STYLES = {
    "connected": "green",
    "connecting": "yellow",
    "disconnected": "red",
    "error": "red",
}
LEVEL_STYLES = {"ok": "green", "warn": "yellow", "over": "red"}
STATE_LABELS = {"projected_to_exceed": "proj. over", "exceeded": "over", "warning": "warning"}
HEALTH_STYLES = {"pass": "green", "warn": "yellow", "fail": "red"}
BLOCKS = "▁▂▃▄▅▆▇█"
DASH = "—"
PERIOD_LABELS = {
    "last_5m": "last 5 min",
    "this_hour": "this hour",
    "today": "today",
    "this_week": "this week",
    "this_month": "this month",
}
HORIZON_LABELS = {
    "end_of_hour": "end of hour",
    "end_of_day": "end of day",
    "end_of_month": "end of month",
}


# -- formatting --------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def money(value: Any) -> str:
    """The one money format, the dashboard's ``usd()`` too: ``$1,234.57``, four decimals only
    below a dollar (``$0.7760``), ``<$0.0001`` below that; ``—`` for null.

    Rounded as the page's ``Intl`` rounds, half away from zero on the number's shortest
    decimal form (0.69285 -> 0.6929, where Python's format rounds the binary value down)."""
    number = _num(value)
    if number is None or not math.isfinite(number):
        return DASH
    if 0 < abs(number) < 0.0001:
        return "<$0.0001"
    places = Decimal("0.0001") if 0 < abs(number) < 1 else Decimal("0.01")
    rounded = Decimal(repr(abs(float(number)))).quantize(places, rounding=ROUND_HALF_UP)
    return f"{'-' if number < 0 and rounded else ''}${rounded:,}"


def count(value: Any) -> str:
    """``12,345``; ``—`` for null."""
    number = _num(value)
    return DASH if number is None else f"{int(number):,}"


def short_count(value: Any) -> str:
    """``950``, ``12.3k``, ``2.5M``; ``—`` for null."""
    number = _num(value)
    if number is None:
        return DASH
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= limit:
            return f"{number / limit:.1f}{suffix}"
    return f"{int(number)}"


def _ago(moment: str | None, now: datetime | None) -> str:
    if not moment or now is None:
        return moment or DASH
    try:
        then = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return moment
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _table(title: str | None = None, **kwargs: Any) -> Table:
    return Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        title_style="bold",
        pad_edge=False,
        **kwargs,
    )


# -- building blocks ---------------------------------------------------------------------


def connection_table(
    health: Mapping[str, Any] | None,
    summary: Mapping[str, Any] | None,
    now: datetime | None = None,
) -> Table:
    """One row per source: state, last snapshot, reconnects, proxy restarts, reason or URL."""
    table = _table("Connection")
    for name in ("source", "state", "last snapshot", "reconnects", "restarts", "detail"):
        table.add_column(
            name,
            justify="right" if name in ("reconnects", "restarts") else "left",
            no_wrap=name != "detail",
        )
    rows: list[Mapping[str, Any]] = list((health or {}).get("sources") or [])
    if not rows:
        rows = list((summary or {}).get("sources") or [])
    for source in rows:
        state = str(source.get("connection_status") or "unknown")
        table.add_row(
            str(source.get("name", DASH)),
            Text(state, style=CONNECTION_STYLES.get(state, "white")),
            _ago(source.get("last_snapshot_at"), now),
            count(source.get("reconnects")),
            count(source.get("proxy_restarts")),
            str(source.get("reason") or source.get("url") or ""),
        )
    if not rows:
        table.add_row("(none)", "", "", "", "", "")
    return table


def periods_table(summary: Mapping[str, Any]) -> Table:
    """Spend and requests in the last 5 minutes, this hour, today, (this week,) this month,
    since first contact, and what the cache saved (with its cache hits)."""
    table = _table("Spend")
    table.add_column("period", no_wrap=True)
    table.add_column("cost", justify="right")
    table.add_column("requests", justify="right")
    periods: Mapping[str, Any] = summary.get("periods") or {}
    for key, label in PERIOD_LABELS.items():
        if key in periods:
            period = periods[key] or {}
            table.add_row(label, money(period.get("cost_usd")), count(period.get("requests")))
    totals: Mapping[str, Any] = summary.get("totals") or {}
    table.add_row(
        Text("since first contact", style="dim"),
        money(totals.get("cost_usd")),
        count(totals.get("requests")),
    )
    if "cache_savings_usd" in summary:
        percent = _num(summary.get("cache_savings_percent"))
        label = "cache saved" + (f" {percent:.1f}%" if percent is not None else "")
        table.add_row(
            Text(label, style="green"),
            money(summary.get("cache_savings_usd")),
            count(totals.get("cache_hits")),
        )
    return table


def events_rate(summary: Mapping[str, Any] | None) -> str | None:
    """``3.2 events/s`` over the last minute, or None when the daemon does not say."""
    rates: Mapping[str, Any] = (summary or {}).get("events_per_second") or {}
    rate = _num(rates.get("1m"))
    if rate is None:
        return None
    return f"{rate:.1f} events/s" if rate < 100 else f"{rate:,.0f} events/s"


def tiers_table(summary: Mapping[str, Any], compact: bool = False) -> Table:
    """Cost, requests and tokens per tier, with each tier's share of the cost.

    ``compact`` shortens the token counts (``2.5M``) for the narrow columns of ``watch``.
    """
    tokens = short_count if compact else count
    table = _table("By tier")
    for name in ("tier", "cost", "share", "requests", "tokens"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    by_tier: Mapping[str, Any] = summary.get("by_tier") or {}
    total = sum(_num((by_tier.get(t) or {}).get("cost_usd")) or 0.0 for t in by_tier)
    names = [t for t in TIERS if t in by_tier] + sorted(t for t in by_tier if t not in TIERS)
    for tier in names:
        row = by_tier.get(tier) or {}
        cost = _num(row.get("cost_usd")) or 0.0
        share = f"{cost / total * 100:.0f}%" if total > 0 else DASH
        table.add_row(
            Text(tier, style=TIER_STYLES.get(tier, "white")),
            money(cost),
            share,
            count(row.get("requests")),
            tokens(row.get("tokens")),
        )
    if not names:
        table.add_row("(no spend yet)", "", "", "", "")
    unattributed = _num((summary.get("totals") or {}).get("unattributed_cost_usd"))
    if unattributed:
        table.add_row(Text("unattributed", style="dim"), money(unattributed), "", "", "")
    return table


def projections_table(summary: Mapping[str, Any]) -> Table:
    """Burn rates and projections with their low-high band (``—`` when not yet known)."""
    table = _table("Burn rate & projections")
    table.add_column("")
    table.add_column("estimate", justify="right")
    table.add_column("band", justify="right")
    burn: Mapping[str, Any] = summary.get("burn_rate_usd_per_hour") or {}
    for window in ("5m", "1h"):
        rate = _num(burn.get(window))
        table.add_row(f"burn {window}", f"{money(rate)}/h" if rate is not None else DASH, "")
    projections: Mapping[str, Any] = summary.get("projections") or {}
    for key, label in HORIZON_LABELS.items():
        item = projections.get(key) if projections else None
        if not item:
            table.add_row(label, DASH, "")
            continue
        low, high = item.get("low_usd"), item.get("high_usd")
        band = f"{money(low)}-{money(high)}" if low is not None or high is not None else ""
        table.add_row(label, money(item.get("cost_usd")), band)
    return table


def _state_label(state: Any, level: str) -> str:
    text = str(state or level)
    return STATE_LABELS.get(text, text)


def budget_bar(ratio: float, width: int = 24) -> Text:
    """A bar of ``width`` cells filled to ``ratio`` (capped at 1), coloured by level."""
    ratio = max(0.0, ratio)
    filled = min(width, round(min(ratio, 1.0) * width))
    level = "over" if ratio >= 1 else "warn" if ratio >= 0.75 else "ok"
    bar = Text("█" * filled, style=LEVEL_STYLES[level])
    bar.append("░" * (width - filled), style="dim")
    return bar


def budgets_table(summary: Mapping[str, Any], bar_width: int = 12, compact: bool = False) -> Table:
    """One row per budget: period, spent / limit, bar, used %, projected, state.

    ``compact`` (for ``watch``) leaves out the projection column.
    """
    table = _table("Budgets")
    columns = ["budget", "spent", "limit", "", "used", "projected", "state"]
    if compact:
        columns.remove("projected")
    for name in columns:
        table.add_column(
            name, justify="left" if name in ("budget", "", "state") else "right", no_wrap=True
        )
    budgets = [b for b in summary.get("budgets") or [] if isinstance(b, Mapping)]
    for budget in budgets:
        ratio = _num(budget.get("used_ratio")) or 0.0
        level = budget_level(budget)
        label = str(budget.get("period") or DASH)
        if budget.get("tier"):
            label += f" ({budget['tier']})"
        cells: list[RenderableType] = [
            label,
            money(budget.get("spent_usd")),
            money(budget.get("limit_usd")),
            budget_bar(ratio, bar_width),
            f"{ratio * 100:.0f}%",
            money(budget.get("projected_usd")),
            Text(_state_label(budget.get("state"), level), style=LEVEL_STYLES[level]),
        ]
        if compact:
            del cells[5]
        table.add_row(*cells)
    if not budgets:
        table.caption = "no budgets configured"
        table.caption_justify = "left"
    return table


def sparkline(values: Sequence[float], width: int | None = None) -> str:
    """Unicode blocks for ``values`` (the last ``width`` of them), scaled to their maximum.

    Zero is a space-like lowest block so that idle minutes are visible as gaps.
    """
    series = list(values)[-width:] if width else list(values)
    top = max(series, default=0.0)
    if top <= 0:
        return " " * len(series)
    out = []
    for value in series:
        if value <= 0:
            out.append(" ")
            continue
        index = min(len(BLOCKS) - 1, max(0, math.ceil(value / top * len(BLOCKS)) - 1))
        out.append(BLOCKS[index])
    return "".join(out)


def minute_series(
    rows: Sequence[Mapping[str, Any]], now: datetime, minutes: int = 60
) -> list[float]:
    """Cost per minute for the ``minutes`` minutes up to ``now`` (oldest first, 0 when idle)."""
    end = now.replace(second=0, microsecond=0)
    first = end - timedelta(minutes=minutes - 1)
    series = [0.0] * minutes
    for row in rows:
        try:
            start = datetime.fromisoformat(str(row.get("start")).replace("Z", "+00:00"))
        except ValueError:
            continue
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        index = int((start - first).total_seconds() // 60)
        if 0 <= index < minutes:
            series[index] += _num(row.get("cost_usd")) or 0.0
    return series


EVENT_TYPE_STYLES = {"api_call": "white", "cache_hit": "green", "model_override": "yellow"}


def events_table(events: Sequence[Mapping[str, Any]], limit: int = 8) -> Table:
    """The newest accounted events: time, type, tier, model, tokens, cost."""
    table = _table("Recent events")
    for name in ("time", "type", "tier", "model", "tokens", "cost"):
        table.add_column(
            name, justify="right" if name in ("tokens", "cost") else "left", no_wrap=True
        )
    for event in list(events)[:limit]:
        occurred = str(event.get("occurred_at") or "")
        clock = occurred[11:19] if len(occurred) >= 19 else occurred
        tier = str(event.get("tier") or DASH)
        kind = str(event.get("event_type") or DASH)
        table.add_row(
            clock,
            Text(kind, style=EVENT_TYPE_STYLES.get(kind, "red")),
            Text(tier, style=TIER_STYLES.get(tier, "white")),
            str(event.get("model") or DASH),
            count(event.get("tokens")),
            money(event.get("cost_usd")),
        )
    if not events:
        table.add_row(Text("no events yet", style="dim"), "", "", "", "", "")
    return table


# -- status ------------------------------------------------------------------------------


def status_header(
    *,
    running: bool,
    pid: int | None,
    url: str,
    health: Mapping[str, Any] | None,
    error: str | None,
    summary: Mapping[str, Any] | None = None,
) -> Text:
    """``● running (pid 123) · http://… · pass · up 5 min · 3.2 events/s`` or why not."""
    text = Text()
    if not running:
        text.append("● not running", style="bold red")
        return text
    text.append("● running", style="bold green")
    text.append(f" (pid {pid})" if pid else "")
    text.append(f" · {url}")
    if health is None:
        text.append(" · HTTP server not answering", style="bold red")
        if error:
            text.append(f" ({error})", style="red")
        return text
    status = str(health.get("status") or "?")
    text.append(" · health ")
    text.append(status, style=HEALTH_STYLES.get(status, "white"))
    uptime = _num(health.get("uptime_seconds"))
    if uptime is not None:
        text.append(f" · up {_duration(uptime)}")
    rate = events_rate(summary)
    if rate is not None:
        text.append(f" · {rate}")
    if health.get("version"):
        text.append(f" · v{health['version']}", style="dim")
    return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def status_view(
    *,
    running: bool,
    pid: int | None,
    url: str,
    health: Mapping[str, Any] | None,
    summary: Mapping[str, Any] | None,
    error: str | None = None,
    now: datetime | None = None,
) -> RenderableType:
    """The whole ``cco-monitor status`` output (``now`` turns times into "5 s ago")."""
    parts: list[RenderableType] = [
        status_header(
            running=running, pid=pid, url=url, health=health, error=error, summary=summary
        )
    ]
    if health is not None or summary is not None:
        parts.append(connection_table(health, summary, now))
    if summary is not None:
        parts += [
            periods_table(summary),
            tiers_table(summary),
            projections_table(summary),
            budgets_table(summary),
        ]
    return Group(*parts)


# -- watch -------------------------------------------------------------------------------


@dataclass
class WatchFrame:
    """Everything one frame of ``watch`` shows; the last good data survives an outage."""

    url: str
    now: datetime
    health: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] | None = None
    timeseries: Sequence[Mapping[str, Any]] = field(default_factory=list)
    events: Sequence[Mapping[str, Any]] = field(default_factory=list)
    error: str | None = None
    last_ok: datetime | None = None
    title: str = "cco-monitor watch"
    hint: str = "q to quit"
    note: str | None = None


def watch_header(frame: WatchFrame) -> Panel:
    """Title, daemon health, connection per source, or the outage banner."""
    text = Text()
    text.append(frame.title, style="bold")
    text.append(f" · {frame.url} · {frame.now.astimezone().strftime('%H:%M:%S')}")
    rate = events_rate(frame.summary)
    if rate is not None:
        text.append(f" · {rate}")
    text.append(f"   {frame.hint}", style="dim")
    if frame.note:
        text.append(f"   {frame.note}", style="green")
    if frame.error is not None:
        text.append("\n")
        text.append("daemon unreachable — retrying", style="bold white on red")
        text.append(f" ({frame.error})", style="red")
        if frame.last_ok is not None:
            text.append(
                f"; showing data from {_ago(frame.last_ok.isoformat(), frame.now)}", style="dim"
            )
    elif frame.health is not None:
        status = str(frame.health.get("status") or "?")
        text.append("\nhealth ")
        text.append(status, style=HEALTH_STYLES.get(status, "white"))
        for source in frame.health.get("sources") or []:
            state = str(source.get("connection_status") or "unknown")
            text.append(f" · {source.get('name', '?')} ")
            text.append(state, style=CONNECTION_STYLES.get(state, "white"))
            if state != "connected" and source.get("reason"):
                text.append(f" ({source['reason']})", style="dim")
        text.append(f" · events {count(frame.health.get('events_processed'))}")
    return Panel(text, box=box.ROUNDED, border_style="red" if frame.error else "blue")


def cost_sparkline(frame: WatchFrame, width: int = 60) -> Panel:
    """Cost per minute over the last hour, with its peak and total."""
    series = minute_series(frame.timeseries, frame.now, minutes=width)
    total, peak = sum(series), max(series, default=0.0)
    body = Text(sparkline(series) or " ", style="cyan")
    body.append(f"\npeak {money(peak)}/min · last 60 min {money(total)}", style="dim")
    return Panel(body, title="cost per minute (60 min)", title_align="left", box=box.ROUNDED)


def watch_view(frame: WatchFrame, events: int = 12) -> Layout:
    """The full-screen ``watch`` layout.

    Rows: header, cost sparkline, spend | tiers, projections | budgets, recent events
    (as many as fit, up to ``events``). Fits 100 x 40; smaller terminals crop the events.
    """
    summary = frame.summary or {}
    layout = Layout(name="root")
    layout.split_column(
        Layout(watch_header(frame), name="header", size=4),
        Layout(cost_sparkline(frame), name="sparkline", size=4),
        Layout(name="money", size=11),
        Layout(name="outlook", size=10),
        Layout(events_table(frame.events, events), name="events", minimum_size=5),
    )
    layout["money"].split_row(
        Layout(periods_table(summary), name="spend", ratio=2),
        Layout(tiers_table(summary, compact=True), name="tiers", ratio=3),
    )
    layout["outlook"].split_row(
        Layout(projections_table(summary), name="projections", ratio=9),
        Layout(budgets_table(summary, 8, compact=True), name="budgets", ratio=11),
    )
    return layout


def watch_document(frame: WatchFrame, events: int = 20) -> Group:
    """``watch --once`` when stdout is not a terminal: every part, one after the other.

    A file or a pipe has no height to fit, so nothing is cropped (the full-screen layout
    of :func:`watch_view` cuts a 25-line default console after the budgets).
    """
    summary = frame.summary or {}
    return Group(
        watch_header(frame),
        cost_sparkline(frame),
        periods_table(summary),
        tiers_table(summary, compact=True),
        projections_table(summary),
        budgets_table(summary, 8, compact=True),
        events_table(frame.events, events),
    )
