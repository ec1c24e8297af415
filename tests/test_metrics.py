"""Tests for ``GET /metrics`` (``cco_cost_monitor.metrics``): names, values, validity.

In-process tests drive a real :class:`~cco_cost_monitor.server.Service` through the
aiohttp app; end-to-end tests run the real monitor against the real simulator, check
the exposition with ``promtool`` and let a real Prometheus server scrape it.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from cco_cost_monitor import __version__
from cco_cost_monitor.api import make_app
from cco_cost_monitor.config import Settings, SourceSpec
from cco_cost_monitor.extensions import install
from cco_cost_monitor.metrics import make_registry
from cco_cost_monitor.server import Service
from tests.helpers_obs import (
    get,
    monitor,
    post_json,
    require_binary,
    simulator,
    spawn,
    wait_until,
)

CONTRACT_FAMILIES = {
    "cco_cost_usd": "counter",
    "cco_requests": "counter",
    "cco_tokens": "counter",
    "cco_unattributed_cost_usd": "counter",
    "cco_burn_rate_usd_per_hour": "gauge",
    "cco_projected_cost_usd": "gauge",
    "cco_budget_used_ratio": "gauge",
    "cco_sse_connected": "gauge",
    "cco_sse_reconnects": "counter",
    "cco_proxy_restarts": "counter",
    "cco_last_event_timestamp_seconds": "gauge",
    "cco_monitor_build_info": "gauge",
}

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] of a text exposition."""
    result: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.setdefault(sample.name, []).append((sample.labels, sample.value))
    return result


def make_service(tmp_path: Path) -> Service:
    settings = Settings(
        sources=[SourceSpec(name="main", url="http://127.0.0.1:9/api/stream")],
        state_dir=tmp_path,
    )
    return Service(settings)


async def scrape(service: Service) -> tuple[str, str]:
    app = make_app(service)
    install(app, service)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def promtool_check(text: str) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def test_idle_service_exposes_connection_and_build_info(tmp_path: Path) -> None:
    """A monitor with no data yet serves valid text with build info and a disconnected source."""
    content_type, text = await scrape(make_service(tmp_path))
    assert content_type.startswith("text/plain; version=0.0.4")
    found = samples(text)
    assert found["cco_monitor_build_info"] == [({"version": __version__}, 1.0)]
    assert found["cco_sse_connected"] == [({"source": "main"}, 0.0)]
    assert found["cco_sse_reconnects_total"] == [({"source": "main"}, 0.0)]
    assert found["cco_proxy_restarts_total"] == [({"source": "main"}, 0.0)]
    assert {labels["window"] for labels, _ in found["cco_burn_rate_usd_per_hour"]} == {"5m", "1h"}
    assert "cco_cost_usd_total" not in found


async def test_projections_and_budgets_come_from_the_summary(tmp_path: Path) -> None:
    """Projections and budgets in the summary appear as gauges; duplicates are dropped."""
    service = make_service(tmp_path)
    original = service.summary

    def summary() -> dict[str, Any]:
        document = original()
        document["projections"] = {
            "end_of_day": {"cost_usd": 12.5, "low_usd": 10.0, "high_usd": 15.0},
            "end_of_month": {"cost_usd": 300.0, "low_usd": None, "high_usd": None},
        }
        document["budgets"] = [
            {"period": "daily", "limit_usd": 20.0, "spent_usd": 5.0, "used_ratio": 0.25},
            {"period": "daily", "limit_usd": 20.0, "spent_usd": 5.0, "used_ratio": 0.25},
            {"period": "monthly", "tier": "opus", "limit_usd": 100.0, "used_ratio": 0.5},
        ]
        return document

    service.summary = summary  # type: ignore[method-assign]
    _, text = await scrape(service)
    found = samples(text)
    assert sorted(found["cco_projected_cost_usd"], key=str) == [
        ({"horizon": "end_of_day"}, 12.5),
        ({"horizon": "end_of_month"}, 300.0),
    ]
    assert found["cco_projected_cost_low_usd"] == [({"horizon": "end_of_day"}, 10.0)]
    assert sorted(found["cco_budget_used_ratio"], key=str) == [
        ({"period": "daily", "tier": "all"}, 0.25),
        ({"period": "monthly", "tier": "opus"}, 0.5),
    ]
    promtool_check(text)


def test_collector_does_no_work_until_scraped(tmp_path: Path) -> None:
    """Registering the collector reads nothing: the service is only read at scrape time."""
    service = make_service(tmp_path)
    calls: list[int] = []
    service.summary = lambda: calls.append(1) or {}  # type: ignore[method-assign,func-returns-value]
    registry = make_registry(service)
    assert calls == []
    list(registry.collect())
    assert calls == [1]


