"""``cco-monitor demo``: the simulator and the monitor in one foreground process.

The one-command tour: a stand-in CCO proxy with realistic traffic (and, by default, a
proxy restart and a burst beyond the window, to show that nothing is lost or counted
twice), the real monitor service against it, and a line of live figures every few
seconds, compared with the simulator's own ledger. Ctrl+C stops both, exit 0.
State goes to a temporary directory unless ``--state-dir`` is given.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import anyio
import click

from cco_cost_monitor.config import load_settings
from cco_cost_monitor.errors import MonitorError


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int) -> int:
    if _port_free("127.0.0.1", preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@click.command("demo")
@click.option(
    "--port",
    type=int,
    default=3000,
    show_default=True,
    help="Simulator port (another free port is used if taken).",
)
@click.option(
    "--health-port",
    type=int,
    default=8081,
    show_default=True,
    help="Monitor HTTP port (another free port is used if taken).",
)
@click.option(
    "--interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between the simulator's snapshots (the real proxy: 5).",
)
@click.option("--rate", type=float, default=2.0, show_default=True, help="Requests per second.")
@click.option("--seed", type=int, default=None, help="Seed of the simulated traffic.")
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Stop after this many seconds (default: run until Ctrl+C).",
)
@click.option(
    "--faults/--no-faults",
    default=True,
    show_default=True,
    help="Schedule a burst beyond the window and a proxy restart.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the demo's state here (default: a temporary directory).",
)
def demo_command(
    port: int,
    health_port: int,
    interval: float,
    rate: float,
    seed: int | None,
    duration: float | None,
    faults: bool,
    state_dir: Path | None,
) -> None:
    """Run the built-in CCO proxy simulator and the monitor together, with live figures."""
    from cco_cost_monitor.logs import configure_logging  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="cco-monitor-demo-") as scratch:
        state = (state_dir or Path(scratch) / "state").absolute()
        sim_port = _pick_port(port)
        http_port = _pick_port(health_port)
        try:
            loaded = load_settings(
                {
                    "sources": [{"name": "demo", "url": f"http://127.0.0.1:{sim_port}/api/stream"}],
                    "health_port": http_port,
                    "state_dir": state,
                    "snapshot_interval_seconds": interval,
                    "log_level": "warning",
                    "log_format": "console",
                }
            )
        except MonitorError as exc:
            raise click.ClickException(str(exc)) from None
        configure_logging("warning", "console")
        try:
            anyio.run(_demo, loaded.settings, sim_port, interval, rate, seed, duration, faults)
        except MonitorError as exc:
            raise click.ClickException(str(exc)) from None


async def _demo(
    settings: Any,
    sim_port: int,
    interval: float,
    rate: float,
    seed: int | None,
    duration: float | None,
    faults: bool,
) -> None:
    from cco_cost_monitor.server import Service, serve  # noqa: PLC0415
    from cco_cost_monitor.simulator.faults import parse_fault_spec  # noqa: PLC0415
    from cco_cost_monitor.simulator.server import running  # noqa: PLC0415
    from cco_cost_monitor.simulator.settings import SimulatorSettings  # noqa: PLC0415
    from cco_cost_monitor.simulator.traffic import TrafficProfile  # noqa: PLC0415

    schedule = (
        tuple(
            parse_fault_spec(spec)
            for spec in (f"{interval * 8:g}:burst:35", f"{interval * 16:g}:restart")
        )
        if faults
        else ()
    )
    sim_settings = SimulatorSettings(
        port=sim_port,
        interval=interval,
        seed=seed,
        traffic=TrafficProfile(rate=rate),
        faults=schedule,
        history_cost=12.5,
        history_calls=400,
        start_uptime=3600,
    )
    service = Service(settings)
    click.echo(f"simulator  http://127.0.0.1:{sim_port}/api/stream  (ledger: /_sim/ledger)")
    click.echo(f"monitor    {settings.health_url}/   (try: curl -s {settings.health_url}/health)")
    click.echo("Ctrl+C stops both.\n")
    async with running(sim_settings) as sim, anyio.create_task_group() as tasks:

        async def report() -> None:
            while True:
                await anyio.sleep(max(2.0, interval * 3))
                click.echo(_line(service, sim.ledger_json()))

        async def stop_later() -> None:
            if duration is not None:
                await anyio.sleep(duration)
                import os  # noqa: PLC0415
                import signal  # noqa: PLC0415

                os.kill(os.getpid(), signal.SIGTERM)

        tasks.start_soon(report)
        tasks.start_soon(stop_later)
        await serve(service)
        click.echo(_line(service, sim.ledger_json()))
        tasks.cancel_scope.cancel()


def _line(service: Any, ledger: dict[str, Any]) -> str:
    summary = service.summary()
    totals = summary["totals"]
    connections = ledger.get("connections") or []
    truth = ""
    if connections:
        first = connections[0]["first_snapshot"]
        truth_cost = ledger["true_cost_usd"] - first["true_cost_usd"]
        truth_calls = ledger["true_calls"] - first["true_calls"]
        truth = f" | simulator truth ${truth_cost:.4f} / {truth_calls} req"
    tiers = " ".join(
        f"{tier} ${row['cost_usd']:.3f}"
        for tier, row in summary["by_tier"].items()
        if row["requests"]
    )
    source = summary["sources"][0]
    return (
        f"[{source['connection_status']}] counted ${totals['cost_usd']:.4f} / "
        f"{totals['requests']} req (unattributed ${totals['unattributed_cost_usd']:.4f}, "
        f"{totals['unattributed_requests']} req; proxy restarts {source['proxy_restarts']})"
        f"{truth} | {tiers} | burn ${summary['burn_rate_usd_per_hour']['5m']:.2f}/h"
    )
