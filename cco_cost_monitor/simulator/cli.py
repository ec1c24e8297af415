"""The ``cco-monitor simulate`` click command: flags -> :class:`SimulatorSettings` -> run."""

from __future__ import annotations

import logging
import secrets
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from cco_cost_monitor.errors import ConfigError, StartupError
from cco_cost_monitor.simulator.faults import FAULT_HELP, ScheduledFault, parse_fault_spec
from cco_cost_monitor.simulator.server import GATEWAY_PATH, Simulator, run
from cco_cost_monitor.simulator.settings import SimulatorSettings, classic
from cco_cost_monitor.simulator.traffic import TrafficProfile

__all__ = ["simulate_command"]

_FAULT_LINES = "\n".join(
    f"  {kind + (':ARG' if main else ''):<22} {text}" for kind, (main, text) in FAULT_HELP.items()
)

_EPILOG = f"""\b
Faults (--fault AT:KIND[:ARG], AT = seconds after start; also at run
time: curl -d '{{"kind":"burst","count":60}}' http://HOST:PORT/_sim/fault):
{_FAULT_LINES}

\b
ARG is the main parameter, or key=value pairs after it, comma-separated:
--fault 30:restart:0.5,hidden=true,reload=nothing,queued=3

\b
Realistic mode (default; --no-realistic turns it all off, each flag below
overrides one behaviour either way): snapshots read apart from the records
(--race-rate, --late-event-rate), saves holding snapshots back (--save-hold),
-0.0 on an empty proxy, 'event: analytics' spacing, frames split inside UTF-8
characters, identical events, overrides with no call, failed calls.

\b
Control endpoints: POST /_sim/fault, POST /_sim/traffic {{"rate": 0}} (pause),
GET /_sim/ledger (ground truth: everything generated, per connection;
since_first_contact is what a monitor connected from the start must count).
"""


