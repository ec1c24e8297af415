"""Settings: layering, provenance, validation with the key named, the example file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cco_cost_monitor.config import Settings, load_settings
from cco_cost_monitor.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "config.toml"


def test_example_config_documents_every_key_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/config.toml names every setting and loads as a valid configuration."""
    monkeypatch.delenv("CCO_MONITOR_HEALTH_PORT", raising=False)
    text = EXAMPLE.read_text()
    for key in Settings.model_fields:
        assert key in text, key
    loaded = load_settings({"config": str(EXAMPLE)})
    assert loaded.settings.health_port == 8081
    assert tomllib.loads(text)["alerts"]["thresholds"] == [0.5, 0.75, 0.9, 1.0]


def test_flag_beats_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Precedence is flag > env > file > default, and provenance says which won."""
    config = tmp_path / "config.toml"
    config.write_text("health_port = 9001\nlog_level = 'debug'\nbackoff_max_seconds = 7\n")
    monkeypatch.setenv("CCO_MONITOR_HEALTH_PORT", "9002")
    monkeypatch.setenv("CCO_MONITOR_LOG_LEVEL", "warning")
    loaded = load_settings({"config": str(config), "health_port": 9003})
    assert loaded.settings.health_port == 9003
    assert loaded.settings.log_level == "warning"
    assert loaded.settings.backoff_max_seconds == 7
    assert loaded.origins["health_port"] == "flag"
    assert loaded.origins["log_level"] == "env"
    assert loaded.origins["backoff_max_seconds"] == "file"
    assert loaded.origins["timezone"] == "default"


def test_nested_env_sets_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """CCO_MONITOR_BUDGETS__DAILY_USD sets budgets.daily_usd."""
    monkeypatch.setenv("CCO_MONITOR_BUDGETS__DAILY_USD", "12.5")
    assert load_settings({}).settings.budgets.daily_usd == 12.5


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("health_port = 'x'\n", "health_port"),
        ("no_such_key = 1\n", "no_such_key"),
        ("[budgets]\ndaily_usd = -1\n", "budgets.daily_usd"),
        ("timezone = 'Mars/Olympus'\n", "timezone"),
        ("[prices]\ngpt-4 = { input = -3, output = 1 }\n", "prices"),
    ],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    """An invalid value or unknown key raises ConfigError naming the key (as a dotted path,
    where it comes from, then why)."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": str(config)})
    assert str(caught.value).startswith(f"invalid configuration: {key} (config file): ")
    if key == "prices":
        assert "price override 'gpt-4'" in str(caught.value)


def test_sources_accept_names_and_refuse_duplicates() -> None:
    """--source NAME=URL names a source; two sources with one name are refused."""
    loaded = load_settings(
        {"sources": ["a=http://127.0.0.1:1/api/stream", "http://127.0.0.1:2/api/streams/subscribe"]}
    )
    names = [(spec.name, spec.effective_kind) for spec in loaded.settings.sources]
    assert names == [("a", "analytics"), ("source1", "gateway")]
    with pytest.raises(ConfigError, match="duplicate"):
        load_settings({"sources": ["a=http://127.0.0.1:1/x", "a=http://127.0.0.1:2/x"]})


def test_non_loopback_host_needs_a_token() -> None:
    """Binding off loopback without a token or explicit opt-out is refused."""
    with pytest.raises(ConfigError, match="health_token"):
        load_settings({"health_host": "0.0.0.0"})
    assert load_settings({"health_host": "0.0.0.0", "health_token": "t" * 16}).settings.health_token


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["start", "--health-port", "abc"], 1),
        (["start", "--log-level", "loud"], 1),
        (["status", "--no-such-flag"], 2),
    ],
)
def test_a_bad_flag_stops_start_with_exit_1(args: list[str], code: int) -> None:
    """start's bad flags exit 1 as the contract says; other commands keep click's 2."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cco_cost_monitor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == code
    assert "Error:" in result.stderr
