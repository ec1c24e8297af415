"""Tests for the flock-based PID lock (``cco_cost_monitor.pidlock``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cco_cost_monitor.errors import AlreadyRunning
from cco_cost_monitor.pidlock import PidLock, lock_held, running_pid

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        **kwargs,
    )


HOLDER = """
    import sys, time
    from pathlib import Path
    from cco_cost_monitor.pidlock import PidLock
    lock = PidLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
"""


def _start_holder(path: Path) -> subprocess.Popen[str]:
    proc = _python(HOLDER, str(path), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_acquire_writes_pid_and_keeps_file_after_release(tmp_path: Path) -> None:
    """Acquiring writes our pid; releasing frees the lock but leaves the file in place."""
    path = tmp_path / "daemon.pid"
    lock = PidLock(path)
    lock.acquire()
    try:
        assert lock.held
        assert path.read_text() == f"{os.getpid()}\n"
        assert lock_held(path)
    finally:
        lock.release()
    assert not lock.held
    assert path.exists()
    assert not lock_held(path)
    assert running_pid(path) is None


def test_second_acquire_raises_with_holder_pid(tmp_path: Path) -> None:
    """A second lock on the same file fails with AlreadyRunning naming the holder's pid."""
    path = tmp_path / "daemon.pid"
    with PidLock(path):
        with pytest.raises(AlreadyRunning) as excinfo:
            PidLock(path).acquire()
        assert excinfo.value.pid == os.getpid()
        assert running_pid(path) == os.getpid()


def test_acquire_replaces_longer_stale_text(tmp_path: Path) -> None:
    """A stale file with longer text is truncated, so the new pid is not mixed with the old."""
    path = tmp_path / "daemon.pid"
    path.write_text("99999999999\n")
    with PidLock(path):
        assert path.read_text() == f"{os.getpid()}\n"


def test_lock_fd_is_not_inheritable(tmp_path: Path) -> None:
    """The lock descriptor is close-on-exec, and fileno() exposes it for files_preserve."""
    lock = PidLock(tmp_path / "daemon.pid")
    with pytest.raises(ValueError, match="not held"):
        lock.fileno()
    with lock:
        assert not os.get_inheritable(lock.fileno())


def test_running_pid_none_for_missing_or_stale_file(tmp_path: Path) -> None:
    """A missing file and a file whose writer is gone both read as not running."""
    path = tmp_path / "daemon.pid"
    assert running_pid(path) is None
    assert not path.exists()
    path.write_text("12345\n")
    assert running_pid(path) is None
    assert not lock_held(path)


def test_kill_9_leaves_a_harmless_stale_file(tmp_path: Path) -> None:
    """After kill -9 of the holder the file remains, reads as not running, and can be re-locked."""
    path = tmp_path / "daemon.pid"
    proc = _start_holder(path)
    try:
        assert running_pid(path) == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert path.read_text().strip() == str(proc.pid)
    assert running_pid(path) is None
    with PidLock(path):
        assert running_pid(path) == os.getpid()


RACER = """
    import os, sys, time
    from pathlib import Path
    from cco_cost_monitor.errors import AlreadyRunning
    from cco_cost_monitor.pidlock import PidLock
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    try:
        PidLock(Path(sys.argv[1])).acquire()
    except AlreadyRunning as exc:
        print(f"lost {exc.pid}", flush=True)
        sys.exit(0)
    print(f"won {os.getpid()}", flush=True)
    sys.stdin.read()
"""


def test_concurrent_starters_exactly_one_wins(tmp_path: Path) -> None:
    """Eight processes racing for the lock: exactly one wins, the others name the winner."""
    path = tmp_path / "daemon.pid"
    go = tmp_path / "go"
    procs = [
        _python(RACER, str(path), str(go), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(8)
    ]
    try:
        time.sleep(0.2)
        go.touch()
        lines = []
        for proc in procs:
            assert proc.stdout is not None
            lines.append(proc.stdout.readline().split())
        winners = [int(pid) for verb, pid in lines if verb == "won"]
        losers = [pid for verb, pid in lines if verb == "lost"]
        assert len(winners) == 1
        assert len(losers) == 7
        assert set(losers) == {str(winners[0])}
        assert running_pid(path) == winners[0]
    finally:
        for proc in procs:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=10)
            proc.stdout.close()
    assert running_pid(path) is None
