"""Issue 18's rough edges, against the real daemon and the real simulator on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from cco_cost_monitor.alerts import AlertDispatcher
from cco_cost_monitor.budgets import Alert, AlertTracker
from cco_cost_monitor.config import AlertSettings, load_settings
from cco_cost_monitor.engine import Engine
from cco_cost_monitor.facts import AccountedEvent
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.projections import HORIZONS
from cco_cost_monitor.reconciler import Accounting
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


# -- one moment per document (bug 3)


def _service(tmp_path: Path, now: datetime, **budgets: float) -> Service:
    flags: dict[str, Any] = {"state_dir": str(tmp_path / "s"), "timezone": "UTC"}
    if budgets:
        flags["budgets"] = budgets
    return Service(load_settings(flags).settings, flags=flags, clock=lambda: now)


def record_one(engine: Engine, event: AccountedEvent, observed_at: datetime) -> None:
    """One accounted event through the engine's one entry point."""
    engine.record(Accounting(event.source, observed_at, (event,)))


def test_summary_figures_come_from_one_moment(tmp_path: Path) -> None:
    """Spend recorded after the last evaluation shows in periods, budgets and projections alike."""
    now = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    service = _service(tmp_path, now, daily_usd=10.0)
    service.engine.record(
        Accounting("default", now, (accounted_event(key="a", occurred_at=now, cost=0.4),))
    )
    service.evaluate_budgets()
    service.engine.record(
        Accounting("default", now, (accounted_event(key="b", occurred_at=now, cost=0.5),))
    )
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
    record_one(service.engine, accounted_event(key="a", occurred_at=now, cost=2.0), now)
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


# -- a broken config.toml (bug 2)


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


# -- output to a pipe (bug 4, status width)


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


# -- the README's alert command (bug 5)

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_command() -> str:
    """The ``command = ...`` line of the README's budgets example, parsed as TOML."""
    line = next(line for line in README.read_text().splitlines() if line.startswith("command = "))
    command: str = tomllib.loads(line)["command"]
    return command


