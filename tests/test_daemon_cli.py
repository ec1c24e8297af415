"""The background daemon through its command line: real ``cco-monitor`` processes on loopback.

Every test runs ``python -m cco_cost_monitor ...`` as a subprocess with its own state dir
(``--state-dir`` and ``CCO_MONITOR_HOME``), against one real simulator shared by the module,
and stops whatever it started. "Running" is judged by the PID lock (``status``), never by
whether a pid exists: pid 1 in some sandboxes does not reap orphans, so a stopped daemon can
linger as a zombie.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cco_cost_monitor import daemon
from cco_cost_monitor.pidlock import lock_held, running_pid
from tests.conftest import Simulator, free_port, wait_until

pytestmark = pytest.mark.slow

PYTHON = sys.executable
#: Variables that would make the CLI believe a service manager runs it.
SERVICE_MANAGER_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID")
STARTED = re.compile(r"cco-monitor started \(pid (\d+)\)")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment: no service manager, fast reconnects, this test's home."""
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_MANAGER_VARS}
    env.update(
        {
            "CCO_MONITOR_HOME": str(home),
            "CCO_MONITOR_BACKOFF_INITIAL_SECONDS": "0.05",
            "CCO_MONITOR_BACKOFF_MAX_SECONDS": "0.5",
            "CCO_MONITOR_SNAPSHOT_INTERVAL_SECONDS": "0.2",
            "CCO_MONITOR_LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


class Cli:
    """``cco-monitor <command> --state-dir DIR --health-port PORT`` for one test's state dir."""

    def __init__(self, state_dir: Path, source: str, port: int | None = None) -> None:
        self.state_dir = state_dir
        self.source = source
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = clean_env(state_dir)

    def argv(self, command: str, *extra: str) -> list[str]:
        args = [PYTHON, "-m", "cco_cost_monitor", command, *extra]
        args += ["--state-dir", str(self.state_dir), "--health-port", str(self.port)]
        if command == "start":
            args += ["--source", self.source]
        return args

    def run(
        self, command: str, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, *extra),
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def health_status(self) -> int:
        return httpx.get(f"{self.url}/health", timeout=2).status_code

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "daemon.pid"

    def cleanup(self) -> None:
        """Stop whatever may still run on this state dir (idempotent; same code as ``stop``)."""
        if lock_held(self.pid_path):
            daemon.stop(self.pid_path, timeout=5)


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    sim = Simulator(tmp_path_factory.mktemp("sim"), "--interval", "0.2", "--rate", "5").start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def cli(tmp_path: Path, simulator: Simulator) -> Iterator[Cli]:
    handle = Cli(tmp_path / "state", simulator.stream_url)
    try:
        yield handle
    finally:
        handle.cleanup()


def pid_in(stdout: str) -> int:
    """The pid in ``start``'s "cco-monitor started (pid N)" line."""
    match = STARTED.search(stdout)
    assert match, f"no pid in start's output: {stdout!r}"
    return int(match.group(1))


def started_pid(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    return pid_in(result.stdout)


def live_processes_using(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def test_start_status_second_start_stop_status(cli: Cli) -> None:
    """start prints pid/health/log and exits 0; status 0; a second start exits 3 naming the pid;
    stop exits 0; status then exits 3."""
    started = cli.run("start")
    assert started.returncode == 0, started.stderr
    pid = started_pid(started)
    assert f"health: {cli.url}/health" in started.stdout
    assert f"log: {cli.state_dir / 'monitor.log'}" in started.stdout
    # start returns only once the health server listens: no polling needed.
    assert cli.health_status() == 200

    status = cli.run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert f'"pid": {pid}' in status.stdout

    again = cli.run("start")
    assert again.returncode == 3
    assert f"already running (pid {pid})" in again.stderr

    stopped = cli.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not lock_held(cli.pid_path)

    after = cli.run("status")
    assert after.returncode == 3
    assert "not running" in after.stdout


def test_eight_concurrent_starts_make_exactly_one_daemon(cli: Cli) -> None:
    """Eight simultaneous starts on one state dir: one exits 0, seven exit 3, one daemon lives."""
    procs = [
        subprocess.Popen(
            cli.argv("start"),
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((proc.returncode, out, err))
    codes = sorted(code for code, _, _ in results)
    assert codes == [0] + [3] * 7, results
    (winner_out,) = [out for code, out, _ in results if code == 0]
    pid = pid_in(winner_out)
    for code, _, err in results:
        if code == 3:
            assert f"already running (pid {pid})" in err
    # The losers' daemons exit right after their handshake; only the winner remains.
    wait_until(lambda: live_processes_using(str(cli.state_dir)) == [pid], timeout=10)
    assert cli.health_status() == 200
    assert running_pid(cli.pid_path) == pid
    stopped = cli.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not lock_held(cli.pid_path)


def test_kill_9_leaves_a_stale_pid_file_that_does_not_block_start(cli: Cli) -> None:
    """After kill -9 the pid file stays but status says not running, and start works again."""
    first = cli.run("start")
    assert first.returncode == 0, first.stderr
    pid = started_pid(first)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not lock_held(cli.pid_path), timeout=10)
    assert cli.pid_path.read_text().strip() == str(pid)  # stale text left behind

    status = cli.run("status")
    assert status.returncode == 3
    assert "not running" in status.stdout

    second = cli.run("start")
    assert second.returncode == 0, second.stderr
    new_pid = started_pid(second)
    assert new_pid != pid
    assert cli.health_status() == 200
    assert running_pid(cli.pid_path) == new_pid
    assert cli.run("stop").returncode == 0
    assert not lock_held(cli.pid_path)


IGNORES_SIGTERM = """
import signal, sys, time
from pathlib import Path
from cco_cost_monitor.pidlock import PidLock
signal.signal(signal.SIGTERM, signal.SIG_IGN)
lock = PidLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(cli: Cli) -> None:
    """A lock holder that ignores SIGTERM is killed after --timeout; stop says so and exits 0."""
    cli.state_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [PYTHON, "-c", IGNORES_SIGTERM, str(cli.pid_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert running_pid(cli.pid_path) == holder.pid

        started = time.monotonic()
        stopped = cli.run("stop", "--timeout", "1")
        elapsed = time.monotonic() - started
        assert stopped.returncode == 0, stopped.stderr
        assert f"killed (pid {holder.pid})" in stopped.stdout
        assert elapsed >= 1.0
        assert holder.wait(5) == -signal.SIGKILL
        assert not lock_held(cli.pid_path)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
        if holder.stdout is not None:
            holder.stdout.close()


def test_start_with_a_taken_health_port_exits_1_with_the_reason(cli: Cli) -> None:
    """When the health port is taken, start exits 1, says the port is in use, leaves no daemon."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cli.port))
        squatter.listen()
        result = cli.run("start")
    assert result.returncode == 1
    assert f"port {cli.port} on 127.0.0.1 is already in use" in result.stderr
    assert not lock_held(cli.pid_path)


def test_start_under_a_service_manager_refuses_to_fork(cli: Cli, tmp_path: Path) -> None:
    """With NOTIFY_SOCKET set, start without --foreground refuses with a hint and exits 1."""
    env = {**cli.env, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    result = cli.run("start", env=env)
    assert result.returncode == 1
    assert "refusing to daemonize under a service manager" in result.stderr
    assert "start --foreground" in result.stderr
    assert not lock_held(cli.pid_path)
