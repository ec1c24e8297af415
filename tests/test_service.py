"""The service object without sockets: reload semantics."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
import structlog.testing

from cco_cost_monitor.config import load_settings
from cco_cost_monitor.server import Service


def write(path: Path, text: str) -> None:
    path.write_text(text)


def test_reload_applies_live_keys_and_keeps_the_rest(tmp_path: Path) -> None:
    """Budgets, prices and alert thresholds apply at once; a new port waits for a restart."""
    config = tmp_path / "config.toml"
    write(config, "health_port = 18001\n[budgets]\ndaily_usd = 10\n")
    flags = {"config": str(config), "state_dir": str(tmp_path / "s")}
    service = Service(load_settings(flags).settings, flags=flags)
    version = service.prices.version
    write(
        config,
        "health_port = 18002\ntimezone = 'Europe/Berlin'\n[budgets]\ndaily_usd = 3\n"
        "[prices]\ngpt-4 = { input = 30, output = 60 }\n[alerts]\nthresholds = [0.8]\n",
    )
    with structlog.testing.capture_logs() as logs:
        assert service.reload()
    assert service.settings.budgets.daily_usd == 3
    assert service.prices.version != version
    assert all(r.prices is service.prices for r in service.reconcilers.values())
    assert service.settings.alerts.thresholds == [0.8]
    assert service.settings.health_port == 18001
    assert service.settings.timezone == "local"
    warning = next(entry for entry in logs if entry["log_level"] == "warning")
    assert "restart needed" in warning["event"]
    assert warning["keys"] == ["health_port", "timezone"]


def test_a_broken_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    """A config that no longer validates is rejected; nothing changes."""
    config = tmp_path / "config.toml"
    write(config, "[budgets]\ndaily_usd = 10\n")
    flags = {"config": str(config), "state_dir": str(tmp_path / "s")}
    service = Service(load_settings(flags).settings, flags=flags)
    write(config, "[budgets]\ndaily_usd = -1\n")
    assert not service.reload()
    assert service.settings.budgets.daily_usd == 10


def test_reload_cannot_leave_a_non_loopback_bind_without_a_token(tmp_path: Path) -> None:
    """Dropping the token while the bound host (restart-only) stays public is rejected."""
    config = tmp_path / "config.toml"
    write(config, "health_host = '0.0.0.0'\nhealth_token = 'secret-token-0123456'\n")
    flags = {"config": str(config), "state_dir": str(tmp_path / "s")}
    service = Service(load_settings(flags).settings, flags=flags)
    write(config, "health_host = '127.0.0.1'\n")
    assert not service.reload()
    assert service.settings.health_host == "0.0.0.0"
    assert service.settings.health_token is not None


def test_results_reach_the_writer_even_when_the_engine_fails(tmp_path: Path) -> None:
    """If aggregating a frame fails, its accounting is still saved with the advanced state."""
    from datetime import UTC, datetime, timedelta
    from typing import Any

    from cco_cost_monitor.wire import parse_frame

    flags = {"state_dir": str(tmp_path / "s")}
    service = Service(load_settings(flags).settings, flags=flags)
    submitted: list[Any] = []

    class Writer:
        def submit(self, accounting: Any, state: Any, engine: Any) -> None:
            submitted.append((accounting, state()))

    def broken(accounting: Any) -> None:
        raise RuntimeError("bug")

    service.writer = Writer()  # type: ignore[assignment]
    spec = service.settings.sources[0]
    now = datetime.now(UTC)
    base = '{"project": {"cost": 1.0, "calls": 1}, "machine": {"uptime": 5}, "activity": []}'
    service.on_frame(spec, parse_frame("analytics", base), now)
    grown = '{"project": {"cost": 3.0, "calls": 4}, "machine": {"uptime": 10}, "activity": []}'
    service.on_frame(spec, parse_frame("analytics", grown), now)
    service.engine.record = broken  # type: ignore[method-assign]
    # The growth is settled (and accounted) once a later snapshot confirms it.
    settled = '{"project": {"cost": 3.0, "calls": 4}, "machine": {"uptime": 15}, "activity": []}'
    with pytest.raises(RuntimeError):
        service.on_frame(spec, parse_frame("analytics", settled), now + timedelta(seconds=10))
    accounting, state = submitted[-1]
    assert accounting.requests == 3
    assert state["last_calls"] == 4
