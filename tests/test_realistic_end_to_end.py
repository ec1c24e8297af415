"""The real daemon against ``cco-monitor simulate`` in realistic mode, time compressed.

One minute of what the proxy's code does (wire-format spec, "What a snapshot does not
promise"): 1 s snapshots read apart from the records, a save every 4 s that holds the
stream for 3 s (longer than the monitor's 2 s stall timeout; keep-alives flow) and then
fires the missed snapshots back to back, identical events, overrides with no call, failed
calls, a restart whose uptime does not drop and whose queued requests lift the totals,
a restart that reloads nothing, and two ``kill -9``s of the monitor. At the end
``/api/summary``, ``report`` and ``db check`` must agree with the simulator's ledger
exactly: requests equal, dollars within 1e-9, and exactly the two real proxy restarts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Monitor, Simulator, wait_until

pytestmark = pytest.mark.slow

SIM_ARGS = (
    *("--interval", "1", "--rate", "4", "--seed", "1313"),
    *("--save-interval", "4", "--save-hold", "3", "--keepalive", "1.5"),
    *("--race-rate", "0.5", "--late-event-rate", "0.1"),
    *("--identical-rate", "0.08", "--orphan-override-rate", "0.05", "--failed-rate", "0.05"),
)
MONITOR_ENV = {
    "CCO_MONITOR_SNAPSHOT_INTERVAL_SECONDS": "1",
    "CCO_MONITOR_STALL_TIMEOUT_SECONDS": "2",
}


def caught_up(sim: Simulator, monitor: Monitor) -> bool:
    """The monitor is connected and has seen the proxy's current, settled totals."""
    ledger = sim.ledger()
    source = monitor.summary()["sources"][0]
    return bool(
        not ledger["holding"]
        and source["connection_status"] == "connected"
        and source["proxy_reported_calls"] == ledger["proxy_calls"]
    )


def settled(sim: Simulator, monitor: Monitor) -> None:
    """Wait, traffic paused and the monitor caught up, for two more saves of the proxy: the
    snapshot after the first one's back-to-back burst is a quiet point, where the counters
    of the last change are settled against the events (the lower bound lags one snapshot).
    Two, because the first may have begun before the last request."""
    wait_until(lambda: caught_up(sim, monitor), timeout=30)
    saves = sim.ledger()["saves"]
    wait_until(lambda: sim.ledger()["saves"] >= saves + 2 and caught_up(sim, monitor), timeout=30)
    time.sleep(1.0)


def quiet_restart(sim: Simulator, monitor: Monitor, **params: Any) -> None:
    """A proxy restart with traffic paused and the monitor caught up first.

    What the restarting proxy forgets (its unsaved tail) must have been seen by the monitor
    already, or no one could know it happened; the queued requests of a restart are seen
    in the new process's first window.
    """
    sim.traffic(0)
    wait_until(lambda: caught_up(sim, monitor), timeout=20)
    incarnation = sim.ledger()["incarnation"]
    sim.fault("restart", down_seconds=0.3, **params)
    wait_until(lambda: sim.ledger()["incarnation"] > incarnation, timeout=20)
    sim.traffic(4)


