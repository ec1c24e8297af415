"""Rendering of ``status`` and ``watch``: known documents in, expected cells out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console, RenderableType

from cco_cost_monitor import render
from cco_cost_monitor.budgets import BUDGET_STATES
from cco_cost_monitor.client import BUDGET_LEVELS, budget_level, format_statusline

NOW = datetime(2025, 11, 17, 18, 30, 15, tzinfo=UTC)


def summary_doc(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "generated_at": NOW.isoformat(),
        "currency": "USD",
        "totals": {
            "cost_usd": 123.456,
            "requests": 4321,
            "cache_hits": 12,
            "model_overrides": 3,
            "events": 4300,
            "unattributed_cost_usd": 1.5,
            "unattributed_requests": 21,
        },
        "by_tier": {
            "opus": {"cost_usd": 90.0, "requests": 1000, "tokens": 2_500_000},
            "sonnet": {"cost_usd": 30.0, "requests": 3000, "tokens": 4_000_000},
            "haiku": {"cost_usd": 0.004, "requests": 321, "tokens": 99_000},
        },
        "by_model": {},
        "periods": {
            "last_5m": {"cost_usd": 0.55, "requests": 9},
            "this_hour": {"cost_usd": 4.25, "requests": 77},
            "today": {"cost_usd": 42.5, "requests": 900},
            "this_month": {"cost_usd": 777.77, "requests": 40000},
        },
        "burn_rate_usd_per_hour": {"5m": 6.5, "1h": 5.25},
        "cache_savings_usd": 4.5,
        "cache_savings_percent": 3.52,
        "events_per_second": {"1m": 4.25, "5m": 3.0},
        "projections": {
            "end_of_hour": {"cost_usd": 7.0, "low_usd": 6.0, "high_usd": 8.0},
            "end_of_day": {"cost_usd": 110.0, "low_usd": 95.5, "high_usd": 130.25},
            "end_of_month": None,
        },
        "budgets": [
            {
                "period": "daily",
                "limit_usd": 50.0,
                "spent_usd": 42.5,
                "used_ratio": 0.85,
                "projected_usd": 110.0,
                "state": "warning",
            },
            {
                "period": "monthly",
                "limit_usd": 2000.0,
                "spent_usd": 777.77,
                "used_ratio": 0.388885,
                "projected_usd": 1500.0,
                "state": "ok",
            },
        ],
        "sources": [
            {
                "name": "default",
                "url": "http://127.0.0.1:3000/api/stream",
                "connection_status": "connected",
                "proxy_restarts": 2,
                "gaps": 0,
            },
        ],
    }
    document.update(overrides)
    return document


def health_doc(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "status": "pass",
        "version": "0.1.0",
        "uptime_seconds": 3720.0,
        "connection_status": "connected",
        "events_processed": 4300,
        "sources": [
            {
                "name": "default",
                "url": "http://127.0.0.1:3000/api/stream",
                "connection_status": "connected",
                "reason": None,
                "last_snapshot_at": (NOW - timedelta(seconds=4)).isoformat(),
                "reconnects": 5,
                "proxy_restarts": 2,
            },
            {
                "name": "backup",
                "url": "http://127.0.0.1:3001/api/stream",
                "connection_status": "error",
                "reason": "connection refused",
                "last_snapshot_at": None,
                "reconnects": 17,
                "proxy_restarts": 0,
            },
        ],
    }
    document.update(overrides)
    return document


def text_of(renderable: RenderableType, height: int | None = None) -> str:
    console = Console(record=True, width=100, height=height or 25, color_system=None)
    console.print(renderable)
    return console.export_text()


def line_with(text: str, first: str) -> str:
    """The first output line that contains ``first``."""
    for line in text.splitlines():
        if first in line:
            return line
    raise AssertionError(f"no line with {first!r} in:\n{text}")


def test_status_shows_periods_tiers_rates_projections_and_budgets() -> None:
    """status renders today, this hour, this month, each tier, burn rates, bands and budgets."""
    out = text_of(
        render.status_view(
            running=True,
            pid=4242,
            url="http://127.0.0.1:8081",
            health=health_doc(),
            summary=summary_doc(),
            now=NOW,
        )
    )
    assert "running (pid 4242)" in out
    assert "health pass" in out
    assert "up 62 min" in out
    assert line_with(out, "today").split()[-2:] == ["$42.50", "900"]
    assert line_with(out, "this hour").split()[-2:] == ["$4.25", "77"]
    assert line_with(out, "this month").split()[-2:] == ["$777.77", "40,000"]
    assert line_with(out, "since first contact").split()[-2:] == ["$123.46", "4,321"]
    assert line_with(out, "last 5 min").split()[-2:] == ["$0.5500", "9"]
    assert line_with(out, "cache saved 3.5%").split()[-2:] == ["$4.50", "12"]
    assert "· 4.2 events/s" in out
    assert line_with(out, "opus").split() == ["opus", "$90.00", "75%", "1,000", "2,500,000"]
    assert line_with(out, "sonnet").split() == ["sonnet", "$30.00", "25%", "3,000", "4,000,000"]
    assert line_with(out, "haiku").split() == ["haiku", "$0.0040", "0%", "321", "99,000"]
    assert line_with(out, "unattributed").split() == ["unattributed", "$1.50"]
    assert line_with(out, "burn 5m").split()[-1] == "$6.50/h"
    assert line_with(out, "burn 1h").split()[-1] == "$5.25/h"
    assert line_with(out, "end of day").split()[-2:] == ["$110.00", "$95.50-$130.25"]
    assert line_with(out, "end of month").split() == ["end", "of", "month", "—"]
    daily = line_with(out, "daily")
    assert daily.split()[:3] == ["daily", "$42.50", "$50.00"]
    assert "85%" in daily
    assert daily.rstrip().endswith("warning")
    assert line_with(out, "monthly").rstrip().endswith("39%   $1,500.00   ok")


def test_budget_states_render_short_and_whole_at_80_columns() -> None:
    """The daemon's budget states fit an 80-column status without truncating the numbers."""
    budgets = [
        {
            "period": "daily",
            "limit_usd": 2.0,
            "spent_usd": 1.54,
            "used_ratio": 0.77,
            "projected_usd": 10.82,
            "state": "projected_to_exceed",
        },
        {
            "period": "monthly",
            "limit_usd": 100.0,
            "spent_usd": 101.25,
            "used_ratio": 1.0125,
            "projected_usd": 207.92,
            "state": "exceeded",
        },
    ]
    console = Console(record=True, width=80, color_system=None)
    console.print(render.budgets_table(summary_doc(budgets=budgets)))
    out = console.export_text()
    assert line_with(out, "daily").split()[:3] == ["daily", "$1.54", "$2.00"]
    assert line_with(out, "daily").split()[-3:] == ["$10.82", "proj.", "over"]
    assert line_with(out, "monthly").split()[-3:] == ["101%", "$207.92", "over"]


