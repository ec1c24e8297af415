"""How long the daemon takes to start and stop, as a user (or systemd) sees it.

Runs the real console entry point (``python -m cco_cost_monitor``) as subprocesses, N times
each, against a real simulator on loopback, every run in a fresh temporary state dir:

- ``start`` -> healthy: background ``start`` until it has returned *and* ``/health`` answers;
- ``stop`` -> exited: ``stop`` until it has returned *and* the PID lock is free;
- ``start --foreground`` -> ``/livez``: spawn until ``/livez`` answers (what systemd waits
  for, minus the notify datagram), then SIGTERM;
- ``python -c pass``: interpreter start-up, the floor.

Reports the median and the 90th percentile (nearest rank) of each, in milliseconds.

Usage: python bench/bench_daemon.py [-n 10]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cco_cost_monitor.pidlock import lock_held

PYTHON = sys.executable
CLI = [PYTHON, "-m", "cco_cost_monitor"]
#: Variables that would make ``start`` refuse to fork.
SERVICE_MANAGER_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def poll(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(interval)


def clean_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in SERVICE_MANAGER_VARS}
    env["CCO_MONITOR_HOME"] = str(home)
    env["CCO_MONITOR_LOG_FORMAT"] = "json"
    return env


@contextmanager
def simulator(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = (workdir / "sim.log").open("wb")
    proc = subprocess.Popen(
        [*CLI, "simulate", "--port", str(port), "--interval", "0.5", "--rate", "5", "-q"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        poll(lambda: answers(f"http://127.0.0.1:{port}/_sim/ledger"))
        yield f"http://127.0.0.1:{port}/api/stream"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")


def background_cycle(workdir: Path, source: str, index: int) -> tuple[float, float]:
    """One background start -> healthy and stop -> lock free, in seconds."""
    state = workdir / f"bg-{index}"
    port = free_port()
    env = clean_env(state)
    common = ["--state-dir", str(state), "--health-port", str(port)]
    began = time.perf_counter()
    run([*CLI, "start", *common, "--source", source], env)
    poll(lambda: answers(f"http://127.0.0.1:{port}/health"))
    started = time.perf_counter() - began
    began = time.perf_counter()
    run([*CLI, "stop", *common], env)
    poll(lambda: not lock_held(state / "daemon.pid"))
    stopped = time.perf_counter() - began
    return started, stopped


def foreground_cycle(workdir: Path, source: str, index: int) -> float:
    """One ``start --foreground`` until /livez answers, in seconds (then SIGTERM)."""
    state = workdir / f"fg-{index}"
    port = free_port()
    args = [*CLI, "start", "--foreground", "--state-dir", str(state)]
    args += ["--health-port", str(port), "--source", source]
    began = time.perf_counter()
    proc = subprocess.Popen(
        args, env=clean_env(state), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        poll(lambda: answers(f"http://127.0.0.1:{port}/livez"))
        return time.perf_counter() - began
    finally:
        proc.send_signal(signal.SIGTERM)
        if proc.wait(15) != 0:
            raise RuntimeError(f"start --foreground exited {proc.returncode} after SIGTERM")


def floor_cycle() -> float:
    began = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], check=True)
    return time.perf_counter() - began


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs of each measurement")
    options = parser.parse_args()

    results: dict[str, list[float]] = {
        "python -c pass (floor)": [],
        "start -> /health answers": [],
        "stop -> lock released": [],
        "start --foreground -> /livez": [],
    }
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cco-bench-") as tmp:
        workdir = Path(tmp)
        with simulator(workdir) as source:
            for index in range(options.n):
                results["python -c pass (floor)"].append(floor_cycle())
                started, stopped = background_cycle(workdir, source, index)
                results["start -> /health answers"].append(started)
                results["stop -> lock released"].append(stopped)
                results["start --foreground -> /livez"].append(
                    foreground_cycle(workdir, source, index)
                )

    print(
        f"# bench_daemon: N={options.n}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    )
    print(f"# 1-min load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print()
    print("| measurement | median ms | p90 ms | min ms | max ms |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        milliseconds = [value * 1000 for value in values]
        print(
            f"| {name} | {statistics.median(milliseconds):.0f} | {p90(milliseconds):.0f} "
            f"| {min(milliseconds):.0f} | {max(milliseconds):.0f} |"
        )


if __name__ == "__main__":
    main()
