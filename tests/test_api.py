"""The HTTP layer with a stand-in service: status codes, bounds, bad query strings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cco_cost_monitor.api import MAX_EVENTS, make_app
from cco_cost_monitor.config import load_settings
from cco_cost_monitor.engine import BucketKind
from cco_cost_monitor.server import Service


class FakeService:
    """Answers like the real service, with fixed documents."""

    def __init__(self) -> None:
        self.since: list[datetime | None] = []

    def health(self) -> tuple[dict[str, Any], int]:
        return {"status": "pass"}, 200

    def summary(self) -> dict[str, Any]:
        return {"totals": {"cost_usd": 1.5}}

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return [{"n": index} for index in range(limit)]

    def timeseries(self, kind: BucketKind, since: datetime | None) -> list[dict[str, Any]]:
        self.since.append(since)
        return []

    def statusline(self) -> str:
        return "cco $1.50 today"

    def alerts(self, limit: int) -> list[dict[str, Any]]:
        return []


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(FakeService()))) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "since", ["inf", "1e20", "-1e20", "99999999999999d", "yesterday", "2026-13-40"]
)
async def test_bad_since_is_a_400_not_a_500(client: TestClient[Any, Any], since: str) -> None:
    """Overflowing or unreadable `since` values are the client's error, answered with 400."""
    response = await client.get("/api/timeseries", params={"since": since})
    assert response.status == 400


@pytest.mark.parametrize("since", ["30m", "6h", "7d", "1763400000", "2026-11-20T10:00:00Z"])
async def test_good_since_forms_are_accepted(client: TestClient[Any, Any], since: str) -> None:
    """Relative, epoch and RFC 3339 `since` values are all understood."""
    response = await client.get("/api/timeseries", params={"since": since, "bucket": "hour"})
    assert response.status == 200
    assert (await response.json())["since"] is not None


async def test_events_limit_is_clamped(client: TestClient[Any, Any]) -> None:
    """/api/events never returns more than MAX_EVENTS, whatever is asked."""
    response = await client.get("/api/events", params={"limit": "999999"})
    assert len((await response.json())["events"]) == MAX_EVENTS
    assert (await client.get("/api/events", params={"limit": "x"})).status == 400


async def test_health_is_health_json_and_never_cached(client: TestClient[Any, Any]) -> None:
    """/health has the health+json type and Cache-Control: no-store."""
    response = await client.get("/health")
    assert response.headers["Content-Type"].startswith("application/health+json")
    assert response.headers["Cache-Control"] == "no-store"


async def test_failing_health_answers_503(tmp_path: Path) -> None:
    """The real service's health over HTTP: fail is 503 (rejected credentials), warn is 200
    (a source still inside its grace period)."""
    flags: dict[str, Any] = {
        "state_dir": str(tmp_path / "s"),
        "sources": ["http://127.0.0.1:9/api/stream"],
    }
    service = Service(load_settings(flags).settings, flags=flags)
    (source,) = service.sources.values()
    source.state.move("error", "HTTP 401: no")
    source.state.auth_rejected = True
    async with TestClient(TestServer(make_app(service))) as test_client:
        response = await test_client.get("/health")
        assert (response.status, (await response.json())["status"]) == (503, "fail")
        source.state.auth_rejected = False
        source.state.move("disconnected", "ConnectError: refused")
        response = await test_client.get("/health")
        assert (response.status, (await response.json())["status"]) == (200, "warn")


async def test_money_is_served_without_float_noise() -> None:
    """0.1 + 0.2 is served as 0.3, not 0.30000000000000004."""

    class Noisy(FakeService):
        def summary(self) -> dict[str, Any]:
            return {"totals": {"cost_usd": 0.1 + 0.2, "requests": 3}}

    async with TestClient(TestServer(make_app(Noisy()))) as test_client:
        body = await (await test_client.get("/api/summary")).text()
    assert '"cost_usd":0.3,' in body
