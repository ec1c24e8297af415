"""A hostile proxy for hardening tests: serves crafted SSE frames on 127.0.0.1.

The simulator sends what the CCO proxy sends; this sends what an attacker (or a broken
proxy) could: valid JSON with absurd values. Each connection gets the current
``frames`` in order, then the last one again every ``interval`` seconds, like the
proxy's snapshot stream. Runs in a thread of the test process; the monitor under test
is a real daemon process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


def snapshot(
    activity: list[dict[str, Any]], *, cost: Any = 0.0, calls: Any = 0, uptime: int = 100
) -> bytes:
    """One ``analytics`` frame in the proxy's current format."""
    body = {
        "project": {
            "name": "hostile",
            "cost": cost,
            "calls": calls,
            "last_updated": "2025-11-17T22:40:05.118204611+00:00",
        },
        "machine": {"uptime": uptime},
        "activity": activity,
    }
    return b"event: analytics\ndata: " + orjson.dumps(body) + b"\n\n"


def activity(
    index: int, *, cost: Any = 0.01, tokens: Any = 100, at: str | None = None
) -> dict[str, Any]:
    """One activity event; ``index`` makes it unique."""
    return {
        "timestamp": at or f"2025-11-17T22:40:{index % 60:02d}.{index:09d}+00:00",
        "event_type": "api_call",
        "agent_name": "agent",
        "model": "claude-sonnet-4-5",
        "tokens": tokens,
        "latency_ms": 10,
        "status": "success",
        "cost": cost,
    }


class HostileProxy:
    """``GET /api/stream`` answers ``frames``; set ``frames`` at any time for new connections."""

    def __init__(self, frames: list[bytes], interval: float = 0.2) -> None:
        self.frames = frames
        self.interval = interval
        self.connections = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                if not self.path.startswith("/api/stream"):
                    self.send_error(404)
                    return
                proxy.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                frames = list(proxy.frames)
                try:
                    for frame in frames:
                        self.wfile.write(frame)
                        self.wfile.flush()
                    while not proxy.closed and frames:
                        time.sleep(proxy.interval)
                        self.wfile.write(frames[-1])
                        self.wfile.flush()
                except OSError:
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.closed = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def stream_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/stream"

    def close(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def hostile_proxy(frames: list[bytes], interval: float = 0.2) -> Iterator[HostileProxy]:
    proxy = HostileProxy(frames, interval)
    proxy.thread.start()
    try:
        yield proxy
    finally:
        proxy.close()
