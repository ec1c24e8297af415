"""Tests for the dashboard page at ``GET /`` (``cco_cost_monitor.dashboard``).

The page is checked in-process (content, headers, no external resources, the vendored
uPlot in the wheel) and in a real headless Chromium (driven over the DevTools protocol,
:mod:`tests.cdp`) against the real monitor and simulator: the numbers of ``/api/summary``
in the rendered page, the charts drawn with data (pixels of the tier colours on their
canvas), hover read-outs, state colours, a range change re-querying ``/api/timeseries``,
and the live stream moving a number without a reload. No console message may be logged
(a CSP violation would be one). Screenshots at 1400 px and 600 px go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cco_cost_monitor.api import make_app
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.dashboard import STATIC_FILES
from cco_cost_monitor.extensions import install
from cco_cost_monitor.render import money as usd
from cco_cost_monitor.server import Service
from tests.cdp import Page, browser
from tests.helpers_obs import (
    ARTIFACTS,
    REPO,
    get,
    monitor,
    post_json,
    require_binary,
    simulator,
    wait_until,
)

STATIC = REPO / "cco_cost_monitor" / "static"
VENDORED = ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE")


def test_money_format_of_the_test_is_the_pages() -> None:
    """The page's usd() is render.money, the terminal's (same cases, same text)."""
    script = (STATIC / "dashboard.js").read_text()
    assert "abs > 0 && abs < 1 ? 4 : 2; // more digits only below a dollar" in script
    assert usd(2173.1277) == "$2,173.13"
    assert usd(0.77601) == "$0.7760"
    assert usd(0.0) == "$0.00"
    assert usd(0.69285) == "$0.6929"
    assert usd(0.00004) == "<$0.0001"
    assert usd(-2.5) == "-$2.50"
    assert usd(None) == "—"


async def test_page_and_assets_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    """``/`` and its script and style are served; the CSP forbids inline and foreign code."""
    settings = Settings(
        sources=[SourceSpec(name="main", url="http://127.0.0.1:9/api/stream")], state_dir=tmp_path
    )
    service = Service(settings)
    app = make_app(service)
    install(app, service)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        page = await client.get("/")
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        body = await page.text()
        assert '<script src="/static/dashboard.js">' in body
        assert '<script src="/static/vendor/uPlot.iife.min.js">' in body
        for path, (name, content_type) in STATIC_FILES.items():
            asset = await client.get(path)
            assert asset.status == 200, path
            assert asset.headers["Content-Type"] == f"{content_type}; charset=utf-8"
            assert asset.headers["X-Content-Type-Options"] == "nosniff"
            assert await asset.read() == (STATIC / name).read_bytes()
        # The app alone (no database opened): the event stream says so instead of hanging.
        stream = await client.get("/api/stream")
        assert stream.status == 503


def test_page_needs_nothing_from_the_network() -> None:
    """No file of the page refers to another host: it works offline, without a CDN.

    uPlot's only URL is in its licence banner (``/*! https://github.com/... */``).
    """
    for name, _ in STATIC_FILES.values():
        text = re.sub(r"^/\*!.*?\*/", "", (STATIC / name).read_text(), flags=re.S)
        external = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
        assert not external, (name, external)
        assert "innerHTML" not in text, name
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    assert "1.6.32" in (STATIC / "vendor" / "README.md").read_text()
    assert "(v1.6.32)" in (STATIC / "vendor" / "uPlot.iife.min.js").read_text()[:200]


@pytest.mark.slow
def test_vendored_files_are_in_the_wheel(tmp_path: Path) -> None:
    """hatch packs the page and uPlot into the wheel (what ``pip install`` serves from)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in (*[file for file, _ in STATIC_FILES.values()], *VENDORED):
            member = f"cco_cost_monitor/static/{name}"
            assert member in names, member
            assert archive.read(member) == (STATIC / name).read_bytes(), member


# -- in a real browser ----------------------------------------------------------------------

