"""Alert delivery: a real signed webhook on loopback, retries, a dead webhook, commands."""

from __future__ import annotations

import hashlib
import hmac
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from cco_cost_monitor.alerts import SIGNATURE_HEADER, AlertDispatcher, sign
from cco_cost_monitor.budgets import Alert, AlertTracker, evaluate
from cco_cost_monitor.config import AlertSettings, BudgetSettings
from cco_cost_monitor.engine import Engine
from tests.test_projections import feed

BERLIN = ZoneInfo("Europe/Berlin")
SECRET = "s3cr3t-hmac-key"
NOW = datetime(2026, 3, 3, 12, tzinfo=UTC)


def alert(index: int = 0) -> Alert:
    return Alert("threshold", "daily", None, 0.5, f"alert {index}", NOW, {"index": index})


class Receiver:
    """A loopback aiohttp webhook receiver recording bodies and signature checks."""

    def __init__(self, fail_first: int = 0, status: int = 500) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.valid: list[bool] = []
        self.calls = 0
        self.fail_first = fail_first
        self.status = status
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.fail_first:
            return web.Response(status=self.status)
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        self.valid.append(hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected))
        self.bodies.append(orjson.loads(body))
        return web.Response(text="ok")


@pytest.fixture
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    recv = Receiver(**getattr(request, "param", {}))
    app = web.Application()
    app.router.add_post("/hook/token-in-path", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}/hook/token-in-path"
    yield recv
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_sign_is_hmac_sha256() -> None:
    """The signature is sha256=<hex HMAC-SHA256 of the body>."""
    expected = hmac.new(b"k", b"body", hashlib.sha256).hexdigest()
    assert sign(b"body", "k") == f"sha256={expected}"


async def test_webhook_receives_each_threshold_once_per_period(receiver: Receiver) -> None:
    """Driving a real engine through two days, the webhook gets each line once a day, signed."""
    settings = AlertSettings(webhook_url=receiver.url, webhook_secret=SecretStr(SECRET))
    dispatcher = AlertDispatcher(settings, backoff_base_seconds=0.01)
    tracker = AlertTracker(settings.thresholds, predictive=False)
    engine = Engine(zone=BERLIN)
    limits = BudgetSettings(daily_usd=10)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        for day in (3, 4):
            now = datetime(2026, 3, day, 8, tzinfo=BERLIN)
            # $0.40 every 10 minutes: 0.5 / 0.75 / 0.9 / 1.0 of $10 are crossed, spend hovers on.
            for _ in range(40):
                now += timedelta(minutes=10)
                feed(engine, now.astimezone(UTC), 0.4)
                for item in tracker.update(evaluate(limits, engine, None, now), now):
                    dispatcher.submit(item)
        with anyio.fail_after(10):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    thresholds = [
        (body["period"], body["threshold"], body["payload"]["period_start"])
        for body in receiver.bodies
    ]
    assert len(thresholds) == 8
    assert len(set(thresholds)) == 8
    assert sorted(t for _, t, _ in thresholds) == [0.5, 0.5, 0.75, 0.75, 0.9, 0.9, 1.0, 1.0]
    assert all(receiver.valid)
    assert dispatcher.stats()["sent"] == 8
    assert dispatcher.stats()["failed"] == 0


@pytest.mark.parametrize("receiver", [{"fail_first": 2}], indirect=True)
async def test_webhook_retries_server_errors(receiver: Receiver) -> None:
    """Two 500s then a 200: delivered once, two retries counted."""
    settings = AlertSettings(webhook_url=receiver.url, webhook_secret=SecretStr(SECRET))
    dispatcher = AlertDispatcher(settings, backoff_base_seconds=0.01)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.submit(alert())
        with anyio.fail_after(10):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    assert len(receiver.bodies) == 1
    assert receiver.valid == [True]
    assert dispatcher.stats()["retries"] == 2
    assert dispatcher.stats()["sent"] == 1


@pytest.mark.parametrize("receiver", [{"fail_first": 100, "status": 400}], indirect=True)
async def test_webhook_client_error_is_not_retried(receiver: Receiver) -> None:
    """A 400 is a refusal: counted as failed without retrying."""
    dispatcher = AlertDispatcher(AlertSettings(webhook_url=receiver.url), backoff_base_seconds=0.01)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.submit(alert())
        with anyio.fail_after(10):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    assert receiver.calls == 1
    assert dispatcher.stats()["failed"] == 1
    assert dispatcher.stats()["retries"] == 0


