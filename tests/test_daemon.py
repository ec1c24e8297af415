"""Tests for background mode and process control (``cco_cost_monitor.daemon``).

``start_background`` forks and daemonizes, so it always runs in a throw-away ``python -c``
launcher; the daemon it leaves behind is stopped through the PID lock.
"""

from __future__ import annotations

import ast
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cco_cost_monitor import sdnotify
from cco_cost_monitor.daemon import (
    StopOutcome,
    StopStatus,
    signal_pid,
    start_background,
    stop,
    under_service_manager,
)
from cco_cost_monitor.pidlock import PidLock, lock_held, running_pid

REPO = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

LAUNCHER = """
    import os, signal, sys, threading, time
    from pathlib import Path
    from cco_cost_monitor.daemon import start_background
    from cco_cost_monitor.errors import AlreadyRunning, StartupError
    from cco_cost_monitor.pidlock import PidLock

    mode, pid_rel, log_rel, timeout = sys.argv[1:5]
    state = Path(pid_rel).resolve().parent

    def service(on_ready):
        (state / "called").write_text(mode)
        if mode == "startup-error":
            raise StartupError("port in use")
        if mode == "already-running":
            raise AlreadyRunning(4242)
        if mode == "exit-early":
            return 2
        if mode == "crash":
            os._exit(7)
        default_term = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ignored = [
            signal.getsignal(sig) == signal.SIG_IGN for sig in (signal.SIGHUP, signal.SIGUSR1)
        ]
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: (state / "hup").write_text("1"))
        lock = PidLock(state / "daemon.pid")
        lock.acquire()
        proc = Path("/proc/self")
        fds = {fd: os.readlink(proc / "fd" / str(fd)) for fd in (0, 1, 2)} if proc.exists() else {}
        stat = (proc / "stat").read_text() if proc.exists() else ") x 0 0 0 0"
        old = os.umask(0o022)
        info = {
            "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0),
            "cwd": os.getcwd(), "umask": old, "default_term": default_term, "ignored": ignored,
            "stdio": fds, "tty": stat.rsplit(")", 1)[1].split()[4],
        }
        (state / "info").write_text(repr(info))
        if mode == "ok":
            on_ready()
        while not stopping.wait(0.05):
            pass
        lock.release()
        return 0

    code = start_background(
        pid_path=Path(pid_rel), log_path=Path(log_rel),
        health_url="http://127.0.0.1:8081/health", service=service,
        ready_timeout=float(timeout),
    )
    sys.exit(code)
"""


def _launch(state: Path, mode: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(LAUNCHER),
            mode,
            "daemon.pid",
            "monitor.log",
            str(timeout),
        ],
        cwd=state,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _ancestors(pid: int) -> set[int]:
    found: set[int] = set()
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        found.add(pid)
    return found


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state directory; any daemon still holding its lock afterwards is killed."""
    yield tmp_path
    pid_path = tmp_path / "daemon.pid"
    if lock_held(pid_path):
        stop(pid_path, timeout=2.0)


@linux_only
def test_start_detaches_and_reports_ready(state: Path) -> None:
    """start prints pid, health URL and absolute log path, and the daemon is really detached."""
    result = _launch(state, "ok")
    assert result.returncode == 0, result.stderr
    info = ast.literal_eval((state / "info").read_text())
    assert result.stdout.splitlines() == [
        f"cco-monitor started (pid {info['pid']})",
        "health: http://127.0.0.1:8081/health",
        f"log: {state.resolve() / 'monitor.log'}",
    ]
    assert running_pid(state / "daemon.pid") == info["pid"]
    assert info["ppid"] == 1 or info["ppid"] in _ancestors(os.getpid())
    assert info["sid"] != os.getsid(0)
    assert info["tty"] == "0"
    assert info["cwd"] == "/"
    assert info["umask"] == 0o077  # every file the daemon creates is private
    assert info["default_term"] is True
    assert info["ignored"] == [True, True]
    assert set(info["stdio"].values()) == {os.devnull}

    outcome = stop(state / "daemon.pid")
    assert outcome == StopOutcome(StopStatus.STOPPED, info["pid"])
    assert outcome.exit_code == 0
    assert not lock_held(state / "daemon.pid")


def test_start_refuses_before_forking_when_lock_is_held(state: Path) -> None:
    """With the lock already held, start exits 3 with the holder's pid and runs nothing."""
    with PidLock(state / "daemon.pid"):
        result = _launch(state, "ok")
    assert result.returncode == 3
    assert result.stderr.strip() == f"cco-monitor is already running (pid {os.getpid()})"
    assert not (state / "called").exists()


def test_start_reports_startup_error(state: Path) -> None:
    """A StartupError raised by the service becomes exit 1 with its reason on stderr."""
    result = _launch(state, "startup-error")
    assert result.returncode == 1
    assert result.stderr.strip() == "cco-monitor could not start: port in use"
    assert result.stdout == ""