WIDE, NARROW, HEIGHT = 1400, 600, 900
TIER_COLOURS = {"opus": "#c678dd", "sonnet": "#61afef", "haiku": "#98c379", "other": "#e5c07b"}
BAD, WARN, OK, UNATTRIBUTED = "#e53935", "#d39e00", "#2e7d32", "#9aa0aa"
STATE_WORDS = {
    "ok": "ok",
    "warning": "warning",
    "exceeded": "exceeded",
    "projected_to_exceed": "projected to exceed",
}
# Pixels of the canvas in ``#<chart>`` within 12 of each colour (bars are filled flat).
COUNT_PIXELS = """
((chart, colours) => {
  const canvas = document.querySelector('#' + chart + ' canvas');
  const ctx = canvas.getContext('2d');
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const out = {};
  for (const [name, hex] of Object.entries(colours)) {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
      const near = [r, g, b].every((value, k) => Math.abs(px[i + k] - value) < 12);
      if (near) n++;
    }
    out[name] = n;
  }
  return out;
})
"""


# Page coordinates inside the rightmost bar of a tier's colour in the cost chart (the middle
# of its height, kept inside the plot area: a bar of a few cents may be 1 px tall).
RIGHTMOST_BAR = """
((colours) => {
  const canvas = document.querySelector('#cost-chart canvas');
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const wanted = Object.values(colours);
  const two = (v) => v.toString(16).padStart(2, '0');
  const hex = (i) => '#' + two(d[i]) + two(d[i + 1]) + two(d[i + 2]);
  let right = -1, low = Infinity, high = -1;
  for (let i = 0; i < d.length; i += 4) {
    if (!wanted.includes(hex(i))) continue;
    const x = (i / 4) % canvas.width, y = Math.floor(i / 4 / canvas.width);
    if (x > right) { right = x; low = y; high = y; }
    else if (x === right) { low = Math.min(low, y); high = Math.max(high, y); }
  }
  const r = canvas.getBoundingClientRect();
  const over = document.querySelector('#cost-chart .u-over').getBoundingClientRect();
  const x = r.left + (right * r.width) / canvas.width - 2;
  const y = r.top + (((low + high) / 2) * r.height) / canvas.height;
  return [x, Math.max(over.top + 1, Math.min(over.bottom - 2, y))];
})
"""


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@pytest.fixture(scope="module")
def paused(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, Path, dict[str, Any]]]:
    """A monitor (with a daily budget its traffic exceeds, and unattributed spend) whose
    simulator is paused."""
    chromium_binary = require_binary("chromium", "chromium-browser", "google-chrome")
    workdir = tmp_path_factory.mktemp("dashboard")
    state = workdir / "monitor-state"
    state.mkdir()
    (state / "config.toml").write_text("[budgets]\ndaily_usd = 0.01\nmonthly_usd = 1000000.0\n")
    with (
        # Atomic snapshots: what this test draws is known, not the proxy's races (tested
        # elsewhere), which could make the unattributed dots dwarf every tier's bars.
        simulator(workdir, extra=["--no-realistic"]) as (_, sim_url),
        monitor(workdir, f"{sim_url}/api/stream") as (_, url),
    ):
        wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["requests"] >= 20, 20)
        # More requests in one interval than the proxy's event window: unattributed spend
        # (40 requests), small enough next to the tiers' bars for both to be drawn.
        post_json(f"{sim_url}/_sim/fault", {"kind": "burst", "count": 60}).raise_for_status()
        post_json(f"{sim_url}/_sim/traffic", {"rate": 0}).raise_for_status()

        def settled() -> dict[str, Any] | None:
            before = get(f"{url}/api/summary").json()
            time.sleep(0.6)
            after: dict[str, Any] = get(f"{url}/api/summary").json()
            if before["totals"] != after["totals"] or not after["budgets"]:
                return None
            if not after["totals"]["unattributed_cost_usd"]:
                return None
            # Budgets are evaluated every few seconds: wait until they include all spend.
            daily = next(b for b in after["budgets"] if b["period"] == "daily")
            return after if daily["spent_usd"] == after["periods"]["today"]["cost_usd"] else None

        summary = wait_until(settled, 30)
        yield url, sim_url, workdir, {**summary, "chromium": chromium_binary}


async def open_page(url: str, workdir: Path, binary: str, width: int = WIDE) -> Any:
    """A browser context manager on the dashboard, once both charts are drawn."""
    context = browser(binary, workdir)
    page: Page = await context.__aenter__()
    try:
        await page.viewport(width, HEIGHT)
        await page.send("Page.navigate", url=f"{url}/")
        await page.wait_for(
            "document.querySelectorAll('.uplot canvas').length === 2 && "
            "document.getElementById('live').dataset.state === 'live' && "
            "document.getElementById('today-total').textContent.startsWith('$')",
            30,
        )
        await asyncio.sleep(0.5)  # the figures of the first refresh are in
    except BaseException:
        await context.__aexit__(None, None, None)
        raise
    return context, page