async def test_dead_webhook_never_slows_submit_and_failures_are_counted() -> None:
    """1000 submits to a closed port return at once; the overflow is dropped and counted."""
    settings = AlertSettings(
        webhook_url=f"http://127.0.0.1:{closed_port()}/hook",
        webhook_timeout_seconds=2.0,
        webhook_max_retries=2,
        queue_size=16,
    )
    dispatcher = AlertDispatcher(settings, backoff_base_seconds=0.01)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        await anyio.sleep(0)
        started = time.perf_counter()
        for index in range(1000):
            dispatcher.submit(alert(index))
        elapsed = time.perf_counter() - started
        assert elapsed < settings.webhook_timeout_seconds / 4
        with anyio.fail_after(20):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    stats = dispatcher.stats()
    assert stats["dropped"] == 1000 - 16
    assert stats["failed"] == 16
    assert stats["webhook_failed"] == 16
    assert stats["retries"] == 16 * 2
    assert stats["sent"] == 0
    # The newest alerts are the ones kept.
    assert [a.payload["index"] for a in dispatcher.history(3)] == [999, 998, 997]


async def test_secret_and_webhook_path_never_logged() -> None:
    """Logs of a failing signed webhook contain neither the secret nor the URL's path."""
    settings = AlertSettings(
        webhook_url=f"http://127.0.0.1:{closed_port()}/hook/token-in-path",
        webhook_secret=SecretStr(SECRET),
        webhook_max_retries=0,
    )
    dispatcher = AlertDispatcher(settings)
    with capture_logs() as logs:
        async with anyio.create_task_group() as group:
            group.start_soon(dispatcher.run)
            dispatcher.submit(alert())
            with anyio.fail_after(10):
                await dispatcher.drain()
            group.cancel_scope.cancel()
    text = repr(logs)
    assert "alert_webhook_failed" in text
    assert SECRET not in text
    assert "token-in-path" not in text


async def test_command_gets_json_on_stdin_and_env(tmp_path: Path) -> None:
    """The command reads the alert JSON from stdin and CCO_ALERT_* from its environment."""
    out = tmp_path / "out.json"
    script = tmp_path / "sink.py"
    script.write_text(
        "import json, os, sys\n"
        "data = json.load(sys.stdin)\n"
        "data['env_kind'] = os.environ['CCO_ALERT_KIND']\n"
        "data['env_threshold'] = os.environ['CCO_ALERT_THRESHOLD']\n"
        f"open({str(out)!r}, 'w').write(json.dumps(data))\n"
    )
    settings = AlertSettings(command=f"{sys.executable} {script}")
    dispatcher = AlertDispatcher(settings)
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.submit(alert(7))
        with anyio.fail_after(20):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    data = orjson.loads(out.read_bytes())
    assert data["message"] == "alert 7"
    assert data["env_kind"] == "threshold"
    assert data["env_threshold"] == "0.5"
    assert dispatcher.stats()["command_sent"] == 1


async def test_command_is_killed_after_its_timeout(tmp_path: Path) -> None:
    """A hanging command is killed after command_timeout_seconds and counted as failed."""
    script = tmp_path / "hang.py"
    script.write_text("import time\ntime.sleep(30)\n")
    settings = AlertSettings(command=f"{sys.executable} {script}", command_timeout_seconds=0.5)
    dispatcher = AlertDispatcher(settings)
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.submit(alert())
        with anyio.fail_after(10):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    assert time.perf_counter() - started < 5
    assert dispatcher.stats()["command_failed"] == 1
    assert dispatcher.stats()["failed"] == 1


def test_without_sinks_alerts_are_logged_and_kept() -> None:
    """With no webhook or command, submit only logs and records history (bounded)."""
    dispatcher = AlertDispatcher(AlertSettings(), history_size=5)
    with capture_logs() as logs:
        for index in range(8):
            dispatcher.submit(alert(index))
    assert len(logs) == 8
    assert logs[0]["event"] == "budget_alert"
    assert [a.payload["index"] for a in dispatcher.history(10)] == [7, 6, 5, 4, 3]
    assert dispatcher.stats()["queued"] == 0
