"""Shared helpers for the daemon benchmarks: real processes on 127.0.0.1, /proc readings.

Every benchmark starts ``cco-monitor simulate`` and ``cco-monitor start --foreground`` as
subprocesses (ephemeral ports, a temporary state directory), reads the daemon's own
figures over HTTP and its CPU/RSS from ``/proc``, and stops every process it started.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Fast reconnects and a short stall timeout, as the test-suite uses.
FAST_ENV = {
    "CCO_MONITOR_BACKOFF_INITIAL_SECONDS": "0.05",
    "CCO_MONITOR_BACKOFF_MAX_SECONDS": "0.5",
    "CCO_MONITOR_SNAPSHOT_INTERVAL_SECONDS": "0.2",
    "CCO_MONITOR_STALL_TIMEOUT_SECONDS": "2",
}


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy; raise ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError, KeyError, ValueError, IndexError) as exc:
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s (last error: {last_error})")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def banner(title: str) -> None:
    """Print what ran where and when; make SIGTERM run the ``finally`` clean-ups."""
    signal.signal(signal.SIGTERM, _terminate)
    print(f"== {title}")
    print(
        f"   {datetime.now(UTC).isoformat(timespec='seconds')}  {platform.node()}  "
        f"{os.cpu_count()} CPUs  Python {platform.python_version()}  {platform.machine()}"
    )


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards (set BENCH_KEEP=1 to keep it)."""
    path = Path(tempfile.mkdtemp(prefix=f"cco-bench-{prefix}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"   kept {path}")


class Proc:
    """A subprocess with output to a log file; stopped (TERM, then KILL) by :meth:`stop`."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._handle = log.open("ab")
        self.popen = subprocess.Popen(
            args, stdout=self._handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        code: int | None = None
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                code = self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        else:
            code = self.popen.returncode
        if not self._handle.closed:
            self._handle.close()
        return code


class Simulator:
    """``cco-monitor simulate`` on an ephemeral port."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stream_url = f"{self.url}/api/stream"
        self.proc = Proc(
            [PYTHON, "-m", "cco_cost_monitor", "simulate", "--port", str(self.port), "-q", *extra],
            workdir / f"sim-{self.port}.log",
        )
        wait_until(lambda: httpx.get(f"{self.url}/_sim/ledger", timeout=1).status_code == 200)

    def fault(self, kind: str, **params: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/_sim/fault", json={"kind": kind, **params}, timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def traffic(self, rate: float) -> None:
        httpx.post(f"{self.url}/_sim/traffic", json={"rate": rate}, timeout=5).raise_for_status()

    def ledger(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_sim/ledger", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        self.proc.stop()


class Monitor:
    """``cco-monitor start --foreground`` on an ephemeral port and a given state dir."""

    def __init__(
        self, state_dir: Path, sources: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        full_env = {**os.environ, "CCO_MONITOR_LOG_FORMAT": "json", **(env or {})}
        full_env.pop("NOTIFY_SOCKET", None)
        args = [
            PYTHON,
            "-m",
            "cco_cost_monitor",
            "start",
            "--foreground",
            "--health-port",
            str(self.port),
            "--state-dir",
            str(state_dir),
        ]
        for source in sources:
            args += ["--source", source]
        self.proc = Proc(args, state_dir.parent / f"mon-{self.port}.log", env=full_env)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        wait_until(lambda: httpx.get(f"{self.url}/livez", timeout=1).status_code == 200)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> dict[str, Any]:
        data: dict[str, Any] = self.client.get(path).json()
        return data

    def health(self) -> dict[str, Any]:
        return self.get("/health")

    def summary(self) -> dict[str, Any]:
        return self.get("/api/summary")

    def wait_connected(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.health()["connection_status"] == "connected", timeout=timeout)

    def kill9(self) -> None:
        self.client.close()
        self.proc.kill9()

    def stop(self) -> int | None:
        self.client.close()
        return self.proc.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def db_bytes(state_dir: Path) -> tuple[int, int]:
    """Sizes of monitor.db and monitor.db-wal (0 if absent)."""
    sizes = []
    for name in ("monitor.db", "monitor.db-wal"):
        path = state_dir / name
        sizes.append(path.stat().st_size if path.exists() else 0)
    return sizes[0], sizes[1]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