def page_messages(page: Page) -> list[str]:
    """Console messages, less Chromium's hint about this test's own canvas read-backs."""
    return [line for line in page.console if "willReadFrequently" not in line]


async def text(page: Page, selector: str) -> str:
    value: str = await page.evaluate(f"document.querySelector({selector!r}).textContent")
    return value


async def hover_newest_bar(page: Page) -> list[str]:
    """Move the mouse onto the rightmost bar; return the cost chart's legend read-out."""
    # A refresh, or a new minute's empty bucket, may redraw the chart under the move: find
    # the bar again and move again until the read-out is of a bar (not of an empty bucket).
    readout: list[str] = []
    column: list[float] = []
    for attempt in range(20):
        column = await page.evaluate(f"{RIGHTMOST_BAR}({TIER_COLOURS})")
        await page.hover(column[0] - attempt % 2, column[1])
        await asyncio.sleep(0.2)
        readout = await page.evaluate(
            "[...document.querySelectorAll('#cost-chart .u-legend .u-value')]"
            ".map((v) => v.textContent)"
        )
        if "total $" in readout[0] and not readout[0].endswith("total $0.00"):
            break
    where = await page.evaluate(
        "JSON.stringify([document.querySelector('#cost-chart .u-over').getBoundingClientRect(),"
        " document.querySelector('#cost-chart .u-cursor-x').style.transform, scrollY])"
    )
    assert "total $" in readout[0], (readout, column, where)
    return readout