def _parse_faults(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[ScheduledFault, ...]:
    try:
        return tuple(parse_fault_spec(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


_rate = click.FloatRange(0.0, 1.0)


@click.command(
    "simulate",
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=3000,
    show_default=True,
    help="Port to listen on (cco run's default); 0 picks a free one and prints it.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.001),
    default=5.0,
    show_default=True,
    help="Seconds between analytics snapshots.",
)
@click.option(
    "--keepalive",
    type=click.FloatRange(min=0.001),
    default=30.0,
    show_default=True,
    help="Send ':keep-alive' after this many seconds without an event.",
)
@click.option(
    "--ping-interval",
    type=click.FloatRange(min=0.001),
    default=15.0,
    show_default=True,
    help="Gateway stream: ':ping' after this many seconds of silence.",
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the traffic (default: random, printed)."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.0),
    default=0.5,
    show_default=True,
    help="Requests per second (Poisson); 0 = idle proxy.",
)
@click.option(
    "--cache-hit-rate",
    type=_rate,
    default=0.1,
    show_default=True,
    help="Share of requests answered from the proxy's cache (cost 0).",
)
@click.option(
    "--override-rate",
    type=_rate,
    default=0.05,
    show_default=True,
    help="Share of calls preceded by a model_override event.",
)
@click.option(
    "--unpriced-rate",
    type=_rate,
    default=0.0,
    show_default=True,
    help="Share of requests on a new model that price tables do not know.",
)
@click.option(
    "--unpriced-model",
    default="acme-nova-1",
    show_default=True,
    help="Name of that new model.",
)
@click.option(
    "--coarse-timestamp-rate",
    type=_rate,
    default=0.05,
    show_default=True,
    help="Share of event timestamps with 0, 3 or 6 fractional digits instead of 9.",
)
@click.option(
    "--tiny-cost-rate",
    type=_rate,
    default=0.02,
    show_default=True,
    help="Share of calls so small that the cost prints in exponent form (1e-6).",
)
@click.option(
    "--format",
    "wire_format",
    type=click.Choice(["current", "early", "old"]),
    default="current",
    show_default=True,
    help="Snapshot format: current (8-field events), early (6 fields), old (cache/models/totals).",
)
@click.option(
    "--realistic/--no-realistic",
    default=True,
    show_default=True,
    help="Do what the proxy's code does (see below); --no-realistic: atomic snapshots, "
    "unspaced frames, no save holds, no odd records.",
)
@click.option(
    "--spaced/--unspaced",
    default=None,
    help="'event: analytics' with a space (axum 0.7, realistic default) or without (older axum).",
)
@click.option(
    "--race-rate",
    type=_rate,
    default=None,
    help="Share of snapshots with new requests read while 1-3 of them finish: events ahead "
    "of calls (and cost). Realistic default 0.25.",
)
@click.option(
    "--late-event-rate",
    type=_rate,
    default=None,
    help="Share of snapshots whose newest event reaches the ring only after the read "
    "(it shows in the next one). Realistic default 0.05.",
)
@click.option(
    "--save-hold",
    type=click.FloatRange(0.0, 86_400.0),
    default=None,
    help="Each save holds snapshots back this many seconds (keep-alives flow), then the "
    "missed ones fire back to back. Realistic default 6; 0 = no hold.",
)
@click.option(
    "--negative-zero/--no-negative-zero",
    default=None,
    help="An empty proxy sends cost -0.0 (realistic default) or 0.0.",
)
@click.option(
    "--split-chunks/--no-split-chunks",
    default=None,
    help="Write each snapshot in several chunks, cut inside a multi-byte UTF-8 character "
    "when there is one (realistic default).",
)
@click.option(
    "--identical-rate",
    type=_rate,
    default=None,
    help="Share of requests that are two byte-identical simulated-era calls (100/50 tokens, "
    "one microsecond timestamp). Realistic default 0.02.",
)
@click.option(
    "--orphan-override-rate",
    type=_rate,
    default=None,
    help="Share of requests that are a model_override with no api_call (not counted in "
    "calls). Realistic default 0.02.",
)
@click.option(
    "--failed-rate",
    type=_rate,
    default=None,
    help="Share of requests that fail upstream (api_call tokens 0, cost 0.0) and repeat as "
    "cached cache_hits. Realistic default 0.02.",
)
@click.option(
    "--save-interval",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="The proxy saves its totals this often; a restart loses what came after.",
)
@click.option(
    "--down-seconds",
    type=click.FloatRange(min=0.0),
    default=0.2,
    show_default=True,
    help="How long a restart refuses connections.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="AT:KIND[:ARG]",
    callback=_parse_faults,
    help="Schedule a fault (repeatable); kinds below.",
)
@click.option(
    "--flood",
    is_flag=True,
    help="Benchmark mode: snapshots as fast as the client reads, 20 new calls in each.",
)
@click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=None,
    help="Append every event, restart, fault and connection to this JSONL file.",
)
@click.option(
    "--start-uptime",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The proxy has already been up this many seconds.",
)
@click.option(
    "--history-cost",
    type=click.FloatRange(min=0.0),
    default=0.0,
    show_default=True,
    help="Cumulative USD the proxy reports before any traffic (its saved history).",
)
@click.option(
    "--history-calls",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Cumulative calls the proxy reports before any traffic.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Stop after this many seconds (default: run until Ctrl+C).",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not log restarts and faults to stderr.")
def simulate_command(
    *,
    host: str,
    port: int,
    interval: float,
    keepalive: float,
    ping_interval: float,
    seed: int | None,
    rate: float,
    cache_hit_rate: float,
    override_rate: float,
    unpriced_rate: float,
    unpriced_model: str,
    coarse_timestamp_rate: float,
    tiny_cost_rate: float,
    wire_format: str,
    realistic: bool,
    spaced: bool | None,
    race_rate: float | None,
    late_event_rate: float | None,
    save_hold: float | None,
    negative_zero: bool | None,
    split_chunks: bool | None,
    identical_rate: float | None,
    orphan_override_rate: float | None,
    failed_rate: float | None,
    save_interval: float,
    down_seconds: float,
    faults: tuple[ScheduledFault, ...],
    flood: bool,
    ledger_path: Path | None,
    start_uptime: int,
    history_cost: float,
    history_calls: int,
    duration: float | None,
    quiet: bool,
) -> None:
    """Run a stand-in CCO proxy that speaks its exact SSE wire format, with traffic.

    Serves GET /api/stream (analytics snapshots, as `cco run` sends them) and
    GET /api/streams/subscribe (the gateway's per-request stream_event stream), with
    seeded, realistic traffic across opus, sonnet, haiku and other models, proxy restarts
    that lose unsaved totals, and scriptable faults. By default it does what the proxy's
    code does (realistic mode, below). Point a monitor at the printed URL. Stops cleanly
    (exit 0) on Ctrl+C or SIGTERM.
    """
    if seed is None:
        seed = secrets.randbelow(2**31)
    try:
        settings = SimulatorSettings(
            host=host,
            port=port,
            interval=interval,
            keepalive=keepalive,
            ping_interval=ping_interval,
            seed=seed,
            traffic=TrafficProfile(
                rate=rate,
                cache_hit_rate=cache_hit_rate,
                override_rate=override_rate,
                unpriced_rate=unpriced_rate,
                unpriced_model=unpriced_model,
                coarse_timestamp_rate=coarse_timestamp_rate,
                tiny_cost_rate=tiny_cost_rate,
            ),
            format=wire_format,  # type: ignore[arg-type]  # click.Choice guarantees it
            save_interval=save_interval,
            down_seconds=down_seconds,
            faults=faults,
            flood=flood,
            ledger_path=ledger_path,
            start_uptime=start_uptime,
            history_cost=history_cost,
            history_calls=history_calls,
        )
        if not realistic:
            settings = classic(settings)
        chosen: dict[str, Any] = {
            "spaced": spaced,
            "race_rate": race_rate,
            "late_event_rate": late_event_rate,
            "save_hold": save_hold,
            "negative_zero": negative_zero,
            "split_chunks": split_chunks,
        }
        traffic: dict[str, Any] = {
            "identical_rate": identical_rate,
            "orphan_override_rate": orphan_override_rate,
            "failed_rate": failed_rate,
        }
        settings = replace(
            settings,
            traffic=replace(
                settings.traffic, **{k: v for k, v in traffic.items() if v is not None}
            ),
            **{k: v for k, v in chosen.items() if v is not None},
        )
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    if not quiet and not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s simulate: %(message)s"
        )

    def announce(sim: Simulator) -> None:
        mode = "flood" if flood else f"{rate:g} req/s"
        mode += ", realistic" if realistic else ", not realistic"
        click.echo(
            f"cco-monitor simulate: listening on {sim.url} -- stream {sim.stream_url} "
            f"(format {wire_format}, seed {seed}, {mode}), gateway {GATEWAY_PATH}, "
            "ledger /_sim/ledger. Ctrl+C to stop."
        )

    try:
        status = run(settings, on_ready=announce, duration=duration)
    except StartupError as exc:
        click.echo(f"cco-monitor simulate: {exc}", err=True)
        sys.exit(1)
    sys.exit(status)