def test_status_connection_rows_per_source() -> None:
    """Each source gets its state, last-snapshot age, reconnects and reason."""
    out = text_of(
        render.status_view(
            running=True, pid=1, url="u", health=health_doc(), summary=summary_doc(), now=NOW
        )
    )
    assert line_with(out, "default").split()[:7] == [
        "default",
        "connected",
        "4",
        "s",
        "ago",
        "5",
        "2",
    ]
    backup = line_with(out, "backup").split()
    assert backup[:5] == ["backup", "error", "—", "17", "0"]
    assert "connection refused" in line_with(out, "backup")


def test_status_running_but_http_silent_says_so() -> None:
    """A lock holder whose HTTP server does not answer is reported as such."""
    out = text_of(
        render.status_view(
            running=True,
            pid=99,
            url="http://127.0.0.1:9",
            health=None,
            summary=None,
            error="Connection refused",
        )
    )
    assert "running (pid 99)" in out
    assert "HTTP server not answering (Connection refused)" in out


def test_status_not_running() -> None:
    """Not running renders one clear line and no tables."""
    out = text_of(render.status_view(running=False, pid=None, url="u", health=None, summary=None))
    assert out.strip() == "● not running"


def test_status_survives_nulls_and_empty_budgets() -> None:
    """Null projections, no budgets and no tiers render dashes and hints, not errors."""
    doc = summary_doc(projections=None, budgets=[], by_tier={})
    out = text_of(
        render.status_view(running=True, pid=1, url="u", health=health_doc(), summary=doc)
    )
    assert line_with(out, "end of hour").split()[-1] == "—"
    assert "no budgets configured" in out
    assert "(no spend yet)" in out


def test_sparkline_scales_to_peak_and_keeps_gaps() -> None:
    """The largest value is a full block, zero is blank, half is a middle block."""
    assert render.sparkline([0.0, 1.0, 2.0, 4.0, 8.0]) == " ▁▂▄█"
    assert render.sparkline([0.0, 0.0]) == "  "
    assert render.sparkline([1.0, 2.0, 3.0], width=2) == "▆█"


def test_minute_series_places_buckets_by_minute() -> None:
    """Timeseries rows land in their minute slot; old and missing minutes are zero."""
    rows = [
        {"start": "2025-11-17T18:30:00+00:00", "cost_usd": 0.5},
        {"start": "2025-11-17T19:28:00+01:00", "cost_usd": 0.25},  # 18:28 UTC
        {"start": "2025-11-17T16:00:00+00:00", "cost_usd": 9.0},  # too old
    ]
    series = render.minute_series(rows, NOW, minutes=5)
    assert series == [0.0, 0.0, 0.25, 0.0, 0.5]


