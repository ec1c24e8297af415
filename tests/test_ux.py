"""Issue 18's rough edges, against the real daemon and the real simulator on loopback."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cco_cost_monitor.config import load_settings
from cco_cost_monitor.projections import HORIZONS
from cco_cost_monitor.server import Service
from cco_cost_monitor.store import AlertRecord, Batch, Store
from tests.builders import accounted_event
from tests.conftest import Monitor, Simulator, run_cli, wait_until


def test_alert_history_is_newest_first_after_a_restart(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """Alerts saved by an earlier run come back newest first; ?limit=2 keeps the newest two."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    fired = [
        AlertRecord(
            kind="threshold",
            message=f"daily budget at {share:.0%}",
            at=start + timedelta(minutes=index),
            period="daily",
            threshold=share,
        )
        for index, share in enumerate((0.5, 0.75, 0.9))
    ]
    with Store.open(state / "monitor.db") as store:
        store.commit_batch(Batch(alerts=fired))
    monitor = make_monitor(["http://127.0.0.1:9/api/stream"], state_dir=state)
    alerts = monitor.get("/api/alerts")["alerts"]
    assert [alert["threshold"] for alert in alerts] == [0.9, 0.75, 0.5]
    newest = monitor.get("/api/alerts?limit=2")["alerts"]
    assert [alert["threshold"] for alert in newest] == [0.9, 0.75]


# -- one moment per document (bug 3) -------------------------------------------------------


def _service(tmp_path: Path, now: datetime, **budgets: float) -> Service:
    flags: dict[str, Any] = {"state_dir": str(tmp_path / "s"), "timezone": "UTC"}
    if budgets:
        flags["budgets"] = budgets
    return Service(load_settings(flags).settings, flags=flags, clock=lambda: now)


def test_summary_figures_come_from_one_moment(tmp_path: Path) -> None:
    """Spend recorded after the last evaluation shows in periods, budgets and projections alike."""
    now = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    service = _service(tmp_path, now, daily_usd=10.0)
    service.engine.record_event(accounted_event(key="a", occurred_at=now, cost=0.4), now)
    service.evaluate_budgets()
    service.engine.record_event(accounted_event(key="b", occurred_at=now, cost=0.5), now)
    document = service.summary()
    today = document["periods"]["today"]["cost_usd"]
    assert today == pytest.approx(0.9)
    assert document["budgets"][0]["spent_usd"] == pytest.approx(today, abs=1e-12)
    for horizon, period in HORIZONS.items():
        projection = document["projections"][horizon]
        spent = document["periods"][period]["cost_usd"]
        assert projection["spent_usd"] == pytest.approx(spent, abs=1e-12)
        assert projection["low_usd"] >= spent - 1e-12
        assert projection["cost_usd"] >= spent - 1e-12


def test_reading_the_summary_fires_no_alert(tmp_path: Path) -> None:
    """Only the evaluation loop fires alerts; a request before its first round fires none."""
    now = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    service = _service(tmp_path, now, daily_usd=1.0)
    service.engine.record_event(accounted_event(key="a", occurred_at=now, cost=2.0), now)
    document = service.summary()
    assert document["budgets"][0]["state"] == "exceeded"
    assert service.dispatcher.history() == []
    service.evaluate_budgets()
    assert [alert.threshold for alert in service.dispatcher.history()] == [1.0]


def test_a_busy_daemon_never_projects_below_what_is_spent(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor]
) -> None:
    """Under steady traffic every /api/summary agrees with itself."""
    sim = make_simulator("--interval", "0.1", "--rate", "40", "--seed", "18")
    monitor = make_monitor([sim.stream_url], CCO_MONITOR_BUDGETS__DAILY_USD="1000")
    wait_until(lambda: monitor.summary()["totals"]["requests"] > 20)
    for _ in range(25):
        document = monitor.summary()
        periods = document["periods"]
        assert document["budgets"][0]["spent_usd"] == pytest.approx(
            periods["today"]["cost_usd"], abs=1e-9
        )
        for horizon, period in HORIZONS.items():
            projection = document["projections"][horizon]
            assert projection["cost_usd"] >= periods[period]["cost_usd"] - 1e-9, horizon
            assert projection["low_usd"] >= periods[period]["cost_usd"] - 1e-9, horizon
        time.sleep(0.08)


# -- a broken config.toml (bug 2) -------------------------------------------------------------


def test_a_broken_config_does_not_lock_the_user_out(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """status, watch, report and stop warn and work; restart refuses and stops nothing."""
    sim = make_simulator("--interval", "0.1", "--rate", "5", "--seed", "21")
    state = tmp_path / "state"
    monitor = make_monitor([sim.stream_url], state_dir=state)
    wait_until(lambda: monitor.summary()["totals"]["requests"] > 0)
    (state / "config.toml").write_text(f"health_port = {monitor.port}\n[budgets]\ndaily_usd = -5\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCO_MONITOR")}
    where = ("--state-dir", str(state))

    status = run_cli("status", "--json", *where, env=env)
    assert status.returncode == 0, status.stderr
    assert "budgets.daily_usd" in status.stderr
    assert "warning" in status.stderr
    assert json.loads(status.stdout)["summary"]["totals"]["requests"] > 0

    watch = run_cli("watch", "--once", *where, env=env)
    assert watch.returncode == 0, watch.stderr
    assert "Recent events" in watch.stdout

    report = run_cli("report", "--format", "json", *where, env=env)
    assert report.returncode == 0, report.stderr

    restart = run_cli("restart", *where, env=env)
    assert restart.returncode == 1
    assert "budgets.daily_usd" in restart.stderr
    assert "not restarting" in restart.stderr
    assert monitor.proc is not None
    assert monitor.proc.popen.poll() is None

    stop = run_cli("stop", *where, env=env)
    assert stop.returncode == 0, stop.stderr
    assert "budgets.daily_usd" in stop.stderr
    assert monitor.proc.wait(10) == 0


def test_a_config_file_that_is_not_toml_still_lets_status_answer(tmp_path: Path) -> None:
    """Not even TOML: status says so, then reports "not running" (3) instead of failing (1)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.toml").write_text("[budgets\ndaily_usd = 5\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCO_MONITOR")}
    status = run_cli("status", "--state-dir", str(state), env=env)
    assert status.returncode == 3, status.stderr
    assert "invalid TOML" in status.stderr
    start = run_cli("start", "--state-dir", str(state), env=env)
    assert start.returncode == 1
    assert "invalid TOML" in start.stderr


# -- output to a pipe (bug 4, status width) -----------------------------------------------------


def test_watch_once_and_status_print_everything_into_a_pipe(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """Not a terminal: watch --once shows every section, status cuts no cell at 80 columns."""
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "22")
    state = tmp_path / "state"
    monitor = make_monitor(
        [f"a-source-with-a-rather-long-name={sim.stream_url}"],
        state_dir=state,
        CCO_MONITOR_BUDGETS__DAILY_USD="1000",
    )
    wait_until(lambda: len(monitor.get("/api/events?limit=5")["events"]) >= 5)
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    watch = run_cli("watch", "--once", "--state-dir", str(state), env=env)
    assert watch.returncode == 0, watch.stderr
    for section in ("Spend", "By tier", "end of month", "Budgets", "Recent events"):
        assert section in watch.stdout, section
    assert watch.stdout.count(":") > 10  # event times, hh:mm:ss
    status = run_cli("status", "--state-dir", str(state), env=env)
    assert status.returncode == 0, status.stderr
    assert "…" not in status.stdout
    assert "a-source-with-a-rather-long-name" in status.stdout
