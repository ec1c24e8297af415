"""How long ``cco-monitor statusline`` takes per call, against ``python -c pass`` as the floor.

Runs each command N times as a subprocess (the way a shell prompt or Claude Code runs it)
and reports the median wall time and its ratio to the floor, in one run:

- ``python -c pass``: interpreter start-up, the floor;
- ``cco-monitor statusline``: the real console script (its entry point imports only the
  stdlib client for ``statusline``, never click or the CLI);
- ``python -m cco_cost_monitor.client``: the same client run as a module;
- ``curl -sf .../statusline``, if curl is installed: what a status bar can run instead;

each against a daemon that answers (``--health-port PORT`` of a running monitor, else a
stand-in stdlib HTTP server in this process serving a fixed ``/statusline`` line and
``/api/summary``) and one that does not (a closed port: the ``cco: offline`` path). CPU
time per call (the child's user+system time) is reported beside the wall time.

Usage: python bench/bench_statusline.py [-n 30] [--health-port 8081]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
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

import cco_cost_monitor

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
    summary = json.dumps(SUMMARY).encode()
    line = "cco $42.50 today · $5.25/h · daily 85% ⚠\n".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            text = self.path.startswith("/statusline")
            body = line if text else summary
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
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


def median_ms(command: list[str], runs: int) -> tuple[float, float, str]:
    """Median wall and CPU ms of ``runs`` runs (after one warm-up), and the last output."""
    output = ""
    times = []
    cpus = []
    for index in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, _, usage = os.wait4(proc.pid, 0)
        elapsed = (time.perf_counter() - start) * 1000
        output = out.decode("utf-8", "replace").strip()
        if index:
            times.append(elapsed)
            cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
    return statistics.median(times), statistics.median(cpus), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--health-port", type=int, help="a running monitor's port")
    args = parser.parse_args()
    script = shutil.which("cco-monitor", path=str(Path(sys.executable).parent))
    if script is None:
        sys.exit("cco-monitor is not installed next to this interpreter")
    python = sys.executable
    # An installed wheel has its bytecode compiled; an editable install run with
    # PYTHONDONTWRITEBYTECODE would compile the client on every call (~4 ms).
    compileall.compile_dir(Path(cco_cost_monitor.__file__).parent, quiet=1)

    with stand_in_daemon() as stand_in:
        online = args.health_port or stand_in
        offline = closed_port()
        floor, floor_cpu, _ = median_ms([python, "-c", "pass"], args.runs)
        rows = [("python -c pass", floor, floor_cpu, "")]
        curl = shutil.which("curl")
        for label, port in (("online", online), ("offline", offline)):
            commands = [
                ("cco-monitor statusline", [script, "statusline", "--health-port", str(port)]),
                (
                    "python -m cco_cost_monitor.client",
                    [python, "-m", "cco_cost_monitor.client", "--health-port", str(port)],
                ),
            ]
            if curl is not None:
                url = f"http://127.0.0.1:{port}/statusline"
                commands.append(("curl -sf .../statusline", [curl, "-sf", url]))
            for name, command in commands:
                ms, cpu, out = median_ms(command, args.runs)
                rows.append((f"{name} ({label})", ms, cpu, out))

    print(f"median wall and CPU time over {args.runs} runs (python {sys.version.split()[0]})")
    for name, ms, cpu, out in rows:
        print(f"  {name:<42} {ms:7.1f} ms wall {ms / floor:4.1f}x floor  {cpu:6.1f} ms CPU  {out}")
    fresh = next(ms for name, ms, _, _ in rows if name == "cco-monitor statusline (online)")
    ok = fresh <= 30.0 or fresh <= 3 * floor
    print(
        f"  target: a fresh cco-monitor statusline <= 30 ms or <= 3x the floor: "
        f"{fresh:.1f} ms = {fresh / floor:.1f}x: {'PASS' if ok else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
