"""Tests of the ``simulate`` click command: help, start-up line, faults, exit statuses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner

from cco_cost_monitor.simulator.cli import simulate_command

ROOT = Path(__file__).resolve().parents[1]
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/api/stream")


def test_help_documents_every_option_and_fault() -> None:
    """``--help`` names every option of the brief and every fault kind."""
    result = CliRunner().invoke(simulate_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host", "--port", "--interval", "--keepalive", "--seed", "--rate",
        "--cache-hit-rate", "--override-rate", "--format", "--spaced", "--save-interval",
        "--fault", "--flood", "--ledger", "--no-realistic", "--unspaced", "--race-rate",
        "--late-event-rate", "--save-hold", "--negative-zero", "--split-chunks",
        "--identical-rate", "--orphan-override-rate", "--failed-rate",
    ):  # fmt: skip
        assert option in result.output
    for kind in (
        "restart", "burst", "http_500", "huge_line", "stall", "lag", "save", "race",
        "identical", "orphan_override", "failed_call", "hidden=true", "reload=nothing",
    ):  # fmt: skip
        assert kind in result.output
    assert simulate_command.name == "simulate"


def test_runs_prints_its_url_and_applies_scheduled_faults(tmp_path: Path) -> None:
    """With port 0 it prints the bound URL, applies --fault on time and exits 0."""
    ledger = tmp_path / "ledger.jsonl"
    result = CliRunner().invoke(
        simulate_command,
        [
            *("--port", "0", "--duration", "0.6", "--interval", "0.05", "--rate", "0"),
            *("--quiet", "--seed", "5", "--fault", "0.1:burst:30", "--ledger", str(ledger)),
        ],
    )
    assert result.exit_code == 0, result.output
    match = URL.search(result.output)
    assert match is not None
    assert int(match.group(1)) > 0
    assert "seed 5" in result.output
    records = [orjson.loads(line) for line in ledger.read_bytes().splitlines()]
    faults = [r for r in records if r["kind"] == "fault"]
    assert [(f["fault"], f["count"]) for f in faults] == [("burst", 30)]
    events = [r for r in records if r["kind"] == "event"]
    assert sum(e["event_type"] in ("api_call", "cache_hit") for e in events) == 30


@pytest.mark.parametrize(
    "args",
    [["--fault", "soon:restart"], ["--fault", "1:meteor"], ["--format", "new"], ["--rate", "-1"]],
)
def test_bad_flags_exit_2(args: list[str]) -> None:
    """An invalid flag is a usage error naming the problem, before anything starts."""
    result = CliRunner().invoke(simulate_command, ["--port", "0", *args])
    assert result.exit_code == 2
    assert "Error" in result.output


def test_a_typo_in_a_fault_parameter_names_the_valid_ones() -> None:
    """--fault with a misspelt key=value is a usage error listing the kind's parameters."""
    result = CliRunner().invoke(
        simulate_command, ["--port", "0", "--fault", "1:restart:0.5,hiden=true"]
    )
    assert result.exit_code == 2
    assert "'hiden'" in result.output
    assert "valid: down_seconds, save_first, hidden, reload, queued" in result.output


@pytest.mark.parametrize(
    ("args", "prefix", "empty_cost"),
    [
        ([], b"event: analytics\ndata: {", b'"cost":-0.0,'),
        (["--no-realistic"], b"event:analytics\ndata:{", b'"cost":0.0,'),
        (["--no-realistic", "--spaced"], b"event: analytics\ndata: {", b'"cost":0.0,'),
        (["--unspaced", "--no-negative-zero"], b"event:analytics\ndata:{", b'"cost":0.0,'),
    ],
)
def test_realistic_by_default_and_each_behaviour_switchable(
    args: list[str], prefix: bytes, empty_cost: bytes
) -> None:
    """The default is axum 0.7's spaced framing and -0.0; --no-realistic and the single
    flags switch them, either way."""
    code = "from cco_cost_monitor.simulator.cli import simulate_command; simulate_command()"
    command = [sys.executable, "-c", code, "--port", "0", "--quiet", "--rate", "0", *args]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = URL.search(line)
            assert match is not None, line
            assert ("not realistic" in line) == ("--no-realistic" in args)
            url = f"http://127.0.0.1:{match.group(1)}/api/stream"
            with httpx.stream("GET", url, timeout=5.0) as response:
                received = b""
                for chunk in response.iter_raw():
                    received += chunk
                    if b"\n\n" in received:
                        break
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert received.startswith(prefix)
    assert empty_cost in received


def test_port_in_use_exits_1() -> None:
    """A port that is taken stops it with exit 1 and the reason on stderr."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(simulate_command, ["--port", str(port), "--quiet"])
    assert result.exit_code == 1
    assert str(port) in result.stderr


def test_sigterm_stops_it_with_exit_0() -> None:
    """As a process it serves until SIGTERM, then exits 0."""
    code = "from cco_cost_monitor.simulator.cli import simulate_command; simulate_command()"
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--quiet", "--interval", "0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = URL.search(line)
            assert match is not None, line
            response = httpx.get(f"http://127.0.0.1:{match.group(1)}/health", timeout=5.0)
            assert response.json()["status"] == "ok"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_public_names_are_what_all_says() -> None:
    """The package exports exactly the names of its ``__all__``."""
    import cco_cost_monitor.simulator as simulator

    public = {name for name in vars(simulator) if not name.startswith("_")}
    modules = {"cli", "faults", "ledger", "proxy", "server", "settings", "streams", "traffic"}
    assert public - modules == set(simulator.__all__)
