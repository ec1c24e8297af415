"""How long ``cco-monitor statusline`` takes per call, against ``python -c pass`` as the floor.

Runs each command N times as a subprocess (the way a shell prompt or Claude Code runs it)
and reports the median wall time and its ratio to the floor, in one run:

- ``python -c pass``: interpreter start-up, the floor;
- ``cco-monitor statusline``: the real console script (click, the CLI and its commands);
- ``python -m cco_cost_monitor.client``: the stdlib-only statusline path without the CLI;

each against a daemon that answers (``--health-port PORT`` of a running monitor, else a
stand-in stdlib HTTP server in this process serving a fixed ``/api/summary``) and one that
does not (a closed port: the ``cco: offline`` path).

Usage: python bench/bench_statusline.py [-n 30] [--health-port 8081]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SUMMARY = {
    "periods": {"today": {"cost_usd": 42.5, "requests": 900}},
    "burn_rate_usd_per_hour": {"5m": 6.5, "1h": 5.25},
    "budgets": [
        {
            "period": "daily",
            "limit_usd": 50.0,
            "spent_usd": 42.5,
            "used_ratio": 0.85,
            "projected_usd": 110.0,
            "state": "warn",
        }
    ],
    "sources": [{"name": "default", "connection_status": "connected"}],
}


@contextmanager
def stand_in_daemon() -> Iterator[int]:
    body = json.dumps(SUMMARY).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def median_ms(command: list[str], runs: int) -> tuple[float, str]:
    """Median wall time in ms of ``runs`` runs (after one warm-up), and the last output."""
    output = ""
    times = []
    for index in range(runs + 1):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = (time.perf_counter() - start) * 1000
        output = result.stdout.strip()
        if index:
            times.append(elapsed)
    return statistics.median(times), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--health-port", type=int, help="a running monitor's port")
    args = parser.parse_args()
    script = shutil.which("cco-monitor", path=str(Path(sys.executable).parent))
    if script is None:
        sys.exit("cco-monitor is not installed next to this interpreter")
    python = sys.executable

    with stand_in_daemon() as stand_in:
        online = args.health_port or stand_in
        offline = closed_port()
        floor, _ = median_ms([python, "-c", "pass"], args.runs)
        rows = [("python -c pass", floor, "")]
        for label, port in (("online", online), ("offline", offline)):
            for name, command in (
                ("cco-monitor statusline", [script, "statusline"]),
                ("python -m cco_cost_monitor.client", [python, "-m", "cco_cost_monitor.client"]),
            ):
                ms, out = median_ms([*command, "--health-port", str(port)], args.runs)
                rows.append((f"{name} ({label})", ms, out))

    print(f"median wall time over {args.runs} runs (python {sys.version.split()[0]})")
    for name, ms, out in rows:
        print(f"  {name:<46} {ms:8.1f} ms  {ms / floor:5.1f}x floor  {out}")


if __name__ == "__main__":
    main()
