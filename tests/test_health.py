"""End-to-end tests of ``/health`` and ``/livez`` semantics (built in ``summary.py``).

A real monitor (``start --foreground``, 0.2 s snapshots, 2 s grace, 0.5 s maximum
backoff) watches a real simulator. The health document must follow the proxy: pass
while connected, warn as soon as the proxy goes away, fail (HTTP 503) once it has been
gone longer than the grace period, and pass again when a proxy is back on the same
port. ``/livez`` answers 200 throughout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cco_cost_monitor.summary import health_status
from tests.conftest import free_port
from tests.helpers_obs import get, monitor, simulator

GRACE = 2.0
HEALTH_ENV = {"CCO_MONITOR_HEALTH_GRACE_SECONDS": str(GRACE)}


def health(url: str) -> tuple[int, dict[str, Any]]:
    response = get(f"{url}/health")
    assert response.headers["Content-Type"].startswith("application/health+json")
    assert response.headers["Cache-Control"] == "no-store"
    document: dict[str, Any] = response.json()
    expected = 503 if document["status"] == "fail" else 200
    assert response.status_code == expected, document
    return response.status_code, document


def wait_for_status(url: str, status: str, timeout: float) -> tuple[list[str], dict[str, Any]]:
    """Poll ``/health`` until it reports ``status``; return every status seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, document = health(url)
        if not seen or seen[-1] != document["status"]:
            seen.append(document["status"])
        if document["status"] == status:
            return seen, document
        assert get(f"{url}/livez").status_code == 200
        time.sleep(0.05)
    pytest.fail(f"/health never reported {status!r}; saw {seen}")


@pytest.mark.slow
def test_health_follows_the_proxy_down_and_back(tmp_path: Path) -> None:
    """pass while connected; warn, then fail with 503 after the grace; pass when it is back."""
    port = free_port()
    with (
        simulator(tmp_path, port=port, name="sim-1") as (sim, sim_url),
        monitor(tmp_path, f"{sim_url}/api/stream", env=HEALTH_ENV) as (_, url),
    ):
        seen, document = wait_for_status(url, "pass", 15)
        assert document["connection_status"] == "connected"
        assert document["sources"][0]["status"] == "pass"
        assert document["last_snapshot_at"] is not None
        for key in (
            "version",
            "uptime_seconds",
            "events_processed",
            "total_cost_usd",
            "last_event_at",
            "reconnects",
            "checks",
        ):
            assert key in document, key

        stopped_at = time.monotonic()
        assert sim.stop() == 0
        seen, document = wait_for_status(url, "fail", GRACE + 10)
        failed_after = time.monotonic() - stopped_at
        assert seen[0] == "pass" or seen[0] == "warn"
        assert "warn" in seen, seen
        assert seen.index("warn") < seen.index("fail")
        # Not before the grace period: warn covers a short blip.
        assert failed_after >= GRACE, failed_after
        assert document["connection_status"] != "connected"
        assert document["sources"][0]["status"] == "fail"
        assert document["sources"][0]["reason"]
        assert get(f"{url}/livez").status_code == 200
        # Still failing a moment later: reconnect attempts do not reset the clock.
        time.sleep(1.0)
        status_code, document = health(url)
        assert (status_code, document["status"]) == (503, "fail")

        with simulator(tmp_path, port=port, name="sim-2"):
            seen, document = wait_for_status(url, "pass", 15)
            assert document["connection_status"] == "connected"
            assert document["reconnects"] >= 1
            assert get(f"{url}/livez").status_code == 200


@pytest.mark.slow
def test_livez_answers_when_no_proxy_was_ever_there(tmp_path: Path) -> None:
    """With nothing listening at the source, /livez is 200 while /health goes warn then fail."""
    source = f"http://127.0.0.1:{free_port()}/api/stream"
    with monitor(tmp_path, source, env=HEALTH_ENV) as (_, url):
        livez = get(f"{url}/livez")
        assert livez.status_code == 200
        assert livez.text == "ok\n"
        seen, document = wait_for_status(url, "fail", GRACE + 10)
        assert seen[0] == "warn"
        assert document["connection_status"] in ("connecting", "disconnected", "error")
        assert get(f"{url}/livez").status_code == 200


def test_sources_combine_into_one_status() -> None:
    """fail only when every source fails; any other mix, or the disk behind, is warn.

    (The HTTP side, 503 for fail only, is checked on the real daemon above.)"""
    assert health_status(["pass"], None) == "pass"
    assert health_status(["pass", "warn"], None) == "warn"
    assert health_status(["pass", "fail"], None) == "warn"
    assert health_status(["fail", "fail"], None) == "fail"
    assert health_status(["pass"], 10.0) == "warn"
    assert health_status([], None) == "warn"


def _source_health(
    *,
    status: str = "connected",
    snapshot_age: float | None = 1.0,
    down_for: float = 0.0,
    auth_rejected: bool = False,
) -> tuple[str, str]:
    """The health of one source, from the pure document builder, at a fixed moment."""
    from datetime import UTC, datetime, timedelta

    from cco_cost_monitor.config import SourceSpec
    from cco_cost_monitor.engine import Engine
    from cco_cost_monitor.pricing import PriceTable
    from cco_cost_monitor.reconciler import Reconciler
    from cco_cost_monitor.source import ConnectionState
    from cco_cost_monitor.summary import SourceView, build_health

    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    connection = ConnectionState()
    connection.move(status, None if status == "connected" else "ConnectError: refused")  # type: ignore[arg-type]
    connection.since = now - timedelta(seconds=down_for)
    connection.down_since = None if status == "connected" else connection.since
    connection.auth_rejected = auth_rejected
    if snapshot_age is not None:
        connection.last_snapshot_at = now - timedelta(seconds=snapshot_age)
    spec = SourceSpec(name="p", url="http://127.0.0.1:3000/api/stream")
    view = SourceView(spec, connection, Reconciler("p", PriceTable.default()))
    document = build_health(
        engine=Engine(),
        views=[view],
        now=now,
        started_at=now - timedelta(hours=1),
        snapshot_interval=5.0,
        grace_seconds=60.0,
    )
    (check,) = document["checks"]["source:p"]
    return check["status"], check["output"]


def test_a_fresh_connected_source_passes() -> None:
    """Connected with a snapshot younger than three intervals: pass."""
    assert _source_health(snapshot_age=4.0) == ("pass", "connected")


def test_a_stale_source_warns() -> None:
    """Connected but no snapshot for more than three intervals: warn, with the age."""
    status, output = _source_health(snapshot_age=16.0)
    assert (status, output) == ("warn", "stale: last snapshot 16 s ago")


def test_a_source_down_within_the_grace_warns_then_fails() -> None:
    """Down: warn during the grace period, fail once it has passed."""
    assert _source_health(status="disconnected", down_for=30.0)[0] == "warn"
    status, output = _source_health(status="disconnected", down_for=61.0)
    assert status == "fail"
    assert output.startswith("disconnected for 61 s")


def test_rejected_credentials_fail_at_once() -> None:
    """A 401/403 from the proxy is a configuration error: fail, whatever the grace."""
    status, _ = _source_health(status="error", auth_rejected=True)
    assert status == "fail"