@pytest.mark.slow
async def test_browser_shows_the_summary_charts_states_and_history(
    paused: tuple[str, str, Path, dict[str, Any]],
) -> None:
    """At 1400 px: the summary's figures in people's money format, the charts drawn with
    the tiers' colours, hover read-outs, budget state colours, sources, events and the
    alert history, the important parts above the fold; at 600 px nothing overflows."""
    url, _, workdir, summary = paused
    context, page = await open_page(url, workdir, summary["chromium"])
    try:
        periods = summary["periods"]
        assert await text(page, "#today-total") == usd(periods["today"]["cost_usd"])
        assert await text(page, "#month-total") == usd(periods["this_month"]["cost_usd"])
        assert await text(page, "#hour-total") == usd(periods["this_hour"]["cost_usd"])
        assert await text(page, "#total-cost") == usd(summary["totals"]["cost_usd"])
        assert await text(page, "#connection") == "connected"
        tiers = await page.evaluate(
            "[...document.querySelectorAll('#tiers tbody tr')].map("
            "(tr) => [...tr.cells].map((td) => td.textContent))"
        )
        by_name = {row[0]: row for row in tiers}
        for tier, figures in summary["by_tier"].items():
            assert by_name[tier][3] == usd(figures["cost_usd"]), tier
            assert by_name[tier][4] == f"{figures['requests']:,}", tier

        # Figures of newer summaries (cache savings, last 5 minutes, events per second):
        # shown when the summary has them, their cards hidden when it has not.
        optional = {
            "savings-card": "cache_savings_usd" in summary,
            "last5m-card": "last_5m" in periods,
            "eps-card": "events_per_second" in summary,
        }
        for card, present in optional.items():
            assert await page.evaluate(f"!document.getElementById({card!r}).hidden") == present
        if optional["savings-card"]:
            assert await text(page, "#savings") == usd(summary["cache_savings_usd"])
        if optional["last5m-card"]:
            assert await text(page, "#last5m-total") == usd(periods["last_5m"]["cost_usd"])

        # The unattributed row, explained under the table.
        totals = summary["totals"]
        assert by_name["unattributed"][3] == usd(totals["unattributed_cost_usd"])
        assert by_name["unattributed"][4] == f"{totals['unattributed_requests']:,}"
        assert await page.evaluate("!document.getElementById('unattributed-note').hidden")
        assert "belongs to no tier" in await text(page, "#unattributed-note")

        # Budgets: the exceeded daily one is red, the untouched monthly one green.
        budgets = await page.evaluate(
            "[...document.querySelectorAll('.budget')].map((b) => [b.firstChild.textContent,"
            " b.querySelector('.state').textContent,"
            " getComputedStyle(b.querySelector('.fill')).backgroundColor])"
        )
        states = {b["period"]: b["state"] for b in summary["budgets"]}
        assert states["daily"] == "exceeded"
        colour = {"ok": OK, "warning": WARN, "exceeded": BAD, "projected_to_exceed": BAD}
        for label, word, fill in budgets:
            period = label.split()[0]
            assert word == STATE_WORDS[states[period]], label
            assert fill == rgb(colour[states[period]]), label
        card = await page.evaluate(
            "getComputedStyle(document.getElementById('today-card')).borderLeftColor"
        )
        assert card == rgb(BAD)

        # The cost chart: every tier with spend this hour has bars of its colour.
        pixels = await page.evaluate(f"{COUNT_PIXELS}('cost-chart', {TIER_COLOURS})")
        hour = await page.evaluate(
            "fetch('/api/timeseries?bucket=minute&since=60m').then((r) => r.json())"
        )
        spent = {t for b in hour["buckets"] for t, c in b["cost_by_tier"].items() if c > 0}
        # A tier's bar is a few pixels tall at least when it is >= 3 % of the y scale.
        stacks = [
            sum(c for t, c in b["cost_by_tier"].items() if t != "unattributed")
            for b in hour["buckets"]
        ]
        dots = [b["cost_by_tier"].get("unattributed", 0) for b in hour["buckets"]]
        top = max(stacks + dots)
        visible = {
            t for b in hour["buckets"] for t, c in b["cost_by_tier"].items() if c >= 0.03 * top
        }
        assert visible - {"unattributed"}
        for tier in visible - {"unattributed"}:
            assert pixels[tier] > 10, (tier, pixels)
        for tier in set(TIER_COLOURS) - spent:
            assert pixels[tier] == 0, (tier, pixels)
        # Unattributed spend: grey dots, apart from the stack.
        grey = await page.evaluate(f"{COUNT_PIXELS}('cost-chart', {{'u': {UNATTRIBUTED!r}}})")
        assert grey["u"] > 5, grey
        # The cumulative chart draws the daily budget line (red).
        line = await page.evaluate(f"{COUNT_PIXELS}('cumulative-chart', {{'bad': {BAD!r}}})")
        assert line["bad"] > 100, line
        assert "daily budget" in await text(page, "#cumulative-title")

        # Hover over the rightmost bar: the legend reads out its time, total and tiers.
        readout = await hover_newest_bar(page)
        assert any(value.startswith("$") and value != "$0.00" for value in readout[1:]), readout

        # Sources with their health, events with type/tier/cache marks, the alert history.
        sources = await page.evaluate(
            "[...document.querySelectorAll('#sources tbody tr')].map("
            "(tr) => [...tr.cells].map((td) => td.textContent))"
        )
        assert sources[0][:3] == ["default (analytics)", "pass", "connected"]
        events = await page.evaluate(
            "[...document.querySelectorAll('#events tbody tr')].map("
            "(tr) => [...tr.cells].map((td) => td.textContent))"
        )
        assert len(events) == min(20, summary["totals"]["events"])
        recent = get(f"{url}/api/events?limit=20").json()["events"]
        assert [row[1] for row in events] == [e["event_type"] for e in recent]
        assert [row[2] for row in events] == [e["tier"] for e in recent]
        assert [row[6] == "cache hit" for row in events] == [
            e["cache_hits"] > 0 or e["event_type"] == "cache_hit" for e in recent
        ]
        alerts = get(f"{url}/api/alerts?limit=20").json()["alerts"]
        assert alerts, "the exceeded daily budget fired no alert"
        shown = await page.evaluate(
            "[...document.querySelectorAll('#alerts tbody tr')]"
            ".map((tr) => tr.cells[3].textContent)"
        )
        assert shown == [alert["message"] for alert in alerts]

        # Above the fold at 1400 x 900: the cards, the budgets and the cost chart.
        bottoms = await page.evaluate(
            "['cards', 'budgets-section', 'cost-chart'].map("
            "(id) => document.getElementById(id).getBoundingClientRect().bottom)"
        )
        assert max(bottoms) <= HEIGHT, bottoms
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(ARTIFACTS / "dashboard-1400.png")

        await page.viewport(NARROW, HEIGHT)
        await asyncio.sleep(1.0)  # the charts are resized after 200 ms
        assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW
        width = await page.evaluate(
            "document.querySelector('#cost-chart canvas').getBoundingClientRect().width"
        )
        assert 400 < width <= NARROW
        await page.screenshot(ARTIFACTS / "dashboard-600.png")
        await page.screenshot(ARTIFACTS / "dashboard-600-full.png", full_page=True)
        assert page_messages(page) == []
    finally:
        await context.__aexit__(None, None, None)
    for name in ("dashboard-1400.png", "dashboard-600.png"):
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
async def test_range_change_requeries_the_timeseries(
    paused: tuple[str, str, Path, dict[str, Any]],
) -> None:
    """Each range button asks /api/timeseries for its bucket and span and redraws."""
    url, _, workdir, summary = paused
    context, page = await open_page(url, workdir, summary["chromium"])
    try:
        for button, query, title in (
            ("24h", "bucket=hour&since=24h", "Cost per hour, last 24 hours"),
            ("7d", "bucket=hour&since=7d", "Cost per hour, last 7 days"),
            ("30d", "bucket=day&since=30d", "Cost per day, last 30 days"),
            ("1h", "bucket=minute&since=60m", "Cost per minute, last hour"),
        ):
            page.requests.clear()
            await page.evaluate(f"document.querySelector('[data-range=\"{button}\"]').click()")
            await page.wait_for(f"document.getElementById('cost-title').textContent === {title!r}")
            assert any(f"/api/timeseries?{query}" in request for request in page.requests), (
                button,
                page.requests,
            )
            pressed = await page.evaluate(
                "[...document.querySelectorAll('#ranges button')]"
                ".filter((b) => b.getAttribute('aria-pressed') === 'true')"
                ".map((b) => b.dataset.range)"
            )
            assert pressed == [button]
            pixels = await page.evaluate(f"{COUNT_PIXELS}('cost-chart', {TIER_COLOURS})")
            assert sum(pixels.values()) > 10, (button, pixels)
        assert page.navigations == 1
        assert page_messages(page) == []
    finally:
        await context.__aexit__(None, None, None)


