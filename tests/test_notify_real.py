"""sd_notify end to end: a real ``start --foreground`` process talking to a real notify socket.

The test plays systemd: it binds an ``AF_UNIX``/``SOCK_DGRAM`` socket in a temp dir, passes
its path in ``NOTIFY_SOCKET`` with ``WATCHDOG_USEC`` (and no ``WATCHDOG_PID``, which systemd
may leave unset), and reads what the daemon sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.builders import accounted_event, schema_2_database
from tests.conftest import PYTHON, Proc, free_port

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 400_000


class NotifySocket:
    """The service manager's end: a datagram socket that collects ``KEY=VALUE`` messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next message as a dict, or ``None`` after ``timeout`` seconds of silence."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = (line.partition("=") for line in data.decode().splitlines() if line)
        return {key: value for key, _, value in fields}

    def wait_for(self, key: str, value: str, timeout: float) -> list[dict[str, str]]:
        """Messages received up to and including the first with ``key=value``."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, str]] = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is None:
                break
            seen.append(message)
            if message.get(key) == value:
                return seen
        raise AssertionError(f"no {key}={value} within {timeout} s; got {seen}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short directory of its own: socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ccon-") as directory:
        sock = NotifySocket(Path(directory) / "notify")
        try:
            yield sock
        finally:
            sock.close()


def test_ready_after_livez_then_watchdog_then_stopping(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """READY=1 arrives once /livez answers (proxy down), WATCHDOG=1 repeats, SIGTERM sends
    STOPPING=1 and exits 0; SIGHUP is bracketed by RELOADING=1 and READY=1."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "WATCHDOG_PID"}
    env.update(
        {
            "NOTIFY_SOCKET": str(notify_socket.path),
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "CCO_MONITOR_HOME": str(tmp_path / "home"),
            "CCO_MONITOR_LOG_FORMAT": "json",
        }
    )
    # The proxy is down on purpose: readiness must not wait for it.
    dead_source = f"http://127.0.0.1:{free_port()}/api/stream"
    args = [PYTHON, "-m", "cco_cost_monitor", "start", "--foreground"]
    args += ["--state-dir", str(tmp_path / "state"), "--health-port", str(port)]
    args += ["--source", dead_source]
    proc = Proc(args, tmp_path / "monitor.log", env=env)
    try:
        before = notify_socket.wait_for("READY", "1", timeout=30)
        # READY must mean "serving": /livez answers the moment it arrives.
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200
        ready = before[-1]
        assert ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == f"serving on port {port}"

        pings = 0
        deadline = time.monotonic() + 5
        while pings < 2 and time.monotonic() < deadline:
            message = notify_socket.receive(1.0)
            if message is not None and message.get("WATCHDOG") == "1":
                pings += 1
        assert pings >= 2, "fewer than two WATCHDOG=1 within 5 s (period should be 0.2 s)"

        proc.signal(signal.SIGHUP)
        reload_messages = notify_socket.wait_for("READY", "1", timeout=10)
        assert any(m.get("RELOADING") == "1" for m in reload_messages)

        proc.signal(signal.SIGTERM)
        notify_socket.wait_for("STOPPING", "1", timeout=10)
        assert proc.wait(15) == 0
    except (AssertionError, subprocess.TimeoutExpired):
        print(proc.output())
        raise
    finally:
        proc.stop()


def test_a_migration_asks_the_service_manager_for_time_before_ready(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    """Opening a schema-2 database sends EXTEND_TIMEOUT_USEC (then READY=1) and says so."""
    state = tmp_path / "state"
    state.mkdir()
    at = datetime(2025, 11, 17, 12, 0, tzinfo=UTC)
    events = [accounted_event(key=f"k{n}", occurred_at=at, cost=0.01) for n in range(3)]
    schema_2_database(state / "monitor.db", events, at)
    env = {key: value for key, value in os.environ.items() if key != "WATCHDOG_PID"}
    env.update({"NOTIFY_SOCKET": str(notify_socket.path), "CCO_MONITOR_LOG_FORMAT": "json"})
    args = [PYTHON, "-m", "cco_cost_monitor", "start", "--foreground"]
    args += ["--state-dir", str(state), "--health-port", str(free_port())]
    args += ["--source", f"http://127.0.0.1:{free_port()}/api/stream"]
    proc = Proc(args, tmp_path / "monitor.log", env=env)
    try:
        messages = notify_socket.wait_for("READY", "1", timeout=30)
        extend = [m for m in messages if "EXTEND_TIMEOUT_USEC" in m]
        assert extend, messages
        assert int(extend[0]["EXTEND_TIMEOUT_USEC"]) >= 30_000_000
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert '"migrating the database before serving"' in proc.output()
        assert '"events": 3' in proc.output()
    except (AssertionError, subprocess.TimeoutExpired):
        print(proc.output())
        raise
    finally:
        proc.stop()
