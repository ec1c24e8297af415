"""Hardening against a hostile proxy and a bad day (issue 14, items 1, 2, 4-8).

Each test is named after what it guards. The monitor is always the real daemon process;
absurd frames come from :mod:`tests.hostile_proxy` (the simulator only sends what the
real proxy sends), everything on 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from aiohttp import web

from cco_cost_monitor.alerts import AlertDispatcher
from cco_cost_monitor.budgets import Alert
from cco_cost_monitor.config import AlertSettings
from cco_cost_monitor.engine import Engine, PruneClock
from cco_cost_monitor.reconciler import Accounting
from cco_cost_monitor.store import Batch, Store
from tests.builders import accounted_event
from tests.conftest import (
    Monitor,
    Proc,
    Simulator,
    free_port,
    run_cli,
    truth_since_first_contact,
    wait_until,
)
from tests.hostile_proxy import activity, hostile_proxy, snapshot

UNREACHABLE = "http://127.0.0.1:9/api/stream"


def _finite_numbers(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite_numbers(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite_numbers(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _absurd_frames_are_refused(
    make_monitor: Callable[..., Monitor], tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    """Shared body: a snapshot carrying ``events`` is refused, counted, and harms nothing."""
    sane = [activity(1)]
    frames = [
        snapshot([]),
        snapshot(sane, cost=0.01, calls=1),
        snapshot(sane + events, cost=0.01, calls=1 + len(events)),
    ]
    with hostile_proxy(frames) as proxy:
        monitor = make_monitor([proxy.stream_url])

        def refused() -> dict[str, Any] | None:
            source = monitor.health()["sources"][0]
            return source if source["bad_frames"].get("invalid_value") else None

        source = wait_until(refused)
        assert source["last_bad_frame"].startswith("invalid_value: activity.1.")
        summary = httpx.get(f"{monitor.url}/api/summary", timeout=5)
        assert summary.status_code == 200
        body = summary.json()
        assert _finite_numbers(body)
        assert body["totals"]["cost_usd"] == 0.01
        assert body["totals"]["requests"] == 1
        metrics = httpx.get(f"{monitor.url}/metrics", timeout=5).text
        assert "Inf" not in metrics
        assert "NaN" not in metrics
        monitor.stop()
        proxy.frames = frames[1:]  # the same proxy, still up: no restart to see
        again = make_monitor([proxy.stream_url], state_dir=monitor.state_dir)
        summary = httpx.get(f"{again.url}/api/summary", timeout=5)
        assert summary.status_code == 200
        assert summary.json()["totals"]["cost_usd"] == 0.01


def test_absurd_costs_are_refused_at_the_edge(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """Two events of cost 1e308 (sum: inf) are refused, never reach the totals or the state."""
    _absurd_frames_are_refused(
        make_monitor, tmp_path, [activity(2, cost=1e308), activity(3, cost=1e308)]
    )


def test_huge_token_counts_are_refused_at_the_edge(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """tokens = 2**63-1 on three events: refused; /api/summary never answers 500."""
    huge = 2**63 - 1
    _absurd_frames_are_refused(
        make_monitor, tmp_path, [activity(i, tokens=huge) for i in range(2, 5)]
    )


def _poison(state_dir: Path) -> None:
    """A state dir as a version without the wire's bounds left it (issue 14 items 1, 2)."""
    state_dir.mkdir(parents=True)
    now = datetime.now(UTC)
    sane = accounted_event(key="sane", occurred_at=now, cost=0.5)
    engine = Engine()
    engine.record(Accounting("default", now, events=(sane,)))
    saved = engine.to_dict()
    saved["sources"]["default"]["cost_usd"] = None  # inf, saved by JSON as null
    for table in saved["buckets"].values():
        for bucket in table:
            bucket[1] = dict.fromkeys(bucket[1])
    source_state = {
        "baseline_set": True,
        "attributed_cost": None,
        "last_cost": None,
        "last_uptime": 2**63 - 1,
    }
    huge = accounted_event(key="huge", occurred_at=now, cost=0.25, tokens=2**63 - 1)
    with Store.open(state_dir / "monitor.db") as store:
        store.commit_batch(
            Batch(
                results=[Accounting("default", now, events=(sane,))],
                engine=saved,
                source_states={"default": source_state},
            )
        )
        # Never folded into the saved engine state (it could not be taken): replayed.
        store.commit_batch(Batch(results=[Accounting("default", now, events=(huge,))]))