def test_the_readmes_notify_send_command_really_notifies(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """The README's command, run by the daemon, hands notify-send a title and the message."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    received = tmp_path / "notify-send.args"
    fake = bin_dir / "notify-send"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {received}\n")
    fake.chmod(0o755)
    sim = make_simulator("--interval", "0.1", "--rate", "30", "--seed", "23")
    monitor = make_monitor(
        [sim.stream_url],
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        CCO_MONITOR_BUDGETS__DAILY_USD="0.05",
        CCO_MONITOR_ALERTS__COMMAND=_readme_command(),
    )
    args = wait_until(lambda: received.exists() and received.read_text(), timeout=30)
    title, message = args.splitlines()[:2]
    assert title == "cco-monitor"
    assert "daily budget" in message
    # The README's other claim: budget states (and an alert count) are in /metrics.
    text = httpx.get(f"{monitor.url}/metrics", timeout=5).text
    states = _metric_values(text, "cco_budget_state")
    daily = {labels: value for labels, value in states.items() if ("period", "daily") in labels}
    assert daily == {
        (("period", "daily"), ("state", name), ("tier", "all")): float(name == "exceeded")
        for name in ("ok", "warning", "exceeded", "projected_to_exceed")
    }
    assert _metric_values(text, "cco_alerts_total")[(("kind", "threshold"),)] >= 1


async def test_a_failing_alert_command_is_named_in_the_log(tmp_path: Path) -> None:
    """alert_command_failed says which program failed and why, never its arguments."""
    settings = AlertSettings(command="no-such-notifier-18 --token s3cret")
    dispatcher = AlertDispatcher(settings)
    alert = Alert("threshold", "daily", None, 0.5, "half", datetime.now(UTC))
    with capture_logs() as logs:
        async with anyio.create_task_group() as group:
            group.start_soon(dispatcher.run)
            dispatcher.submit(alert)
            with anyio.fail_after(20):
                await dispatcher.drain()
            group.cancel_scope.cancel()
    failed = next(entry for entry in logs if entry["event"] == "alert_command_failed")
    assert failed["command"] == "no-such-notifier-18"
    assert failed["reason"] == "cannot start: No such file or directory"
    assert "s3cret" not in str(logs)


# -- cache savings, last 5 minutes, events per second


def test_cache_savings_price_each_cache_hit_by_its_model_and_tokens() -> None:
    """A cache hit saves what its model and tokens would have cost; other events save nothing."""
    now = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    engine = Engine(zone=UTC)
    engine.prices = PriceTable.default()
    hit = accounted_event(
        key="h",
        occurred_at=now,
        cost=0.0,
        event_type="cache_hit",
        cache_hits=1,
        tokens=30_000,
        model="claude-opus-4-1",
        tier="opus",
    )
    failed_hit = accounted_event(
        key="f", occurred_at=now, cost=0.0, event_type="cache_hit", cache_hits=1, tokens=0
    )
    call = accounted_event(key="c", occurred_at=now, cost=0.25, tokens=30_000)
    for event in (hit, failed_hit, call):
        record_one(engine, event, now)
    expected = PriceTable.default().combined_usd("claude-opus-4-1", 30_000)
    assert expected is not None
    assert expected > 0.5  # opus list prices: well above the 30k-token call's $0.25
    assert engine.cache_savings() == pytest.approx(expected)
    restored = Engine(zone=UTC)
    restored.load_dict(engine.to_dict())
    assert restored.cache_savings() == pytest.approx(expected)


def test_last_5m_and_events_per_second() -> None:
    """Five minutes of spend with the oldest minute pro-rated; events by second of arrival."""
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    engine = Engine(zone=UTC)
    for second in range(0, 600, 2):  # one event every 2 s for 10 minutes
        moment = start + timedelta(seconds=second)
        record_one(engine, accounted_event(key=str(second), occurred_at=moment, cost=0.01), moment)
    now = start + timedelta(seconds=600)
    assert engine.window_cost(now, 300) == pytest.approx(150 * 0.01)
    assert engine.window_requests(now, 300) == 150
    assert engine.events_per_second(now, 60) == pytest.approx(30 / 60)
    assert engine.events_per_second(now, 300) == pytest.approx(150 / 300)
    later = now + timedelta(seconds=30)  # idle for 30 s
    assert engine.events_per_second(later, 60) == pytest.approx(15 / 60)
    # Right after the first event the denominator is half the window, not 1 s.
    fresh = Engine(zone=UTC)
    record_one(fresh, accounted_event(key="x", occurred_at=start, cost=0.01), start)
    assert fresh.events_per_second(start + timedelta(seconds=1), 60) == pytest.approx(1 / 30)


def _metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_new_figures_agree_across_summary_events_and_metrics(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor]
) -> None:
    """cache_savings_usd is the priced cache hits of /api/events; /metrics says the same."""
    sim = make_simulator(
        "--interval", "0.1", "--rate", "30", "--seed", "24", "--cache-hit-rate", "0.3"
    )
    monitor = make_monitor([sim.stream_url])
    wait_until(lambda: monitor.summary()["totals"]["cache_hits"] >= 10, timeout=30)
    sim.traffic(0)

    def settled() -> dict[str, Any] | None:
        before = monitor.summary()
        time.sleep(0.5)
        after = monitor.summary()
        return after if before["totals"] == after["totals"] else None

    summary = wait_until(settled, timeout=20)
    text = httpx.get(f"{monitor.url}/metrics", timeout=5).text
    events = monitor.get("/api/events?limit=1000")["events"]
    assert len(events) == summary["totals"]["events"]  # all of them: none scrolled away
    prices = PriceTable.default()
    expected = sum(
        prices.combined_usd(event["model"], event["tokens"]) or 0.0
        for event in events
        if event["event_type"] == "cache_hit" and event["tokens"]
    )
    assert expected > 0
    assert summary["cache_savings_usd"] == pytest.approx(expected, rel=1e-9)
    cost = summary["totals"]["cost_usd"]
    assert summary["cache_savings_percent"] == pytest.approx(expected / (expected + cost) * 100)
    # The daemon has run for less than 5 minutes: the last 5 minutes hold everything.
    assert summary["periods"]["last_5m"]["cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert summary["periods"]["last_5m"]["requests"] == summary["totals"]["requests"]
    rates = summary["events_per_second"]
    assert set(rates) == {"1m", "5m"}
    assert 0 < rates["5m"] <= summary["totals"]["events"] / 150 + 1e-9
    assert _metric_values(text, "cco_cache_savings_usd_total") == {
        (("source", "default"),): pytest.approx(expected, rel=1e-9)
    }
    assert set(_metric_values(text, "cco_events_per_second")) == {
        (("window", "1m"),),
        (("window", "5m"),),
    }
    last_5m = _metric_values(text, "cco_period_cost_usd")[(("period", "last_5m"),)]
    assert last_5m == pytest.approx(cost, rel=1e-9)
    states = _metric_values(text, "cco_budget_state")
    assert states == {}  # no budget configured
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr


# -- JSON without float noise


def _noisy_floats(value: Any) -> list[float]:
    """Floats with more than 10 decimals anywhere in decoded JSON."""
    if isinstance(value, float):
        exponent = Decimal(repr(value)).as_tuple().exponent
        return [value] if isinstance(exponent, int) and exponent < -10 else []
    if isinstance(value, dict):
        return [noisy for item in value.values() for noisy in _noisy_floats(item)]
    if isinstance(value, list):
        return [noisy for item in value for noisy in _noisy_floats(item)]
    return []


def test_report_export_and_alert_json_round_like_the_api(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """report and db export write money rounded to 10 decimals, as /api/* does."""
    sim = make_simulator("--interval", "0.1", "--rate", "40", "--seed", "25")
    state = tmp_path / "state"
    monitor = make_monitor([sim.stream_url], state_dir=state)
    wait_until(lambda: monitor.summary()["totals"]["requests"] > 150, timeout=30)
    sim.traffic(0)
    wait_until(lambda: monitor.health()["store"]["pending"] == 0)
    where = ("--state-dir", str(state))
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCO_MONITOR")}
    documents: list[Any] = []
    for by in ("day", "hour", "model"):
        report = run_cli("report", "--format", "json", "--by", by, *where, env=env)
        assert report.returncode == 0, report.stderr
        documents.append(json.loads(report.stdout))
    for kind in ("events", "hourly"):
        export = run_cli("db", "export", "--kind", kind, *where, env=env)
        assert export.returncode == 0, export.stderr
        documents += [json.loads(line) for line in export.stdout.splitlines()]
    csv_report = run_cli("report", "--format", "csv", "--by", "hour", *where, env=env)
    assert csv_report.returncode == 0, csv_report.stderr
    documents += [
        [float(cell) for cell in line.split(",")[1:]] for line in csv_report.stdout.splitlines()[1:]
    ]
    assert documents[0]["totals"]["cost_usd"] > 0
    assert [noisy for document in documents for noisy in _noisy_floats(document)] == []


async def test_alert_bodies_carry_no_float_noise(tmp_path: Path) -> None:
    """The webhook body and the command's stdin are the same JSON, rounded like the API."""
    out = tmp_path / "body.json"
    script = tmp_path / "sink.py"
    script.write_text(f"import sys\nopen({str(out)!r}, 'wb').write(sys.stdin.buffer.read())\n")
    dispatcher = AlertDispatcher(AlertSettings(command=f"{sys.executable} {script}"))
    noisy = 0.1 + 0.2  # 0.30000000000000004
    alert = Alert("threshold", "daily", None, 0.5, "half", datetime.now(UTC), {"spent_usd": noisy})
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.submit(alert)
        with anyio.fail_after(20):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    body = json.loads(out.read_bytes())
    assert body["payload"]["spent_usd"] == 0.3


def test_db_prune_says_what_it_did_in_a_sentence(tmp_path: Path) -> None:
    """Not a dataclass repr: how many rows of which kind went, and what the retention keeps."""
    state = tmp_path / "state"
    state.mkdir()
    old = datetime.now(UTC) - timedelta(days=200)
    with Store.open(state / "monitor.db") as store:
        event = accounted_event(key="old", occurred_at=old, cost=0.5)
        store.commit_batch(Batch(results=[Accounting("default", old, (event,))]))
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCO_MONITOR")}
    first = run_cli("db", "prune", "--state-dir", str(state), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Deleted 1 hourly aggregate row older than the retention"), (
        first.stdout
    )
    assert "(kept: events 90 d, hourly aggregates 35 d," in first.stdout
    assert "PruneResult" not in first.stdout
    second = run_cli("db", "prune", "--state-dir", str(state), env=env)
    assert second.stdout.startswith("Nothing was older than the retention"), second.stdout


# -- --help

LOCATION = ["--config", "--state-dir"]
ADDRESS = ["--config", "--health-host", "--health-port", "--health-token", "--state-dir"]
HELP_OPTIONS = {
    ("stop",): [*LOCATION, "--timeout"],
    ("reload",): LOCATION,
    ("status",): [*ADDRESS, "--json", "--timeout"],
    ("watch",): [*ADDRESS, "--interval", "--wait", "--once"],
    ("report",): [*LOCATION, "--since", "--until", "--by", "--format"],
    ("db", "check"): LOCATION,
    ("db", "export"): [*LOCATION, "--kind", "--format", "--since", "--until", "--output"],
    ("db", "prune"): LOCATION,
}


def _help_options(*command: str) -> list[str]:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    return [
        word.rstrip(",")
        for line in result.stdout.splitlines()
        for word in line.split()[:2]
        if word.startswith("--") and word != "--help"
    ]


def test_each_commands_help_lists_only_the_options_it_uses() -> None:
    """stop does not offer --source; the shared flags it ignores are still accepted."""
    for command, expected in HELP_OPTIONS.items():
        assert _help_options(*command) == expected, command
    restart = run_cli("restart", "--help").stdout
    assert "Seconds to wait for the running daemon after SIGTERM before SIGKILL." in " ".join(
        restart.split()
    )


def test_hidden_shared_options_are_still_accepted(tmp_path: Path) -> None:
    """A script passing one set of flags to every command keeps working."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCO_MONITOR")}
    stop = run_cli(
        "stop",
        "--state-dir",
        str(tmp_path / "s"),
        "--health-port",
        "1",
        "--source",
        "http://127.0.0.1:9/api/stream",
        "--log-level",
        "debug",
        env=env,
    )
    assert stop.returncode == 0, stop.stderr
    assert "not running" in stop.stdout


# -- the simulator's fault API


def test_alert_messages_use_the_terminals_money_format() -> None:
    """$2,173.13 in an alert message, as in status and watch (not $2173.13)."""
    tracker = AlertTracker([0.5])
    now = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
    budget = {
        "period": "monthly",
        "tier": None,
        "limit_usd": 4000.0,
        "spent_usd": 2173.1277,
        "used_ratio": 2173.1277 / 4000.0,
        "projected_usd": 3500.0,
        "state": "ok",
        "period_start": "2026-01-01T00:00:00+00:00",
    }
    fired = tracker.update([budget], now)
    assert "$2,173.13 of $4,000.00" in fired[0].message