def test_budget_bar_width_and_colour() -> None:
    """The bar fills in proportion (capped) and turns yellow then red."""
    half = render.budget_bar(0.5, width=10)
    assert half.plain == "█████░░░░░"
    assert str(half.style) == "green"
    assert str(render.budget_bar(0.8, width=10).style) == "yellow"
    over = render.budget_bar(1.7, width=10)
    assert over.plain == "█" * 10
    assert str(over.style) == "red"


def watch_frame(**overrides: Any) -> render.WatchFrame:
    values: dict[str, Any] = {
        "url": "http://127.0.0.1:8081",
        "now": NOW,
        "health": health_doc(),
        "summary": summary_doc(),
        "timeseries": [
            {"start": "2025-11-17T18:29:00+00:00", "cost_usd": 1.25},
            {"start": "2025-11-17T18:30:00+00:00", "cost_usd": 0.5},
        ],
        "events": [
            {
                "occurred_at": "2025-11-17T18:30:14.123+00:00",
                "event_type": "api_call",
                "tier": "opus",
                "model": "claude-opus-4-1",
                "tokens": 12345,
                "cost_usd": 0.4321,
            },
        ],
        "last_ok": NOW,
    }
    values.update(overrides)
    return render.WatchFrame(**values)


def test_watch_frame_shows_everything() -> None:
    """The watch layout carries header, sources, spend, tiers, sparkline, projections,
    budgets and recent events."""
    out = text_of(render.watch_view(watch_frame()), height=45)
    assert "cco-monitor watch · http://127.0.0.1:8081" in out
    assert "default connected" in out
    assert "backup error (connection refused)" in out
    assert "today" in out
    assert "$42.50" in out
    assert "opus" in out
    assert "$90.00" in out
    assert "peak $1.25/min · last 60 min $1.75" in out
    assert "18:30:15 · 4.2 events/s" in out
    assert "cache saved 3.5%" in out
    assert "█▄" in out
    assert "$95.50-$130.25" in out
    assert "85%" in out
    assert "39%" in out
    assert line_with(out, "claude-opus-4-1").split() == [
        "18:30:14",
        "api_call",
        "opus",
        "claude-opus-4-1",
        "12,345",
        "$0.4321",
    ]
    assert "unreachable" not in out


def test_watch_frame_outage_banner_keeps_last_data() -> None:
    """When the daemon is away the header says so and the last numbers stay on screen."""
    frame = watch_frame(error="Connection refused", now=NOW + timedelta(seconds=30))
    out = text_of(render.watch_view(frame), height=45)
    assert "daemon unreachable — retrying (Connection refused)" in out
    assert "showing data from 30 s ago" in out
    assert "$42.50" in out


def test_watch_frame_before_any_data() -> None:
    """A frame with no data at all still renders (dashes, hints)."""
    frame = render.WatchFrame(url="u", now=NOW, error="Connection refused")
    out = text_of(render.watch_view(frame), height=45)
    assert "daemon unreachable" in out
    assert "no events yet" in out


@pytest.mark.parametrize(
    ("budget", "level"),
    [
        ({"state": "ok", "used_ratio": 0.9}, "ok"),
        ({"used_ratio": 1.2}, "over"),
        ({"used_ratio": 0.8}, "warn"),
        ({"used_ratio": 0.1, "limit_usd": 10, "projected_usd": 12}, "warn"),
        ({"used_ratio": 0.1}, "ok"),
        ({"state": "some_future_word", "used_ratio": 0.1}, "warn"),
        ({"state": "warning", "used_ratio": 0.5}, "warn"),
        ({"state": "projected_to_exceed", "used_ratio": 0.2}, "warn"),
        ({"state": "exceeded", "used_ratio": 1.01}, "over"),
    ],
)
def test_budget_level(budget: dict[str, Any], level: str) -> None:
    """The daemon's states are trusted; otherwise the ratio and projection decide."""
    assert budget_level(budget) == level


def test_the_client_knows_exactly_the_states_the_daemon_sends() -> None:
    assert set(BUDGET_LEVELS) == set(BUDGET_STATES)


def test_statusline_format() -> None:
    """The status line has today's spend, the 1 h burn rate and the tightest budget."""
    assert format_statusline(summary_doc()) == "cco $42.50 today · $5.25/h · daily 85% ⚠"
    down = summary_doc(budgets=[], sources=[{"connection_status": "error"}])
    assert format_statusline(down) == "cco $42.50 today · $5.25/h · proxy down"
    assert format_statusline({}) == "cco $0.00 today · $0.00/h"
