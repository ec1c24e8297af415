"""``cco-monitor demo``: the simulator and the monitor in one foreground process.

The one-command tour: a stand-in CCO proxy with realistic traffic (and, by default, a
proxy restart and a burst beyond the window, to show that nothing is lost or counted
twice), the real monitor service against it, and the live ``watch`` view on a terminal
(or a line of figures every few seconds when the output is not a terminal), compared
with the simulator's own ledger. Ctrl+C stops both, exit 0.
State goes to a temporary directory unless ``--state-dir`` is given.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from datetime import UTC, datetime, timedelta
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
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    from cco_cost_monitor.render import WatchFrame, watch_view  # noqa: PLC0415
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
    async with running(sim_settings) as sim:
        async with anyio.create_task_group() as tasks:

            async def report() -> None:
                console = Console()
                if not console.is_terminal:
                    while True:
                        await anyio.sleep(max(2.0, interval * 3))
                        click.echo(_line(service, sim.ledger_json()))
                frame = WatchFrame(
                    url=settings.health_url,
                    now=datetime.now(UTC),
                    title="cco-monitor demo",
                    hint="Ctrl+C stops both",
                )
                with Live(console=console, screen=True, auto_refresh=False) as live:
                    while True:
                        _refresh(frame, service, sim.ledger_json())
                        live.update(watch_view(frame), refresh=True)
                        await anyio.sleep(1.0)

            async def stop_later() -> None:
                if duration is not None:
                    await anyio.sleep(duration)
                    # Quiet the proxy and let one more snapshot through, so that the final
                    # line compares like with like (Ctrl+C may catch calls in flight).
                    sim.set_traffic(rate=0)
                    await anyio.sleep(max(0.5, interval * 3))
                    os.kill(os.getpid(), signal.SIGTERM)

            tasks.start_soon(report)
            tasks.start_soon(stop_later)
            await serve(service)
            tasks.cancel_scope.cancel()
        # After the live view has left the alternate screen, so that it stays visible.
        click.echo(_line(service, sim.ledger_json()))


def _refresh(frame: Any, service: Any, ledger: dict[str, Any]) -> None:
    """Fill a watch frame straight from the in-process service (no HTTP round trip)."""
    now = datetime.now(UTC)
    frame.now = frame.last_ok = now
    frame.health, _ = service.health()
    frame.summary = service.summary()
    frame.timeseries = service.timeseries("minute", now - timedelta(minutes=60))
    frame.events = service.recent_events(20)
    cost, calls = _truth(ledger)
    if cost is not None:
        from cco_cost_monitor.render import money  # noqa: PLC0415

        frame.note = f"simulator truth {money(cost)} / {calls:,} req"


def _truth(ledger: dict[str, Any]) -> tuple[float | None, int]:
    """Ground truth since the monitor's first snapshot, from the simulator's ledger."""
    connections = ledger.get("connections") or []
    if not connections:
        return None, 0
    first = connections[0]["first_snapshot"]
    return (
        ledger["true_cost_usd"] - first["true_cost_usd"],
        ledger["true_calls"] - first["true_calls"],
    )


def _line(service: Any, ledger: dict[str, Any]) -> str:
    from cco_cost_monitor.render import money  # noqa: PLC0415  (rich only when shown)

    summary = service.summary()
    totals = summary["totals"]
    truth_cost, truth_calls = _truth(ledger)
    truth = ""
    if truth_cost is not None:
        exact = totals["requests"] == truth_calls and abs(totals["cost_usd"] - truth_cost) <= 1e-9
        verdict = "exact" if exact else "not yet settled"
        truth = f" | simulator truth {money(truth_cost)} / {truth_calls} req ({verdict})"
    tiers = " ".join(
        f"{tier} {money(row['cost_usd'])}"
        for tier, row in summary["by_tier"].items()
        if row["requests"]
    )
    source = summary["sources"][0]
    return (
        f"[{source['connection_status']}] counted {money(totals['cost_usd'])} / "
        f"{totals['requests']} req (unattributed {money(totals['unattributed_cost_usd'])}, "
        f"{totals['unattributed_requests']} req; proxy restarts {source['proxy_restarts']})"
        f"{truth} | {tiers} | burn {money(summary['burn_rate_usd_per_hour']['5m'])}/h"
    )