def test_start_reports_lock_lost_to_a_concurrent_starter(state: Path) -> None:
    """AlreadyRunning raised after the fork (a racing starter) still becomes exit 3."""
    result = _launch(state, "already-running")
    assert result.returncode == 3
    assert result.stderr.strip() == "cco-monitor is already running (pid 4242)"


def test_start_reports_service_returning_before_ready(state: Path) -> None:
    """A service that returns without becoming ready is a failure with its status."""
    result = _launch(state, "exit-early")
    assert result.returncode == 1
    assert "exited with status 2 before it became ready" in result.stderr


def test_start_reports_daemon_death_with_log_path(state: Path) -> None:
    """A daemon that dies silently is reported with a pointer to the log file."""
    result = _launch(state, "crash")
    assert result.returncode == 1
    log = state.resolve() / "monitor.log"
    assert result.stderr.strip() == (
        f"cco-monitor could not start: the daemon exited before it became ready; see {log}"
    )


def test_start_times_out_when_never_ready(state: Path) -> None:
    """A daemon that never becomes ready makes start fail after ready_timeout."""
    started = time.monotonic()
    result = _launch(state, "never-ready", timeout=0.5)
    assert result.returncode == 1
    assert "did not become ready within 0.5 s" in result.stderr
    assert time.monotonic() - started < 10
    outcome = stop(state / "daemon.pid", timeout=5.0)
    assert outcome.status is StopStatus.STOPPED


HOLDER = """
    import signal, sys, time
    from pathlib import Path
    from cco_cost_monitor.pidlock import PidLock
    if sys.argv[2] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    hup = Path(sys.argv[1]).with_name("hup")
    signal.signal(signal.SIGHUP, lambda *_: hup.write_text("1"))
    PidLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    while True:
        time.sleep(0.05)
"""


def _holder(pid_path: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(pid_path), mode],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    proc.stdout.close()
    return proc


def test_stop_not_running(tmp_path: Path) -> None:
    """stop on a missing or stale pid file says not running and exits 0."""
    assert stop(tmp_path / "daemon.pid").status is StopStatus.NOT_RUNNING
    (tmp_path / "daemon.pid").write_text("1\n")
    outcome = stop(tmp_path / "daemon.pid")
    assert outcome == StopOutcome(StopStatus.NOT_RUNNING)
    assert outcome.exit_code == 0
    assert outcome.message == "cco-monitor was not running"


def test_stop_graceful(tmp_path: Path) -> None:
    """A holder that exits on SIGTERM is reported as stopped, and the lock is free."""
    pid_path = tmp_path / "daemon.pid"
    proc = _holder(pid_path, "default")
    outcome = stop(pid_path, timeout=5.0)
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert outcome == StopOutcome(StopStatus.STOPPED, proc.pid)
    assert outcome.message == f"cco-monitor stopped (pid {proc.pid})"
    assert running_pid(pid_path) is None


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    """A holder that ignores SIGTERM is killed after the timeout; the lock is then released."""
    pid_path = tmp_path / "daemon.pid"
    proc = _holder(pid_path, "ignore-term")
    started = time.monotonic()
    outcome = stop(pid_path, timeout=0.3)
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert outcome.status is StopStatus.KILLED
    assert outcome.pid == proc.pid
    assert outcome.exit_code == 0
    assert time.monotonic() - started < 5
    assert not lock_held(pid_path)


def test_signal_pid_sends_to_lock_holder(tmp_path: Path) -> None:
    """signal_pid delivers the signal to the holder and returns its pid; None when not running."""
    pid_path = tmp_path / "daemon.pid"
    assert signal_pid(pid_path, signal.SIGHUP) is None
    proc = _holder(pid_path, "default")
    try:
        assert signal_pid(pid_path, signal.SIGHUP) == proc.pid
        deadline = time.monotonic() + 5
        while not (tmp_path / "hup").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "hup").exists()
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_start_background_in_process_refuses_when_locked(tmp_path: Path) -> None:
    """The already-running check happens in the caller, before any fork, with paths resolved."""
    out, err = io.StringIO(), io.StringIO()
    with PidLock(tmp_path / "daemon.pid"):
        code = start_background(
            pid_path=tmp_path / "daemon.pid",
            log_path=tmp_path / "monitor.log",
            health_url="http://127.0.0.1:8081/health",
            service=lambda on_ready: pytest.fail("service must not run"),
            out=out,
            err=err,
        )
    assert code == 3
    assert out.getvalue() == ""
    assert err.getvalue() == f"cco-monitor is already running (pid {os.getpid()})\n"


def test_under_service_manager_is_reexported() -> None:
    """The CLI gets the service-manager check from the daemon module."""
    assert under_service_manager is sdnotify.under_service_manager
