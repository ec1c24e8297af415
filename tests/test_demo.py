"""`cco-monitor demo`: the one-command tour runs, agrees with its simulator, stops cleanly."""

from __future__ import annotations

import re

from tests.conftest import free_port, run_cli


def test_demo_counts_exactly_what_its_simulator_generated() -> None:
    """A short demo with a burst beyond the window ends with counted == simulator truth
    (to the nano-dollar: the line says ``exact``, not only the same rounded figures)."""
    result = run_cli(
        "demo",
        "--port",
        str(free_port()),
        "--health-port",
        str(free_port()),
        "--interval",
        "0.2",
        "--rate",
        "10",
        "--seed",
        "5",
        "--duration",
        "6",
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.search(
        r"counted \$([0-9.,]+) / (\d+) req .*simulator truth \$([0-9.,]+) / (\d+) req \(exact\)",
        last,
    )
    assert match is not None, last
    counted_cost, counted_calls, truth_cost, truth_calls = match.groups()
    assert (counted_cost, counted_calls) == (truth_cost, truth_calls)
    assert int(counted_calls) > 0
    assert "unattributed $0.00," not in last  # the scheduled burst overflowed the window
