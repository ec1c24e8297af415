"""Shared fixtures: real simulator and monitor processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

PYTHON = sys.executable
#: Variables of the developer's own setup that would change what the daemon does.
FOREIGN_ENVIRONMENT = ("STATE_DIRECTORY", "NOTIFY_SOCKET", "JOURNAL_STREAM", "CLAUDE_CONFIG_DIR")


@pytest.fixture(autouse=True)
def isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test runs with a fresh HOME and none of the developer's CCO_MONITOR_* settings.

    Without it, a ``~/.cco-monitor/config.toml`` or an exported ``CCO_MONITOR_HEALTH_PORT`` on
    the developer's machine changes what the daemons under test do.
    """
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    for name in list(os.environ):
        if name.startswith("CCO_MONITOR_") or name in FOREIGN_ENVIRONMENT:
            monkeypatch.delenv(name)


def pytest_configure(config: pytest.Config) -> None:
    """Tests create state dirs with plain ``mkdir()``: never group/other-writable ones.

    The daemon refuses such a state dir (and config file). Under a umask like 002 the
    tests' own directories would be 0775, so the umask is tightened to at least 022.
    """
    current = os.umask(0o022)
    os.umask(current | 0o022)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last error: {last_error})")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``cco-monitor ARGS`` as a subprocess; output captured as text, never checked."""
    return subprocess.run(
        [PYTHON, "-m", "cco_cost_monitor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


class Proc:
    """A subprocess with its output captured to a file, stopped at teardown."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._handle = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            stdout=self._handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._handle.close()


class Simulator:
    """``cco-monitor simulate`` as a subprocess, with its control endpoints."""

    def __init__(self, tmp: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.tmp = tmp
        self.proc: Proc | None = None

    def start(self) -> Simulator:
        args = [PYTHON, "-m", "cco_cost_monitor", "simulate", "--port", str(self.port), *self.extra]
        self.proc = Proc(args, self.tmp / f"sim-{self.port}.log")
        wait_until(lambda: httpx.get(f"{self.url}/_sim/ledger", timeout=1).status_code == 200)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def fault(self, kind: str, **params: Any) -> None:
        response = httpx.post(f"{self.url}/_sim/fault", json={"kind": kind, **params}, timeout=5)
        response.raise_for_status()

    def traffic(self, rate: float) -> None:
        httpx.post(f"{self.url}/_sim/traffic", json={"rate": rate}, timeout=5).raise_for_status()

    def ledger(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_sim/ledger", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    @property
    def stream_url(self) -> str:
        return f"{self.url}/api/stream"


class Monitor:
    """``cco-monitor start --foreground`` as a subprocess with fast test settings."""

    def __init__(self, state_dir: Path, sources: list[str], **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.sources = sources
        self.env = {
            **os.environ,
            "CCO_MONITOR_BACKOFF_INITIAL_SECONDS": "0.05",
            "CCO_MONITOR_BACKOFF_MAX_SECONDS": "0.5",
            "CCO_MONITOR_SNAPSHOT_INTERVAL_SECONDS": "0.2",
            "CCO_MONITOR_STALL_TIMEOUT_SECONDS": "2",
            "CCO_MONITOR_LOG_FORMAT": "json",
            **env,
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.proc: Proc | None = None

    def start(self, *extra: str) -> Monitor:
        args = [
            PYTHON,
            "-m",
            "cco_cost_monitor",
            "start",
            "--foreground",
            "--health-port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
        ]
        for source in self.sources:
            args += ["--source", source]
        self.proc = Proc(
            [*args, *extra], self.state_dir.parent / f"mon-{self.port}.log", env=self.env
        )
        wait_until(lambda: httpx.get(f"{self.url}/livez", timeout=1).status_code == 200)
        return self

    def get(self, path: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}{path}", timeout=5)
        data: dict[str, Any] = response.json()
        return data

    def health(self) -> dict[str, Any]:
        return self.get("/health")

    def summary(self) -> dict[str, Any]:
        return self.get("/api/summary")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def make_simulator(tmp_path: Path) -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def factory(*extra: str, port: int | None = None) -> Simulator:
        sim = Simulator(tmp_path, *extra, port=port).start()
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()


@pytest.fixture
def make_monitor(tmp_path: Path) -> Iterator[Callable[..., Monitor]]:
    started: list[Monitor] = []

    def factory(sources: list[str], state_dir: Path | None = None, **env: str) -> Monitor:
        monitor = Monitor(state_dir or tmp_path / "state", sources, **env).start()
        started.append(monitor)
        return monitor

    yield factory
    for monitor in started:
        monitor.stop()


def truth_since_first_contact(ledger: dict[str, Any]) -> tuple[float, int]:
    """Ground truth cost and calls since the monitor's first snapshot."""
    first = ledger["connections"][0]["first_snapshot"]
    return (
        ledger["true_cost_usd"] - first["true_cost_usd"],
        ledger["true_calls"] - first["true_calls"],
    )
