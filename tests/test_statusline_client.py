"""``cco-monitor statusline``: what a status bar runs every few seconds must stay tiny."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cco_cost_monitor.client import Endpoint, statusline_text
from tests.conftest import Monitor, Simulator, free_port, wait_until

#: Imported by the old console script for ``statusline`` (~100 ms of CPU per call).
HEAVY = ("click", "cco_cost_monitor.cli", "urllib.request", "http.client", "json", "socket")

# Runs the installed console script's own target (pyproject's [project.scripts]).
PROBE = """
import sys
from importlib.metadata import entry_points
(script,) = entry_points(group="console_scripts", name="cco-monitor")
sys.argv = ["cco-monitor", "statusline", "--health-port", sys.argv[1]]
before = set(sys.modules)
try:
    script.load()()
except SystemExit:
    pass
sys.stderr.write("MODULES " + " ".join(sorted(set(sys.modules) - before)) + "\\n")
"""


def test_the_console_script_runs_statusline_without_click_or_urllib() -> None:
    """The entry point imports only the stdlib-only client (and its raw socket) for
    `statusline`: no click, no CLI, no urllib/http.client/json/socket, online or not."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == "cco: offline\n"
    modules = result.stderr.split("MODULES ", 1)[1].split()
    assert [name for name in HEAVY if name in modules] == []
    assert "cco_cost_monitor.client" in modules


@contextmanager
def daemon_like(routes: dict[str, tuple[int, bytes, bool]]) -> Iterator[int]:
    """A stdlib HTTP server: path -> (status, body, chunked)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            status, body, chunked = routes.get(self.path, (404, b"not found\n", False))
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Connection", "close")
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for piece in (body[:5], body[5:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            else:
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


LINE = "cco $1.00 today · $0.50/h".encode()


@pytest.mark.parametrize("chunked", [False, True])
def test_the_raw_client_reads_plain_and_chunked_answers(chunked: bool) -> None:
    """/statusline with Content-Length or chunked: the same line, UTF-8 intact."""
    with daemon_like({"/statusline": (200, LINE + b"\n", chunked)}) as port:
        assert statusline_text(Endpoint(f"http://127.0.0.1:{port}", None)) == LINE.decode()


def test_a_daemon_without_statusline_gets_the_summary_round_trip() -> None:
    """An older daemon (404 on /statusline): the line is formatted from /api/summary."""
    summary = b'{"periods": {"today": {"cost_usd": 2.5}}, "burn_rate_usd_per_hour": {"1h": 1}}'
    with daemon_like({"/api/summary": (200, summary, False)}) as port:
        line = statusline_text(Endpoint(f"http://127.0.0.1:{port}", None))
    assert line == "cco $2.50 today · $1.00/h"


def test_an_error_answer_is_offline_not_a_line() -> None:
    """A 401 or 500 from /statusline prints no body as if it were the line."""
    with daemon_like({"/statusline": (401, b"unauthorized\n", False)}) as port:
        assert statusline_text(Endpoint(f"http://127.0.0.1:{port}", None)) is None


@pytest.mark.slow
def test_statusline_and_curl_print_the_daemons_own_line(
    make_simulator: Callable[..., Simulator], make_monitor: Callable[..., Monitor]
) -> None:
    """Against the real daemon: `cco-monitor statusline` prints exactly GET /statusline,
    and so does the `curl -sf 127.0.0.1:PORT/statusline` form docs/terminal.md gives."""
    sim = make_simulator("--interval", "0.1", "--rate", "0", "--seed", "4")
    monitor = make_monitor([sim.stream_url])
    wait_until(lambda: monitor.health()["snapshots_processed"] > 2)
    script = shutil.which("cco-monitor", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run(
        [script, "statusline", "--health-port", str(monitor.port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    expected = httpx.get(f"{monitor.url}/statusline", timeout=5).text
    assert result.returncode == 0
    assert result.stdout == expected
    assert expected.startswith("cco $")
    curl = shutil.which("curl")
    if curl is not None:
        line = subprocess.run(
            [curl, "-sf", f"127.0.0.1:{monitor.port}/statusline"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        assert line == expected
