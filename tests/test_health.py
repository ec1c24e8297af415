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


def test_fail_is_the_only_503() -> None:
    """The status-to-HTTP mapping: 503 for fail only (pure check of summary.health_status)."""
    assert health_status(["pass"], None) == "pass"
    assert health_status(["pass", "warn"], None) == "warn"
    assert health_status(["pass", "fail"], None) == "warn"
    assert health_status(["fail", "fail"], None) == "fail"
    assert health_status(["pass"], 10.0) == "warn"
    assert health_status([], None) == "warn"
