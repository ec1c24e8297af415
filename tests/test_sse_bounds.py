"""The daemon's SSE read path under hostile framing: the real daemon against the simulator."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Monitor, Simulator, truth_since_first_contact, wait_until

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_one_event_of_many_short_data_lines_is_bounded_counted_and_exact(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor]
) -> None:
    """60 MB in 64-byte `data:` lines of ONE event (no blank line): the daemon never holds
    it (RSS grows by far less than the event), counts `oversized_event` in /health, keeps
    its connection and ingesting, and its totals still equal the simulator's ledger."""
    sim = make_simulator("--interval", "0.1", "--rate", "5", "--seed", "19")
    monitor = make_monitor([sim.stream_url], CCO_MONITOR_MAX_LINE_BYTES="65536")
    wait_until(lambda: monitor.health()["snapshots_processed"] > 5)
    assert monitor.proc is not None
    before = rss_mib(monitor.proc.pid)
    peak = before
    sim.fault("many_lines", size=60 * MiB)

    def counted() -> bool:
        nonlocal peak
        peak = max(peak, rss_mib(monitor.proc.pid))  # type: ignore[union-attr]
        bad = monitor.health()["sources"][0]["bad_frames"]
        return bool(bad.get("oversized_event", 0) >= 1)

    wait_until(counted, timeout=60, interval=0.02)
    health = monitor.health()
    assert health["sources"][0]["bad_frames"].get("oversized_event") == 1
    assert "invalid_json" not in health["sources"][0]["bad_frames"]
    assert peak - before < 20, f"RSS {before:.1f} -> {peak:.1f} MiB while the event streamed"
    snapshots = health["snapshots_processed"]
    wait_until(lambda: monitor.health()["snapshots_processed"] > snapshots + 5)
    assert monitor.health()["connection_status"] == "connected"

    sim.traffic(0)
    time.sleep(0.3)
    wait_until(
        lambda: (
            monitor.summary()["sources"][0]["proxy_reported_calls"] == sim.ledger()["proxy_calls"]
        ),
        timeout=20,
    )
    truth_cost, truth_calls = truth_since_first_contact(sim.ledger())
    totals = monitor.summary()["totals"]
    assert totals["requests"] == truth_calls
    assert totals["cost_usd"] == pytest.approx(truth_cost, abs=1e-9)