# -- end to end: the real monitor against the real simulator ------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A simulator and a monitor connected to it; yields (sim URL, monitor URL, workdir)."""
    workdir = tmp_path_factory.mktemp("metrics-live")
    with (
        simulator(workdir) as (_, sim_url),
        monitor(workdir, f"{sim_url}/api/stream") as (_, url),
    ):
        wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["events"] >= 3, 20)
        yield sim_url, url, workdir


@pytest.mark.slow
def test_live_metrics_match_the_summary(live: tuple[str, str, Path]) -> None:
    """With traffic paused, the cost counters add up to the summary's attributed total."""
    sim_url, url, _ = live
    post_json(f"{sim_url}/_sim/traffic", {"rate": 0}).raise_for_status()
    try:

        def settled() -> tuple[dict[str, Any], str] | None:
            before = get(f"{url}/api/summary").json()
            text = get(f"{url}/metrics").text
            time.sleep(0.5)
            after = get(f"{url}/api/summary").json()
            if before["totals"] != after["totals"]:
                return None
            return after, text

        summary, text = wait_until(settled, 20)
    finally:
        post_json(f"{sim_url}/_sim/traffic", {"rate": 5}).raise_for_status()
    found = samples(text)
    attributed = summary["totals"]["cost_usd"] - summary["totals"]["unattributed_cost_usd"]
    cost = sum(value for _, value in found["cco_cost_usd_total"])
    assert math.isclose(cost, attributed, rel_tol=1e-9, abs_tol=1e-9)
    assert all(
        set(labels) == {"source", "tier", "model"} for labels, _ in found["cco_cost_usd_total"]
    )
    requests = sum(value for _, value in found["cco_requests_total"])
    assert requests == summary["totals"]["requests"] - summary["totals"]["unattributed_requests"]
    tokens = sum(value for _, value in found["cco_tokens_total"])
    assert tokens == sum(row["tokens"] for row in summary["by_tier"].values())
    assert found["cco_sse_connected"] == [({"source": "default"}, 1.0)]
    assert found["cco_last_event_timestamp_seconds"][0][1] > time.time() - 120
    assert {labels["window"] for labels, _ in found["cco_burn_rate_usd_per_hour"]} == {"5m", "1h"}


@pytest.mark.slow
def test_live_metrics_pass_promtool(live: tuple[str, str, Path]) -> None:
    """``promtool check metrics`` accepts the live exposition, with every contract family."""
    _, url, _ = live
    response = get(f"{url}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    promtool_check(response.text)
    types = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    for name, kind in CONTRACT_FAMILIES.items():
        assert types.get(name) == kind, name


@pytest.mark.slow
def test_openmetrics_is_served_on_request(live: tuple[str, str, Path]) -> None:
    """A scraper asking for OpenMetrics gets it, terminated by ``# EOF``."""
    _, url, _ = live
    reply = get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert reply.text.rstrip().endswith("# EOF")


def test_grafana_dashboard_uses_only_exposed_metrics(tmp_path: Path) -> None:
    """examples/grafana-dashboard.json is valid JSON and every cco_* name in it is exposed."""
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bcco_[a-z0-9_]+", expr)}
    exposed: set[str] = set()
    for family in make_registry(make_service(tmp_path)).collect():
        exposed.add(family.name)
        if family.type == "counter":
            exposed.add(f"{family.name}_total")
    assert used
    assert used <= exposed, used - exposed


def test_prometheus_example_is_valid() -> None:
    """examples/prometheus.yml passes ``promtool check config``."""
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(EXAMPLES / "prometheus.yml")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest.mark.slow
def test_real_prometheus_scrapes_the_monitor(live: tuple[str, str, Path]) -> None:
    """A real Prometheus server scraping every second answers a PromQL query for the cost."""
    prometheus = require_binary("prometheus")
    _, url, workdir = live
    target = url.removeprefix("http://")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: cco-monitor\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    args = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        "--web.listen-address=127.0.0.1:0",
    ]
    with spawn(args, workdir, "prometheus") as proc:
        # Port 0 is allowed: Prometheus logs the address it bound.
        match = proc.wait_for_output(r"Listening on.*?address=(127\.0\.0\.1:\d+)", 30)
        api = f"http://{match.group(1)}/api/v1"

        def answer() -> list[dict[str, Any]] | None:
            body = get(f"{api}/query", params={"query": "sum(cco_cost_usd_total)"}).json()
            result: list[dict[str, Any]] = body["data"]["result"]
            return result or None

        result = wait_until(answer, 30, interval=0.5)
        assert float(result[0]["value"][1]) > 0
        active = get(f"{api}/targets").json()["data"]["activeTargets"]
        assert [target["health"] for target in active] == ["up"], active