def test_realistic_proxy_totals_report_and_db_check_equal_the_ledger(
    make_simulator: Callable[..., Simulator], tmp_path: Path
) -> None:
    """Races, save holds and bursts, twins, orphans, failures, a hidden and a reload-nothing
    restart, two kill -9s: summary, report and db check equal the simulator's truth."""
    # CCO_TEST_LEDGER=FILE keeps the simulator's ledger (every event) to debug a failing run.
    keep = os.environ.get("CCO_TEST_LEDGER")
    sim = make_simulator(*SIM_ARGS, *(("--ledger", keep) if keep else ()))
    state = tmp_path / "state"
    monitors: list[Monitor] = []

    def start_monitor() -> Monitor:
        monitor = Monitor(state, [sim.stream_url], **MONITOR_ENV).start()
        monitors.append(monitor)
        wait_until(lambda: monitor.health()["connection_status"] == "connected", timeout=20)
        return monitor

    try:
        monitor = start_monitor()
        time.sleep(9)  # two saves with their holds and bursts, random races
        sim.fault("identical", count=3)
        sim.fault("race", mode="event_late", count=2)
        time.sleep(2)
        monitor.kill9()
        time.sleep(0.7)
        monitor = start_monitor()
        sim.fault("orphan_override", count=2)
        sim.fault("failed_call", count=2)
        time.sleep(5)
        quiet_restart(sim, monitor, hidden=True, save_first=True, queued=2)
        time.sleep(6)
        sim.fault("identical", count=2)
        sim.fault("race", mode="cost_ahead", count=2)
        time.sleep(2)
        quiet_restart(sim, monitor, reload="nothing")
        time.sleep(5)
        monitor.kill9()
        time.sleep(0.5)
        monitor = start_monitor()
        sim.fault("race", mode="event_ahead", count=3)
        time.sleep(6)
        sim.traffic(0)
        settled(sim, monitor)
        ledger = sim.ledger()
        summary = monitor.summary()
        assert monitor.proc is not None
        monitor.stop()
    finally:
        for started in monitors:
            started.stop()

    truth = ledger["since_first_contact"]
    totals = summary["totals"]
    source = summary["sources"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCO_MONITOR")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cco_cost_monitor", *args, "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    report_run = cli("report", "--since", "1d", "--format", "json")
    check = cli("db", "check")
    report = json.loads(report_run.stdout) if report_run.returncode == 0 else {"totals": {}}
    observed = {
        "summary_requests": totals["requests"],
        "summary_cost_usd": totals["cost_usd"],
        "unattributed_requests": totals["unattributed_requests"],
        "unattributed_cost_usd": totals["unattributed_cost_usd"],
        "report_requests": report["totals"].get("requests"),
        "report_cost_usd": report["totals"].get("cost_usd"),
        "proxy_restarts": source["proxy_restarts"],
        "db_check_exit": check.returncode,
    }
    expected = {
        "requests": truth["requests"],
        "cost_usd": truth["cost_usd"],
        "proxy_restarts": ledger["restarts"],
        "odd_records": ledger["odd_records"],
        "saves": ledger["saves"],
        "connections": ledger["connections_total"],
    }
    detail = f"observed {observed}; truth {expected}; db check: {check.stdout}{check.stderr}"
    # The schedule really produced what it is about.
    assert ledger["restarts"] == 2, detail
    assert ledger["saves"] >= 6, detail
    assert {"identical", "orphan_override", "failed"} <= set(ledger["odd_records"]), detail
    # What must always hold: report and db check agree with the daemon exactly, and it saw
    # exactly the two real restarts.
    assert report_run.returncode == 0, report_run.stderr
    assert report["totals"]["requests"] == totals["requests"], detail
    assert report["totals"]["cost_usd"] == pytest.approx(totals["cost_usd"], abs=1e-9), detail
    assert check.returncode == 0, detail
    assert "FAIL" not in check.stdout, detail
    assert source["proxy_restarts"] == 2, detail
    assert totals["unattributed_requests"] >= 0, detail
    assert totals["unattributed_cost_usd"] >= 0.0, detail
    # The ledger's truth. Exact, unless the daemon labelled an estimate: events lost after a
    # restart before the new run was ever quiet, with snapshots that race in a way no bound
    # settles (reasons restart_gap/restart_overflow, docs/accounting.md). Such a run is an
    # expected failure with its figures; a run off the truth without such a label fails.
    exact = totals["requests"] == truth["requests"] and totals["cost_usd"] == pytest.approx(
        truth["cost_usd"], abs=1e-9
    )
    if not exact:
        rows = cli("db", "export", "--kind", "unattributed", "--since", "1d")
        reasons = {json.loads(line)["reason"] for line in rows.stdout.splitlines() if line}
        assert reasons & {"restart_gap", "restart_overflow"}, f"off the ledger: {detail}"
        pytest.xfail(f"labelled restart estimate ({sorted(reasons)}): {detail[:400]}")
