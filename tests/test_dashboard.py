"""Tests for the dashboard page at ``GET /`` (``cco_cost_monitor.dashboard``).

The page is checked in-process (content, headers, no external resources) and in a real
headless Chromium against the real monitor and simulator: the numbers of
``/api/summary`` must appear in the rendered DOM, no console message may be logged,
and a screenshot is kept under ``test-artifacts/``.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cco_cost_monitor.api import make_app
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.dashboard import STATIC_FILES
from cco_cost_monitor.extensions import install
from cco_cost_monitor.server import Service
from tests.helpers_obs import (
    ARTIFACTS,
    get,
    monitor,
    post_json,
    require_binary,
    simulator,
    wait_until,
)

STATIC = Path(__file__).resolve().parent.parent / "cco_cost_monitor" / "static"


def usd(value: float) -> str:
    """The dashboard's money format (JavaScript ``toFixed(4)``)."""
    return f"${value:.4f}"


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
        for path in ("/static/dashboard.js", "/static/dashboard.css"):
            asset = await client.get(path)
            assert asset.status == 200, path
            assert asset.headers["X-Content-Type-Options"] == "nosniff"


def test_page_needs_nothing_from_the_network() -> None:
    """No file of the page refers to another host: it works offline, without a CDN."""
    for name, _ in STATIC_FILES.values():
        text = (STATIC / name).read_text()
        external = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
        assert external == ["http://www.w3.org"] or not external, (name, external)
        assert "innerHTML" not in text, name


# -- in a real browser ----------------------------------------------------------------------


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1280,1400",
]


def chromium(url: str, workdir: Path, *extra: str) -> tuple[str, str]:
    """Run headless Chromium on ``url``; return (stdout, stderr)."""
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    profile = workdir / f"chromium-profile-{time.monotonic_ns()}"
    result = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=workdir,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr[-3000:]
    return result.stdout.decode(errors="replace"), stderr


def console_messages(stderr: str) -> list[str]:
    """Lines where Chromium reports a console message or an uncaught error of the page."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"#{element_id} not in the DOM"
    return match.group(1)


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, Any]]]:
    """A monitor whose simulator has served some traffic and is now paused."""
    require_binary("chromium", "chromium-browser", "google-chrome")
    workdir = tmp_path_factory.mktemp("dashboard")
    with (
        simulator(workdir) as (_, sim_url),
        monitor(workdir, f"{sim_url}/api/stream") as (_, url),
    ):
        wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["requests"] >= 5, 20)
        post_json(f"{sim_url}/_sim/traffic", {"rate": 0}).raise_for_status()

        def settled() -> dict[str, Any] | None:
            before = get(f"{url}/api/summary").json()
            time.sleep(0.6)
            after: dict[str, Any] = get(f"{url}/api/summary").json()
            return after if before["totals"] == after["totals"] else None

        yield url, workdir, wait_until(settled, 20)


@pytest.mark.slow
def test_browser_shows_the_numbers_of_the_summary(paused: tuple[str, Path, dict[str, Any]]) -> None:
    """In headless Chromium the page shows the summary's totals, tiers, state and events."""
    url, workdir, summary = paused
    dom, stderr = chromium(f"{url}/", workdir, "--virtual-time-budget=4000", "--dump-dom")
    (ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard.html").write_text(dom)
    assert console_messages(stderr) == []
    periods = summary["periods"]
    assert text_of(dom, "today-total") == usd(periods["today"]["cost_usd"])
    assert text_of(dom, "month-total") == usd(periods["this_month"]["cost_usd"])
    assert text_of(dom, "hour-total") == usd(periods["this_hour"]["cost_usd"])
    assert text_of(dom, "total-cost") == usd(summary["totals"]["cost_usd"])
    assert text_of(dom, "connection") == "connected"
    tiers = re.search(r'<table id="tiers">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert tiers
    for tier, row in summary["by_tier"].items():
        cells = f"<td>{tier}</td>"
        assert cells in tiers.group(1), tier
        assert usd(row["cost_usd"]) in tiers.group(1), tier
    events = re.search(r'<table id="events">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert events
    assert events.group(1).count("<tr>") == min(20, summary["totals"]["events"])
    assert "<svg" in dom
    assert "<rect" in dom


@pytest.mark.slow
def test_browser_screenshot_is_saved(paused: tuple[str, Path, dict[str, Any]]) -> None:
    """Chromium renders the page to ``test-artifacts/dashboard.png`` without console errors."""
    url, workdir, _ = paused
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "dashboard.png"
    target.unlink(missing_ok=True)
    _, stderr = chromium(f"{url}/", workdir, "--virtual-time-budget=4000", f"--screenshot={target}")
    assert console_messages(stderr) == []
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 10_000
