"""Tests for access control and secrecy (``cco_cost_monitor.auth`` and the whole daemon).

A configured ``health_token`` guards every route but ``/livez``; no response opens the
API to other origins; and secrets given on the command line never show up in a log
line, a response body or ``cco-monitor config``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr, ValidationError

from cco_cost_monitor.api import make_app
from cco_cost_monitor.auth import token_matches
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.extensions import install
from cco_cost_monitor.server import Service
from tests.helpers_obs import get, monitor, simulator, wait_until

TOKEN = "health-Tok3n-7781"
GUARDED = [
    "/health",
    "/metrics",
    "/api/summary",
    "/api/events",
    "/api/timeseries",
    "/statusline",
    "/",
    "/static/dashboard.js",
    "/no-such-page",
]


def client_for(tmp_path: Path, token: str | None) -> TestClient:  # type: ignore[type-arg]
    settings = Settings(
        sources=[SourceSpec(name="main", url="http://127.0.0.1:9/api/stream")],
        state_dir=tmp_path,
        health_token=SecretStr(token) if token else None,
    )
    service = Service(settings)
    app = make_app(service)
    install(app, service)
    return TestClient(TestServer(app, host="127.0.0.1"))


async def test_every_route_but_livez_needs_the_token(tmp_path: Path) -> None:
    """With a token set, requests without it, with a wrong one or another scheme get 401."""
    async with client_for(tmp_path, TOKEN) as client:
        for path in GUARDED:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Bearer {TOKEN}x"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": TOKEN},
            ):
                response = await client.get(path, headers=headers)
                assert response.status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in await response.text()
        livez = await client.get("/livez")
        assert livez.status == 200


async def test_the_right_token_opens_every_route(tmp_path: Path) -> None:
    """With ``Authorization: Bearer <token>`` every route answers as without a token."""
    async with client_for(tmp_path, TOKEN) as client:
        for path in GUARDED[:-1]:
            response = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status in (200, 503), path
        missing = await client.get("/no-such-page", headers={"Authorization": f"Bearer {TOKEN}"})
        assert missing.status == 404


async def test_without_a_token_nothing_is_required(tmp_path: Path) -> None:
    """On loopback without a token the API is open, as documented."""
    async with client_for(tmp_path, None) as client:
        for path in GUARDED[:-1]:
            response = await client.get(path)
            assert response.status in (200, 503), path


async def test_no_cors_and_defensive_headers(tmp_path: Path) -> None:
    """No response carries CORS headers, even to a cross-origin request; all are nosniff."""
    async with client_for(tmp_path, None) as client:
        for path in ("/api/summary", "/metrics", "/", "/health", "/no-such-page"):
            response = await client.get(path, headers={"Origin": "https://evil.example"})
            headers = {name.lower() for name in response.headers}
            assert not any(name.startswith("access-control-") for name in headers), path
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["X-Frame-Options"] == "DENY"
            assert "Content-Security-Policy" in response.headers
        preflight = await client.options(
            "/api/summary",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "Access-Control-Allow-Origin" not in preflight.headers
        assert preflight.status >= 400


def test_token_comparison() -> None:
    """Only ``Bearer <exact token>`` matches (scheme case-insensitive)."""
    assert token_matches(f"Bearer {TOKEN}", TOKEN)
    assert token_matches(f"bearer {TOKEN}", TOKEN)
    assert not token_matches(None, TOKEN)
    assert not token_matches("", TOKEN)
    assert not token_matches("Bearer ", TOKEN)
    assert not token_matches(f"Bearer {TOKEN[:-1]}", TOKEN)
    assert not token_matches(f"Token {TOKEN}", TOKEN)


def test_non_loopback_needs_a_token() -> None:
    """Listening beyond loopback without a token (or an explicit opt-out) is refused."""
    with pytest.raises(ValidationError, match="not a loopback address"):
        Settings(health_host="0.0.0.0")
    assert Settings(health_host="0.0.0.0", health_token=SecretStr(TOKEN)).health_token


SOURCE_SECRET = "SECRET123"
HEALTH_SECRET = "HEALTHSECRET4567"


@pytest.mark.slow
def test_secrets_never_leak(tmp_path: Path) -> None:
    """``--source-token``/``--health-token`` appear in no log line, body or config output."""
    secrets = (SOURCE_SECRET, HEALTH_SECRET)
    flags = ["--source-token", SOURCE_SECRET, "--health-token", HEALTH_SECRET]
    with (
        simulator(tmp_path) as (_, sim_url),
        monitor(tmp_path, f"{sim_url}/api/stream", [*flags, "--log-level", "debug"]) as (proc, url),
    ):
        wait_until(
            lambda: get(f"{url}/api/summary", HEALTH_SECRET).json()["totals"]["events"] >= 2, 20
        )
        assert get(f"{url}/health").status_code == 401
        assert get(f"{url}/livez").status_code == 200
        bodies = {
            path: get(f"{url}{path}", HEALTH_SECRET)
            for path in ("/health", "/api/summary", "/api/events", "/metrics", "/statusline", "/")
        }
        for path, response in bodies.items():
            assert response.status_code == 200, path
            for secret in secrets:
                assert secret not in response.text, (path, secret)
                assert secret not in str(response.headers), (path, secret)
        assert proc.stop() == 0
        logs = proc.output()
    assert "cco-monitor started" in logs
    for secret in secrets:
        assert secret not in logs, secret
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cco_cost_monitor",
                "config",
                *extra,
                *flags,
                "--source",
                "http://127.0.0.1:1/api/stream",
                "--state-dir",
                str(tmp_path / "c"),
            ],
            capture_output=True,
            timeout=30,
            check=True,
            env={"PATH": "/usr/bin:/bin", "CCO_MONITOR_HOME": str(tmp_path)},
        )
        output = result.stdout.decode() + result.stderr.decode()
        assert "health_token" in output
        for secret in secrets:
            assert secret not in output, (extra, secret)


def test_failure_tracebacks_carry_no_secrets(tmp_path: Path) -> None:
    """A background start that fails (port taken) logs no token, not even in a traceback."""
    import socket

    state = tmp_path / "bg"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cco_cost_monitor",
                "start",
                "--state-dir",
                str(state),
                "--health-port",
                str(port),
                "--source",
                "http://127.0.0.1:1/api/stream",
                "--source-token",
                SOURCE_SECRET,
                "--health-token",
                HEALTH_SECRET,
                "--log-level",
                "debug",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )
    assert result.returncode == 1, result.stderr
    assert "already in use" in result.stderr
    text = result.stdout + result.stderr
    log_file = state / "monitor.log"
    if log_file.exists():
        text += log_file.read_text()
    for secret in (SOURCE_SECRET, HEALTH_SECRET):
        assert secret not in text