@pytest.mark.slow
async def test_live_stream_moves_the_numbers_without_a_reload(
    paused: tuple[str, str, Path, dict[str, Any]],
) -> None:
    """Traffic resumes: pushed events move today's spend and the event list within
    seconds (the page's own refresh is every 30 s), and the page is never reloaded."""
    url, sim_url, workdir, summary = paused
    context, page = await open_page(url, workdir, summary["chromium"])
    try:
        before = await text(page, "#today-total")
        first_event = await page.evaluate("document.querySelector('#events tbody tr').textContent")
        await page.evaluate("window.notReloaded = true")
        loaded = time.monotonic()
        post_json(f"{sim_url}/_sim/traffic", {"rate": 5}).raise_for_status()
        try:
            await page.wait_for(
                f"document.getElementById('today-total').textContent !== {before!r}", 15
            )
            await page.wait_for("/live · [1-9]/.test(document.getElementById('live').textContent)")
        finally:
            post_json(f"{sim_url}/_sim/traffic", {"rate": 0}).raise_for_status()
        assert time.monotonic() - loaded < 25  # before the fallback refresh could have run
        # Traffic paused again: once the last events are drawn, the hover read-out of the
        # newest bar is that bucket's total now (not the figures of the first drawing).
        await asyncio.sleep(2.0)
        readout = await hover_newest_bar(page)
        buckets = get(f"{url}/api/timeseries?bucket=minute&since=60m").json()["buckets"]
        newest = [b for b in buckets if b["cost_usd"] > 0][-1]
        assert readout[0].endswith(" · total " + usd(newest["cost_usd"])), (readout, newest)
        assert await page.evaluate("window.notReloaded === true")
        assert page.navigations == 1
        assert (
            await page.evaluate("document.querySelector('#events tbody tr').textContent")
            != first_event
        )
        streams = [r for r in page.requests if r.endswith("/api/stream")]
        assert len(streams) == 1, streams
        assert page_messages(page) == []
    finally:
        await context.__aexit__(None, None, None)
