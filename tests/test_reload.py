"""SIGHUP reload and SIGUSR1 summary on a real ``start --foreground`` daemon with live traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cco_cost_monitor import daemon
from cco_cost_monitor.config import load_settings
from cco_cost_monitor.errors import ConfigError
from cco_cost_monitor.pidlock import lock_held
from tests.conftest import PYTHON, Monitor, Proc, Simulator, free_port, wait_until

pytestmark = pytest.mark.slow

FIRST = """
[budgets]
daily_usd = 100

[prices."claude-sonnet-4-5"]
input = 4.0
output = 20.0
"""

SECOND = """
[budgets]
daily_usd = 5

[prices."claude-sonnet-4-5"]
input = 6.0
output = 30.0
"""

BROKEN = "no_such_key = 1\n" + SECOND


def log_records(monitor: Monitor) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (stderr), skipping anything that is not JSON."""
    assert monitor.proc is not None
    records = []
    for line in monitor.proc.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def logged(monitor: Monitor, event: str) -> list[dict[str, Any]]:
    return [record for record in log_records(monitor) if record.get("event") == event]


def limits(monitor: Monitor) -> list[float]:
    return [budget["limit_usd"] for budget in monitor.summary()["budgets"]]


def price_versions(monitor: Monitor) -> set[str]:
    events = monitor.get("/api/events?limit=500")["events"]
    return {event["price_version"] for event in events}


def test_sighup_reloads_budgets_and_prices_keeps_counts_and_rejects_a_bad_config(
    tmp_path: Path,
    make_simulator: Callable[..., Simulator],
) -> None:
    """SIGHUP applies a new budget and price without resetting counts; a broken config is
    rejected with a log line naming the key and the old settings stay; SIGUSR1 logs a summary."""
    config = tmp_path / "monitor.toml"
    config.write_text(FIRST)
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "5")
    monitor = Monitor(tmp_path / "state", [sim.stream_url])
    try:
        monitor.start("--config", str(config))
        exercise(monitor, config)
    finally:
        monitor.stop()


def exercise(monitor: Monitor, config: Path) -> None:
    assert monitor.proc is not None

    wait_until(lambda: monitor.summary()["totals"]["requests"] > 0)
    assert limits(monitor) == [100.0]
    (old_version,) = wait_until(lambda: (v := price_versions(monitor)) and v)
    assert old_version.startswith("builtin-")
    assert "+" in old_version
    before = monitor.summary()["totals"]

    config.write_text(SECOND)
    reload = subprocess.run(
        [PYTHON, "-m", "cco_cost_monitor", "reload", "--state-dir", str(monitor.state_dir)],
        env=monitor.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert reload.returncode == 0, reload.stderr
    assert f"sent SIGHUP to cco-monitor (pid {monitor.proc.pid})" in reload.stdout

    wait_until(lambda: limits(monitor) == [5.0])
    after = monitor.summary()["totals"]
    assert after["requests"] >= before["requests"]
    assert after["cost_usd"] >= before["cost_usd"]
    (reloaded,) = wait_until(lambda: logged(monitor, "configuration reloaded"))
    new_version = reloaded["price_table"]
    assert new_version != old_version
    # Events accounted from now on are priced with the new table.
    wait_until(lambda: new_version in price_versions(monitor))

    config.write_text(BROKEN)
    os.kill(monitor.proc.pid, signal.SIGHUP)
    (rejected,) = wait_until(
        lambda: logged(monitor, "reload rejected: keeping the running configuration")
    )
    assert rejected["level"] == "error"
    assert "no_such_key" in rejected["error"]
    assert "unknown key" in rejected["error"]
    assert monitor.proc.popen.poll() is None
    assert httpx.get(f"{monitor.url}/livez", timeout=2).status_code == 200
    assert limits(monitor) == [5.0]
    assert monitor.summary()["totals"]["requests"] >= after["requests"]
    assert len(logged(monitor, "configuration reloaded")) == 1

    os.kill(monitor.proc.pid, signal.SIGUSR1)
    (summary,) = wait_until(lambda: logged(monitor, "summary"))
    assert summary["requests"] >= after["requests"]
    assert "total_cost_usd" in summary


def test_background_reload_with_a_relative_state_dir_keeps_its_config_file(
    tmp_path: Path,
) -> None:
    """A background daemon started with a relative --state-dir still reads that dir's
    config.toml on reload (the daemon's working directory is /)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.toml").write_text("[budgets]\ndaily_usd = 100\n")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    env["CCO_MONITOR_HOME"] = str(tmp_path / "home")
    common = ["--state-dir", "state", "--health-port", str(port)]
    dead_source = f"http://127.0.0.1:{free_port()}/api/stream"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "cco_cost_monitor", *args, *common],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def budget_limits() -> list[float]:
        summary = httpx.get(f"http://127.0.0.1:{port}/api/summary", timeout=5).json()
        return [budget["limit_usd"] for budget in summary["budgets"]]

    try:
        started = cli("start", "--source", dead_source)
        assert started.returncode == 0, started.stderr
        assert budget_limits() == [100.0]
        assert cli("reload").returncode == 0
        log = state / "monitor.log"
        wait_until(lambda: "reload" in log.read_text())
        assert "reload rejected" not in log.read_text()
        assert budget_limits() == [100.0]
    finally:
        if lock_held(state / "daemon.pid"):
            daemon.stop(state / "daemon.pid", timeout=5)


def test_a_rejected_price_override_is_blamed_on_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message that rejects a bad price override (at start or on SIGHUP) says it comes
    from the config file and names the override."""
    monkeypatch.setenv("CCO_MONITOR_HOME", str(tmp_path / "home"))
    config = tmp_path / "monitor.toml"
    config.write_text('[prices."claude-sonnet-4-5"]\ninput = 6.0\noutput = 30.0\nbogus = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": config})
    message = str(caught.value)
    assert "claude-sonnet-4-5" in message
    assert "prices (config file)" in message


def test_reload_rereads_the_config_found_in_the_default_state_dir(tmp_path: Path) -> None:
    """A config found as $CCO_MONITOR_HOME/config.toml that moves state_dir survives SIGHUP."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f"state_dir = '{tmp_path / 'elsewhere'}'\n[budgets]\ndaily_usd = 5\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCO_MONITOR")}
    env["CCO_MONITOR_HOME"] = str(home)
    proc = Proc(
        [
            PYTHON,
            "-m",
            "cco_cost_monitor",
            "start",
            "--foreground",
            "--health-port",
            str(port),
            "--source",
            f"http://127.0.0.1:{free_port()}/api/stream",
        ],
        tmp_path / "daemon.log",
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/livez", timeout=1).status_code == 200)

        def limits() -> list[float]:
            return [b["limit_usd"] for b in httpx.get(f"{url}/api/summary").json()["budgets"]]

        assert limits() == [5]
        proc.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in proc.output())
        assert limits() == [5]
    finally:
        proc.stop()