def test_a_poisoned_state_dir_still_starts(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """A start never dies on what an earlier run saved: unusable values are left out."""
    state_dir = tmp_path / "poisoned"
    _poison(state_dir)
    monitor = make_monitor([UNREACHABLE], state_dir=state_dir)
    summary = httpx.get(f"{monitor.url}/api/summary", timeout=5)
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert _finite_numbers(body)
    assert body["totals"]["cost_usd"] == 0.0
    assert monitor.health()["total_cost_usd"] == 0.0
    assert monitor.proc is not None
    assert "outside the bounds" in monitor.proc.output()


# -- item 4: malformed URLs ----------------------------------------------------------

MALFORMED = [
    "http://host:8O80/x",
    "http://[::1",
    "http://127.0.0.1:70000/x",
    "http://127.0.0.1:80a/x",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_source_url_stops_the_start(tmp_path: Path, url: str) -> None:
    """``--source`` with a bad port or host: exit 1 naming the key, never a daemon that dies."""
    result = run_cli(
        "start",
        "--foreground",
        "--state-dir",
        str(tmp_path / "state"),
        "--health-port",
        str(free_port()),
        "--source",
        url,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "sources.url" in result.stderr
    assert "not a valid URL" in result.stderr or "http(s) URL" in result.stderr


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_webhook_url_stops_the_start(tmp_path: Path, url: str) -> None:
    """``alerts.webhook_url`` is checked when the file is read, not at the first alert."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.toml").write_text(f'[alerts]\nwebhook_url = "{url}"\n')
    result = run_cli(
        "start", "--foreground", "--state-dir", str(state), "--health-port", str(free_port())
    )
    assert result.returncode == 1, result.stderr
    assert "alerts.webhook_url" in result.stderr


def test_a_reload_with_a_malformed_url_keeps_the_running_config(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """SIGHUP with a broken webhook_url: rejected, the daemon keeps running as it was."""
    state = tmp_path / "state"
    state.mkdir()
    config = state / "config.toml"
    config.write_text('[alerts]\nwebhook_url = "http://127.0.0.1:9/hook"\n')
    monitor = make_monitor([UNREACHABLE], state_dir=state)
    config.write_text('[alerts]\nwebhook_url = "http://127.0.0.1:70000/hook"\n')
    assert monitor.proc is not None
    monitor.proc.signal(signal.SIGHUP)
    proc = monitor.proc
    wait_until(lambda: "reload rejected" in proc.output())
    assert "alerts.webhook_url" in proc.output()
    assert httpx.get(f"{monitor.url}/livez", timeout=5).status_code == 200
    assert proc.popen.poll() is None


async def test_an_alert_delivery_error_of_any_kind_never_stops_delivery() -> None:
    """An InvalidURL (no HTTPError) or any bug in one delivery: counted, the next still goes."""
    received: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    good = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    # As a settings object built without validation (or a future code path) could hold.
    settings = AlertSettings.model_construct(
        webhook_url="http://host:8O80/x", webhook_max_retries=0
    )
    dispatcher = AlertDispatcher(settings, backoff_base_seconds=0.01)
    alert = Alert("threshold", "daily", None, 0.5, "half", datetime.now(UTC), {})
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(dispatcher.run)
            dispatcher.submit(alert)
            with anyio.fail_after(10):
                await dispatcher.drain()
            dispatcher.settings = AlertSettings.model_construct(
                webhook_url="http://[::1", webhook_max_retries=0
            )
            dispatcher.submit(alert)
            with anyio.fail_after(10):
                await dispatcher.drain()
            dispatcher.settings = AlertSettings(webhook_url=good, webhook_max_retries=0)
            dispatcher.submit(alert)
            with anyio.fail_after(10):
                await dispatcher.drain()
            group.cancel_scope.cancel()
    finally:
        await runner.cleanup()
    assert dispatcher.stats()["failed"] == 2
    assert dispatcher.stats()["sent"] == 1
    assert len(received) == 1


# -- item 5: one writer per database --------------------------------------------------


def test_a_second_daemon_cannot_write_the_database_after_daemon_pid_was_deleted(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """With daemon.pid gone, a second start passes the PID lock but not the database's."""
    state = tmp_path / "state"
    first = make_monitor([UNREACHABLE], state_dir=state)
    assert first.proc is not None
    (state / "daemon.pid").unlink()
    result = run_cli(
        "start",
        "--foreground",
        "--state-dir",
        str(state),
        "--health-port",
        str(free_port()),
        "--source",
        UNREACHABLE,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert f"already being written by pid {first.proc.pid}" in result.stderr
    assert first.proc.popen.poll() is None
    assert httpx.get(f"{first.url}/livez", timeout=5).status_code == 200
    first.stop()
    # Once the first has stopped, the database is free again.
    again = make_monitor([UNREACHABLE], state_dir=state)
    assert httpx.get(f"{again.url}/livez", timeout=5).status_code == 200


# -- item 6: monitor.db deleted or replaced under the daemon ------------------------------


def _settle(sim: Simulator, monitor: Monitor) -> dict[str, Any]:
    """Pause traffic, wait for the monitor to see the proxy's final totals; its summary."""
    sim.traffic(0)

    def caught_up() -> dict[str, Any] | None:
        summary = monitor.summary()
        source = summary["sources"][0]
        calls = sim.ledger()["proxy_calls"]
        return summary if source["proxy_reported_calls"] == calls else None

    wait_until(caught_up, timeout=20)
    time.sleep(0.5)
    summary: dict[str, Any] = monitor.summary()
    return summary


def test_a_deleted_database_fails_health_and_a_clean_stop_puts_it_back_exact(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """rm monitor.db under the daemon: /health fails saying so; nothing counted is lost."""
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "5")
    state = tmp_path / "state"
    monitor = make_monitor([sim.stream_url], state_dir=state)
    wait_until(lambda: monitor.health()["events_processed"] > 5)
    (state / "monitor.db").unlink()
    response = wait_until(
        lambda: (r := httpx.get(f"{monitor.url}/health", timeout=5)).status_code == 503 and r
    )
    document = response.json()
    assert document["status"] == "fail"
    assert "monitor.db was deleted" in document["checks"]["store:file"][0]["output"]
    counted = monitor.health()["events_processed"]
    wait_until(lambda: monitor.health()["events_processed"] > counted)  # counting goes on
    before = _settle(sim, monitor)
    monitor.stop()
    assert monitor.proc is not None
    assert "the saved database is back in place" in monitor.proc.output()
    assert (state / "monitor.db").is_file()
    assert not list(state.glob("monitor.db.rescued-*"))
    again = make_monitor([sim.stream_url], state_dir=state)
    after = _settle(sim, again)
    assert after["totals"] == before["totals"]
    assert run_cli("db", "check", "--state-dir", str(state)).returncode == 0
    truth, calls = truth_since_first_contact(sim.ledger())
    assert after["totals"]["requests"] == calls
    assert after["totals"]["cost_usd"] == pytest.approx(truth, abs=1e-9)


def test_a_replaced_database_fails_health_and_the_old_one_is_saved_beside_it(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """A file copied over monitor.db: /health fails; the daemon's own is kept at a stop."""
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "6")
    state = tmp_path / "state"
    monitor = make_monitor([sim.stream_url], state_dir=state)
    wait_until(lambda: monitor.health()["events_processed"] > 5)
    stranger = tmp_path / "other.db"
    stranger.write_bytes(b"")
    stranger.replace(state / "monitor.db")
    document = wait_until(
        lambda: (r := httpx.get(f"{monitor.url}/health", timeout=5)).status_code == 503 and r.json()
    )
    assert "replaced by another file" in document["checks"]["store:file"][0]["output"]
    monitor.stop()
    rescued = list(state.glob("monitor.db.rescued-*"))
    assert len(rescued) == 1
    assert (state / "monitor.db").stat().st_size == 0  # the user's file is left alone


def test_a_start_never_silently_creates_an_empty_database_where_history_was(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """monitor.db gone (or emptied) after a crash: start refuses until the user decides."""
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "8")
    state = tmp_path / "state"
    monitor = make_monitor([sim.stream_url], state_dir=state)
    wait_until(lambda: monitor.health()["events_processed"] > 5)
    monitor.kill9()
    for name in ("monitor.db", "monitor.db-wal", "monitor.db-shm"):
        (state / name).unlink(missing_ok=True)
    start = ("start", "--foreground", "--state-dir", str(state), "--source", sim.stream_url)
    result = run_cli(*start, "--health-port", str(free_port()), timeout=30)
    assert result.returncode == 1, result.stderr
    assert "is missing, but this state dir has held one" in result.stderr
    assert not (state / "monitor.db").exists()
    (state / "monitor.db").write_bytes(b"")  # an empty file is no better
    result = run_cli(*start, "--health-port", str(free_port()), timeout=30)
    assert result.returncode == 1, result.stderr
    assert "is empty, but this state dir has held one" in result.stderr
    # Nor does any other writer make a database of it.
    prune = run_cli("db", "prune", "--state-dir", str(state))
    assert prune.returncode == 1, prune.stderr
    assert "is empty, but this state dir has held one" in prune.stderr
    assert (state / "monitor.db").stat().st_size == 0
    # Starting over is a decision: remove the marker, as the message says.
    (state / "monitor.db.id").unlink()
    sim.traffic(0)  # the first snapshot is a baseline: nothing counted without new traffic
    fresh = make_monitor([sim.stream_url], state_dir=state)
    wait_until(lambda: fresh.health()["snapshots_processed"] > 0)
    assert fresh.health()["events_processed"] == 0
    assert (state / "monitor.db.id").is_file()  # a new database, a new marker


# -- item 7: wall-clock steps ----------------------------------------------------------------

SHIFTED_CLOCK = Path(__file__).with_name("shifted_clock.py")
DAY = 86_400.0


class ShiftedMonitor(Monitor):
    """The real daemon, under a wall clock stepped through ``offset_file``."""

    def __init__(self, state_dir: Path, sources: list[str], offset_file: Path) -> None:
        super().__init__(state_dir, sources)
        self.offset_file = offset_file

    def start(self, *extra: str) -> Monitor:
        args = [sys.executable, str(SHIFTED_CLOCK), str(self.offset_file), "start"]
        args += ["--foreground", "--health-port", str(self.port)]
        args += ["--state-dir", str(self.state_dir)]
        for source in self.sources:
            args += ["--source", source]
        self.proc = Proc([*args, *extra], self.state_dir.parent / "shifted.log", env=self.env)
        wait_until(lambda: httpx.get(f"{self.url}/livez", timeout=1).status_code == 200)
        return self


def _step(offset_file: Path, seconds: float) -> None:
    offset_file.write_text(f"{seconds}\n")


def test_buckets_survive_a_wall_clock_step_ahead_and_back(
    make_simulator: Callable[..., Simulator], tmp_path: Path
) -> None:
    """+15 days for 8 s, then back: this_hour and today keep what they had (not $0)."""
    to_next_hour = 3600 - time.time() % 3600
    if to_next_hour < 40:  # this_hour would start again during the test, legitimately
        time.sleep(to_next_hour + 1)
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "9")
    offset_file = tmp_path / "offset"
    monitor = ShiftedMonitor(tmp_path / "state", [sim.stream_url], offset_file).start()
    try:
        wait_until(lambda: monitor.health()["events_processed"] > 5)
        before = _settle(sim, monitor)["periods"]
        assert before["this_hour"]["cost_usd"] > 0
        _step(offset_file, 15 * DAY)
        time.sleep(8)  # the engine prunes every second or so
        _step(offset_file, 0)
        time.sleep(2)
        after = monitor.summary()["periods"]
        for period in ("this_hour", "today"):
            assert after[period]["cost_usd"] == pytest.approx(before[period]["cost_usd"]), period
            assert after[period]["requests"] == before[period]["requests"], period
    finally:
        monitor.stop()


def test_uptime_never_goes_negative_after_a_step_back(
    make_simulator: Callable[..., Simulator], tmp_path: Path
) -> None:
    """uptime_seconds counts on a monotonic clock: a day's step back changes nothing."""
    sim = make_simulator("--interval", "0.1", "--rate", "5", "--seed", "10")
    offset_file = tmp_path / "offset"
    monitor = ShiftedMonitor(tmp_path / "state", [sim.stream_url], offset_file).start()
    try:
        first = monitor.health()["uptime_seconds"]
        _step(offset_file, -DAY)
        time.sleep(0.5)
        later = monitor.health()["uptime_seconds"]
        assert first <= later < first + 60
    finally:
        monitor.stop()


def test_the_prune_clock_ignores_a_short_step_ahead_and_adopts_one_that_stays() -> None:
    """A step back is followed at once; a step ahead only once it has lasted an hour."""
    wall = [1_000_000.0]
    steady = [50.0]
    clock = PruneClock(wall=lambda: wall[0], monotonic=lambda: steady[0])

    def advance(seconds: float, *, step: float = 0.0) -> float:
        steady[0] += seconds
        wall[0] += seconds + step
        return clock.now().timestamp()

    assert advance(10) == wall[0]
    assert advance(1, step=15 * DAY) == wall[0] - 15 * DAY  # ahead: not trusted yet
    assert advance(8, step=-15 * DAY) == wall[0]  # back again: followed
    assert advance(1, step=-DAY) == wall[0]  # a step back is followed at once
    assert advance(1, step=3 * DAY) == wall[0] - 3 * DAY
    assert advance(PruneClock.ADOPT_AFTER_SECONDS) == wall[0]  # it stayed: adopted
    assert advance(5) == wall[0]


# -- item 8: monitor.db-shm truncated under the daemon -----------------------------------


def test_a_truncated_shm_file_is_logged_as_the_cause_and_the_restart_is_exact(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """SIGBUS cannot be survived; the log must say so, and the next start count exactly."""
    sim = make_simulator("--interval", "0.1", "--rate", "20", "--seed", "13")
    state = tmp_path / "state"
    monitor = make_monitor([sim.stream_url], state_dir=state)
    assert monitor.proc is not None
    # Counted and committed: with nothing committed yet (a slow machine), the next start is
    # a first contact and rightly counts from there, not from this monitor's first contact.
    wait_until(lambda: (monitor.health()["store"] or {}).get("events_written", 0) > 5)
    os.truncate(state / "monitor.db-shm", 0)
    code = monitor.proc.wait(20)  # the next commit touches the index
    assert code == -signal.SIGBUS
    output = monitor.proc.output()
    assert "Fatal Python error: Bus error" in output
    assert "most recent call first" in output  # the stacks, to see where
    again = make_monitor([sim.stream_url], state_dir=state)
    after = _settle(sim, again)
    truth, calls = truth_since_first_contact(sim.ledger())
    assert after["totals"]["requests"] == calls
    assert after["totals"]["cost_usd"] == pytest.approx(truth, abs=1e-9)
    assert run_cli("db", "check", "--state-dir", str(state)).returncode == 0
