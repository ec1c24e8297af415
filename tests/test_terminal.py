"""The terminal commands: status, statusline, watch (also live in tmux) and report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cco_cost_monitor.cli import main
from cco_cost_monitor.client import DaemonClient, Unreachable, resolve_endpoint
from cco_cost_monitor.pidlock import PidLock
from cco_cost_monitor.reconciler import AccountedEvent, Accounting, Unattributed
from cco_cost_monitor.store import Batch, Store
from tests.builders import accounted_event
from tests.conftest import Monitor, Simulator, free_port, wait_until
from tests.test_render import health_doc, summary_doc

CLI = [sys.executable, "-m", "cco_cost_monitor"]


class FakeDaemon:
    """A stdlib HTTP server on 127.0.0.1 that answers like the daemon, with known numbers."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.requests: list[tuple[str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                fake.requests.append((self.path, auth))
                if fake.token and auth != f"Bearer {fake.token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                path = self.path.split("?")[0]
                body: Any = {
                    "/health": health_doc(),
                    "/api/summary": summary_doc(),
                    "/api/events": {"events": [], "limit": 20},
                    "/api/timeseries": {"bucket": "minute", "buckets": []},
                }.get(path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDaemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty state dir, and no CCO_MONITOR_* settings from the outside."""
    for key in list(os.environ):
        if key.startswith("CCO_MONITOR_"):
            monkeypatch.delenv(key)
    state = tmp_path / "home"
    state.mkdir()
    monkeypatch.setenv("CCO_MONITOR_HOME", str(state))
    return state


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- status ------------------------------------------------------------------------------


def test_status_not_running_exits_3(home: Path) -> None:
    """Nobody holds the PID lock: "not running", exit 3; --json says running false."""
    result = invoke("status")
    assert result.exit_code == 3
    assert "not running" in result.output
    result = invoke("status", "--json")
    assert result.exit_code == 3
    document = json.loads(result.output)
    assert document["running"] is False
    assert document["pid"] is None
    assert document["health"] is None
    assert document["summary"] is None


def test_status_running_shows_numbers(home: Path) -> None:
    """With the lock held and the HTTP server answering: pid, spend and tiers, exit 0."""
    with PidLock(home / "daemon.pid"), FakeDaemon() as fake:
        result = invoke("status", "--health-port", str(fake.port))
        assert result.exit_code == 0, result.output
        assert f"running (pid {os.getpid()})" in result.output
        assert "$42.50" in result.output
        assert "opus" in result.output
        result = invoke("status", "--json", "--health-port", str(fake.port))
    assert result.exit_code == 0
    document = json.loads(result.output)
    assert document["running"] is True
    assert document["pid"] == os.getpid()
    assert document["summary"]["periods"]["today"]["cost_usd"] == 42.5
    assert document["health"]["status"] == "pass"


def test_status_running_but_http_silent(home: Path) -> None:
    """Lock held but nothing listening: says so clearly and still exits 0."""
    port = free_port()
    with PidLock(home / "daemon.pid"):
        result = invoke("status", "--health-port", str(port), "--timeout", "0.5")
    assert result.exit_code == 0
    assert "HTTP server not answering" in result.output
    assert "does not answer" in result.output


def test_status_sends_the_bearer_token(home: Path) -> None:
    """--health-token reaches the daemon as a bearer token."""
    with PidLock(home / "daemon.pid"), FakeDaemon(token="s3cret-s3cret-s3cret") as fake:
        result = invoke(
            "status",
            "--json",
            "--health-port",
            str(fake.port),
            "--health-token",
            "s3cret-s3cret-s3cret",
        )
    assert result.exit_code == 0
    assert json.loads(result.output)["summary"] is not None
    assert ("/health", "Bearer s3cret-s3cret-s3cret") in fake.requests


# -- client and statusline ---------------------------------------------------------------


def test_client_unreachable_and_bad_token() -> None:
    """Refused connections and 401s raise Unreachable with a readable reason."""
    with pytest.raises(Unreachable):
        DaemonClient(f"http://127.0.0.1:{free_port()}", timeout=0.5).summary()
    with FakeDaemon(token="right") as fake:
        client = DaemonClient(f"http://127.0.0.1:{fake.port}", token="wrong", timeout=2)
        with pytest.raises(Unreachable, match="401"):
            client.summary()


def test_resolve_endpoint_precedence(tmp_path: Path) -> None:
    """flag > env > config file > default for host, port and token."""
    state = tmp_path / "s"
    state.mkdir()
    (state / "config.toml").write_text('health_port = 9100\nhealth_token = "filetoken"\n')
    env = {"CCO_MONITOR_HOME": str(state)}
    assert resolve_endpoint(environ=env).base_url == "http://127.0.0.1:9100"
    assert resolve_endpoint(environ=env).token == "filetoken"
    env["CCO_MONITOR_HEALTH_PORT"] = "9200"
    assert resolve_endpoint(environ=env).base_url == "http://127.0.0.1:9200"
    assert resolve_endpoint(port=9300, environ=env).base_url == "http://127.0.0.1:9300"
    assert resolve_endpoint(environ={"CCO_MONITOR_HOME": str(tmp_path / "none")}) == (
        resolve_endpoint(host="127.0.0.1", port=8081, environ={})
    )
    assert resolve_endpoint(host="::1", port=1, environ={}).base_url == "http://[::1]:1"


def test_statusline_offline_exit_1(home: Path) -> None:
    """No daemon: the real command prints "cco: offline" and exits 1."""
    result = subprocess.run(
        [*CLI, "statusline", "--health-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == "cco: offline\n"


def test_statusline_line_from_env_port(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CCO_MONITOR_HEALTH_PORT is honoured; the line has spend, burn rate and budget."""
    with FakeDaemon() as fake:
        monkeypatch.setenv("CCO_MONITOR_HEALTH_PORT", str(fake.port))
        result = invoke("statusline")
    assert result.exit_code == 0
    assert result.output == "cco $42.50 today · $5.25/h · daily 85% ⚠\n"


def test_statusline_module_fast_path(home: Path) -> None:
    """``python -m cco_cost_monitor.client`` is the same command without click."""
    with FakeDaemon() as fake:
        result = subprocess.run(
            [sys.executable, "-m", "cco_cost_monitor.client", "--health-port", str(fake.port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 0
    assert result.stdout.startswith("cco $42.50 today")


# -- watch -------------------------------------------------------------------------------


def test_watch_unreachable_exits_1(home: Path) -> None:
    """watch without a daemon explains itself and exits 1 (unless --wait)."""
    result = CliRunner().invoke(main, ["watch", "--health-port", str(free_port())])
    assert result.exit_code == 1
    assert "does not answer" in result.output


def test_watch_once_prints_a_frame(home: Path) -> None:
    """--once prints one frame with the daemon's numbers."""
    with FakeDaemon() as fake:
        result = invoke("watch", "--once", "--health-port", str(fake.port))
    assert result.exit_code == 0
    assert "cco-monitor watch" in result.output
    assert "$42.50" in result.output
    paths = [path.split("?")[0] for path, _ in fake.requests]
    assert paths == ["/health", "/api/summary", "/api/timeseries", "/api/events"]


def _tmux(*args: str) -> str:
    result = subprocess.run(
        ["tmux", *args], capture_output=True, text=True, timeout=10, check=False
    )
    return result.stdout


@pytest.fixture
def tmux_session(tmp_path: Path) -> Iterator[str]:
    """A detached 120x40 tmux session on a private socket, killed afterwards."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("tmux is required on CI (apt-get install -y tmux)")
        pytest.skip("tmux not installed (apt-get install -y tmux)")
    socket = str(tmp_path / "tmux.sock")
    name = "watch"
    subprocess.run(
        ["tmux", "-S", socket, "new-session", "-d", "-s", name, "-x", "120", "-y", "40"],
        check=True,
        timeout=10,
    )
    try:
        yield socket
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], check=False, timeout=10)


@pytest.mark.slow
def test_watch_live_in_tmux(
    tmp_path: Path,
    tmux_session: str,
    make_simulator: Callable[..., Simulator],
    make_monitor: Callable[..., Monitor],
) -> None:
    """In a real terminal: numbers appear, an outage is announced and survived, q quits 0."""
    sim = make_simulator("--interval", "0.2", "--rate", "20", "--seed", "7")
    monitor = make_monitor([sim.stream_url])
    wait_until(lambda: monitor.summary()["periods"]["today"]["requests"] > 0)
    done = tmp_path / "watch.rc"
    command = (
        f"{sys.executable} -m cco_cost_monitor watch --health-port {monitor.port} "
        f"--state-dir {monitor.state_dir}; echo $? > {done}"
    )
    socket = tmux_session
    _tmux("-S", socket, "send-keys", "-t", "watch", command, "Enter")

    def screen() -> str:
        return _tmux("-S", socket, "capture-pane", "-p", "-t", "watch")

    def shows_today() -> str | None:
        text = screen()
        return text if "cco-monitor watch" in text and "today" in text else None

    text = wait_until(shows_today, timeout=20)
    assert "default connected" in text
    assert "Spend" in text
    assert "By tier" in text
    assert "Recent events" in text
    today = next(line for line in text.splitlines() if line.lstrip().startswith("today"))
    assert "$" in today
    # the screen keeps up with the daemon: the request count on screen grows
    first = today.split()[2]
    wait_until(
        lambda: (
            next(
                line for line in screen().splitlines() if line.lstrip().startswith("today")
            ).split()[2]
            != first
        ),
        timeout=15,
    )

    monitor.stop()
    wait_until(lambda: "daemon unreachable — retrying" in screen(), timeout=10)
    assert "$" in screen()  # the last numbers stay on screen
    monitor.start()
    wait_until(lambda: "daemon unreachable" not in screen() and "connected" in screen(), timeout=20)

    _tmux("-S", socket, "send-keys", "-t", "watch", "q")
    wait_until(done.exists, timeout=10)
    assert done.read_text().strip() == "0"


# -- report ------------------------------------------------------------------------------


def _event(index: int, at: datetime, tier: str, model: str, cost: float) -> AccountedEvent:
    return accounted_event(
        key=f"k{index}",
        occurred_at=at,
        cost=cost,
        tier=tier,
        model=model,
        tokens=1000,
        calculated_cost_usd=cost,
    )


@pytest.fixture
def history(home: Path) -> datetime:
    """A database with 3 days of known spend (UTC); returns 'now' of the last event."""
    (home / "config.toml").write_text('timezone = "UTC"\n')
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    events = [
        _event(1, now - timedelta(days=2), "opus", "claude-opus-4-1", 1.5),
        _event(2, now - timedelta(days=1), "sonnet", "claude-sonnet-4-5", 0.25),
        _event(3, now - timedelta(minutes=5), "opus", "claude-opus-4-1", 2.0),
        _event(4, now - timedelta(days=30), "haiku", "claude-haiku-4-5", 9.0),
    ]
    remainder = Unattributed(
        source="default",
        occurred_at=now - timedelta(minutes=1),
        requests=2,
        cost_usd=0.5,
        lost_events=2,
        reason="gap",
    )
    with Store.open(home / "monitor.db") as store:
        store.commit_batch(
            Batch(
                [
                    Accounting("default", now, tuple(events)),
                    Accounting("default", now, (), remainder),
                ]
            )
        )
    return now


def test_report_by_tier_json(history: datetime) -> None:
    """--by tier --format json sums the last 7 days per tier, with totals."""
    result = invoke("report", "--by", "tier", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    rows = {row["tier"]: row for row in document["rows"]}
    assert rows["opus"]["cost_usd"] == pytest.approx(3.5)
    assert rows["opus"]["requests"] == 2
    assert rows["sonnet"]["cost_usd"] == pytest.approx(0.25)
    assert rows["unattributed"]["cost_usd"] == pytest.approx(0.5)
    assert "haiku" not in rows  # 30 days old
    assert document["totals"]["cost_usd"] == pytest.approx(4.25)
    assert next(row["tier"] for row in document["rows"]) == "opus"


def test_report_by_day_csv_and_range(history: datetime) -> None:
    """--by day --format csv has one line per day; --since/--until narrow it."""
    result = invoke("report", "--by", "day", "--format", "csv", "--since", "40d")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert lines[0] == "day,cost_usd,requests,tokens,cache_hits,events"
    assert len(lines) == 1 + 4
    day = (history - timedelta(days=30)).date().isoformat()
    assert lines[1].startswith(f"{day},9.0,1,1000,0,1")
    yesterday = (history - timedelta(days=1)).date().isoformat()
    result = invoke(
        "report", "--by", "day", "--format", "csv", "--since", yesterday, "--until", "today"
    )
    assert result.output.strip().splitlines()[1:] == [f"{yesterday},0.25,1,1000,0,1"]


def test_report_table_by_model(history: datetime) -> None:
    """The table has a row per model and a total footer."""
    result = invoke("report", "--by", "model")
    assert result.exit_code == 0
    assert "claude-opus-4-1" in result.output
    assert "$3.50" in result.output
    assert "total" in result.output
    assert "$4.25" in result.output


def test_report_works_while_the_daemon_writes(history: datetime, home: Path) -> None:
    """A read-only report does not block, and is not blocked by, an open writer."""
    with Store.open(home / "monitor.db") as writer:
        writer.commit_batch(
            Batch(
                [
                    Accounting(
                        "default",
                        history,
                        (_event(9, history, "haiku", "claude-haiku-4-5", 0.125),),
                    )
                ]
            )
        )
        result = invoke("report", "--by", "tier", "--format", "json", "--since", "1h")
    assert result.exit_code == 0
    rows = {row["tier"]: row for row in json.loads(result.output)["rows"]}
    assert rows["haiku"]["cost_usd"] == pytest.approx(0.125)


def test_report_without_database_exits_1(home: Path) -> None:
    """No database yet: a clear message and exit 1."""
    result = CliRunner().invoke(main, ["report"])
    assert result.exit_code == 1
    assert "no database" in result.output


def test_report_rejects_bad_times(history: datetime) -> None:
    """A malformed --since is a usage error naming the accepted forms."""
    result = CliRunner().invoke(main, ["report", "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "7d" in result.output


def test_watch_ctrl_c_quits_cleanly_in_tmux(tmp_path: Path, tmux_session: str, home: Path) -> None:
    """Ctrl+C in a real terminal leaves the full screen and exits 0."""
    done = tmp_path / "watch.rc"
    with FakeDaemon() as fake:
        command = (
            f"{sys.executable} -m cco_cost_monitor watch --health-port {fake.port}; "
            f"echo $? > {done}"
        )
        _tmux("-S", tmux_session, "send-keys", "-t", "watch", command, "Enter")
        wait_until(
            lambda: "$42.50" in _tmux("-S", tmux_session, "capture-pane", "-p", "-t", "watch"),
            timeout=20,
        )
        _tmux("-S", tmux_session, "send-keys", "-t", "watch", "C-c")
        wait_until(done.exists, timeout=10)
    assert done.read_text().strip() == "0"
    assert "cco-monitor watch" not in _tmux("-S", tmux_session, "capture-pane", "-p", "-t", "watch")
