"""Helpers of the observability tests: real simulator and monitor processes on loopback.

Each process writes its output to files in the test's temporary directory (never to a
pipe that nobody drains); ``wait_for_output`` polls those files. Everything listens on
127.0.0.1 with ports chosen by the kernel. External binaries (promtool, prometheus,
chromium) make a test skip when missing, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_until

CLI = [sys.executable, "-m", "cco_cost_monitor"]
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
# Debian package of each external binary the tests use.
PACKAGES = {"promtool": "prometheus", "prometheus": "prometheus", "chromium": "chromium"}


def require_binary(*names: str) -> str:
    """Path of the first of ``names`` on PATH; skip (or fail under CI=true) when none is."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    package = PACKAGES.get(names[0], names[0])
    message = f"{' / '.join(names)} not installed (apt-get install -y {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Proc:
    """A child process whose stdout and stderr go to files."""

    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            if self.popen.poll() is not None:
                pytest.fail(f"process exited ({self.popen.returncode}):\n{self.output()}")
            return regex.search(self.output())

        match: re.Match[str] = wait_until(found, timeout)
        return match

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


@contextmanager
def spawn(
    args: Sequence[str], workdir: Path, name: str, env: Mapping[str, str] | None = None
) -> Iterator[Proc]:
    """Run ``args`` with output in ``workdir/name.{out,err}``; SIGTERM it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    stdout = workdir / f"{name}.out"
    stderr = workdir / f"{name}.err"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=workdir,
        )
    proc = Proc(popen, stdout, stderr)
    try:
        yield proc
    finally:
        proc.stop()


@contextmanager
def simulator(
    workdir: Path, port: int = 0, extra: Sequence[str] = (), name: str = "simulator"
) -> Iterator[tuple[Proc, str]]:
    """A ``cco-monitor simulate`` process with fast snapshots; yields it and its base URL."""
    args = [*CLI, "simulate", "--port", str(port), "--interval", "0.2", "--rate", "5", *extra]
    with spawn(args, workdir, name) as proc:
        match = proc.wait_for_output(r"listening on (http://127\.0\.0\.1:\d+)")
        yield proc, match.group(1)


MONITOR_ENV = {
    "CCO_MONITOR_SNAPSHOT_INTERVAL_SECONDS": "0.2",
    "CCO_MONITOR_BACKOFF_MAX_SECONDS": "0.5",
    "CCO_MONITOR_LOG_FORMAT": "json",
}


@contextmanager
def monitor(
    workdir: Path,
    source: str,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    name: str = "monitor",
) -> Iterator[tuple[Proc, str]]:
    """A ``cco-monitor start --foreground`` process; yields it and its base URL."""
    args = [
        *CLI,
        "start",
        "--foreground",
        "--source",
        source,
        "--health-port",
        "0",
        "--state-dir",
        str(workdir / f"{name}-state"),
        *extra,
    ]
    with spawn(
        args, workdir, name, {**MONITOR_ENV, "CCO_MONITOR_HOME": str(workdir), **(env or {})}
    ) as proc:
        match = proc.wait_for_output(r'"health_url": "(http://127\.0\.0\.1:\d+)/health"')
        yield proc, match.group(1)


def get(
    url: str,
    token: str | None = None,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> httpx.Response:
    """GET ``url`` without proxies from the environment, optionally with a bearer token."""
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    return httpx.get(url, headers=all_headers, params=params, timeout=timeout, trust_env=False)


def post_json(url: str, body: Mapping[str, Any]) -> httpx.Response:
    return httpx.post(url, json=dict(body), timeout=5.0, trust_env=False)
