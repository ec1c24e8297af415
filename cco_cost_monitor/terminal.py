"""The terminal commands: ``status``, ``watch``, ``statusline`` and ``report``.

:func:`commands` is picked up by :mod:`cco_cost_monitor.cli`. Heavy imports (rich, the
settings, the store) happen inside the commands, so that attaching them costs nothing and
``statusline`` (run on every shell prompt) only needs :mod:`cco_cost_monitor.client`.

Exit statuses: ``status`` 0 running / 3 not running (LSB); ``watch`` and ``statusline`` 1 when
the daemon does not answer; ``report`` 1 when there is no database to read.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cco_cost_monitor.cli import _load, client_options, location_options
from cco_cost_monitor.errors import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK
from cco_cost_monitor.moments import FORMS, parse_moment

if TYPE_CHECKING:
    from rich.console import Console

    from cco_cost_monitor.client import DaemonClient
    from cco_cost_monitor.render import WatchFrame

__all__ = ["report_rows"]


def daemon_url(loaded: Any) -> str:
    """Where the daemon answers: an explicit host/port (flag or env) wins, then the URL the
    running daemon announced in its state dir, then the configured one."""
    from cco_cost_monitor.client import running_url  # noqa: PLC0415

    settings = loaded.settings
    if {loaded.origins.get("health_host"), loaded.origins.get("health_port")} & {"flag", "env"}:
        return str(settings.health_url)
    return running_url(settings.state_dir) or str(settings.health_url)


def _client(loaded: Any, timeout: float) -> DaemonClient:
    from cco_cost_monitor.client import DaemonClient  # noqa: PLC0415

    settings = loaded.settings
    token = settings.health_token.get_secret_value() if settings.health_token else None
    return DaemonClient(daemon_url(loaded), token, timeout=timeout)


# Width of the output written to a file or a pipe: rich's default of 80 columns cut the
# tables' cells ("…"); the tables themselves stay as narrow as their content.
PIPE_WIDTH = 200


def _console() -> Console:
    """A rich console; not cut to 80 columns when stdout is a file or a pipe.

    ``COLUMNS`` still wins when set.
    """
    from rich.console import Console  # noqa: PLC0415

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPE_WIDTH)


# -- status ------------------------------------------------------------------------------


@click.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print {running, pid, health, summary}.")
@click.option(
    "--timeout",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds to wait for the daemon's HTTP server.",
)
def status(as_json: bool, timeout: float, **options: Any) -> None:
    """Whether the monitor runs, its connection, spend, burn rate and budgets.

    Exit status 0 when it runs, 3 when it does not.
    """
    from cco_cost_monitor.client import Unreachable  # noqa: PLC0415
    from cco_cost_monitor.pidlock import running_pid  # noqa: PLC0415

    loaded, _ = _load(options, lenient=True)
    settings = loaded.settings
    pid = running_pid(settings.pid_path)
    health: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    if pid is not None:
        client = _client(loaded, timeout)
        try:
            health = client.health()
            summary = client.summary()
        except Unreachable as exc:
            error = exc.reason
    if as_json:
        import json  # noqa: PLC0415

        document = {
            "running": pid is not None,
            "pid": pid,
            "health_url": daemon_url(loaded),
            "health": health,
            "summary": summary,
            "error": error,
        }
        click.echo(json.dumps(document, indent=2))
    else:
        from cco_cost_monitor.render import status_view  # noqa: PLC0415

        console = _console()
        console.print(
            status_view(
                running=pid is not None,
                pid=pid,
                url=daemon_url(loaded),
                health=health,
                summary=summary,
                error=error,
                now=datetime.now(UTC),
            )
        )
        if pid is None:
            console.print(
                f"state dir: {settings.state_dir}   (start it: cco-monitor start)",
                style="dim",
                highlight=False,
            )
        elif health is None:
            console.print(
                f"the process holds the PID lock but {daemon_url(loaded)} does not answer: "
                "it may be starting, stuck, or listening elsewhere (see its log: "
                f"{settings.log_path})",
                style="yellow",
                highlight=False,
            )
    sys.exit(EXIT_OK if pid is not None else EXIT_NOT_RUNNING)


# -- statusline --------------------------------------------------------------------------


@click.command()
@click.option("--health-host", help="Address of the HTTP server (default 127.0.0.1).")
@click.option("--health-port", type=int, help="Port of the HTTP server (default 8081).")
@click.option("--health-token", help="Bearer token of the HTTP server.")
@click.option("--state-dir", help="State directory (to find config.toml).")
@click.option("--config", help="Config file.")
@click.option(
    "--timeout", type=float, default=0.5, show_default=True, help="Seconds to wait for the daemon."
)
def statusline(
    health_host: str | None,
    health_port: int | None,
    health_token: str | None,
    state_dir: str | None,
    config: str | None,
    timeout: float,
) -> None:
    """One short line for a shell prompt or Claude Code's statusLine.

    Prints today's spend, the burn rate and the tightest budget, or "cco: offline"
    (exit status 1) when the daemon does not answer. Reads only the health host, port and
    token (flag > CCO_MONITOR_HEALTH_* env > config file > default).
    """
    from cco_cost_monitor.client import OFFLINE, resolve_endpoint, statusline_text  # noqa: PLC0415

    endpoint = resolve_endpoint(
        host=health_host, port=health_port, token=health_token, config=config, state_dir=state_dir
    )
    line = statusline_text(endpoint, timeout)
    click.echo(line if line is not None else OFFLINE)
    sys.exit(EXIT_OK if line is not None else EXIT_FAILURE)


# -- watch -------------------------------------------------------------------------------


@contextlib.contextmanager
def _cbreak() -> Iterator[bool]:
    """Put a terminal stdin in cbreak mode (keys arrive one by one, Ctrl+C still works)."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield False
        return
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(seconds: float, keys: bool) -> bool:
    """Sleep up to ``seconds``; True as soon as ``q`` (or ``Q``) is pressed."""
    if not keys:
        time.sleep(seconds)
        return False
    import select  # noqa: PLC0415

    deadline = time.monotonic() + seconds
    fd = sys.stdin.fileno()
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        data = os.read(fd, 64)
        if not data:  # stdin closed: fall back to sleeping
            time.sleep(max(0.0, deadline - time.monotonic()))
            break
        if b"q" in data.lower():
            return True
    return False


def _fetch(client: DaemonClient, frame: WatchFrame) -> None:
    """Refresh ``frame`` from the daemon; on failure keep the old data and note the error."""
    from cco_cost_monitor.client import Unreachable  # noqa: PLC0415

    frame.now = datetime.now(UTC)
    try:
        health = client.health()
        summary = client.summary()
        timeseries = client.timeseries("minute", "60m")
        events = client.events(20)
    except Unreachable as exc:
        frame.error = exc.reason
        return
    frame.health, frame.summary = health, summary
    frame.timeseries, frame.events = timeseries, events
    frame.error, frame.last_ok = None, frame.now


@click.command()
@client_options
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--wait", is_flag=True, help="Start even if the daemon does not answer yet (and wait for it)."
)
@click.option("--once", is_flag=True, help="Print one frame and exit (no full screen).")
def watch(interval: float, wait: bool, once: bool, **options: Any) -> None:
    """Live full-screen view: spend, tiers, cost per minute, projections, budgets, events.

    Press q (or Ctrl+C) to quit. Keeps running, and says so, while the daemon is away.
    """
    from rich.live import Live  # noqa: PLC0415

    from cco_cost_monitor.render import WatchFrame, watch_document, watch_view  # noqa: PLC0415

    loaded, _ = _load(options, lenient=True)
    client = _client(loaded, timeout=max(0.2, min(interval, 2.0)))
    frame = WatchFrame(url=daemon_url(loaded), now=datetime.now(UTC))
    _fetch(client, frame)
    if frame.error is not None and not wait:
        click.echo(
            f"cco-monitor: the daemon does not answer at {daemon_url(loaded)} "
            f"({frame.error}); start it with `cco-monitor start`, or use --wait",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    console = _console()
    if once:
        if console.is_terminal:
            console.print(watch_view(frame), height=console.height)
        else:
            console.print(watch_document(frame))
        return
    import signal  # noqa: PLC0415

    def _quit(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # leave Live and cbreak mode through their cleanup

    signal.signal(signal.SIGTERM, _quit)
    signal.signal(signal.SIGHUP, _quit)
    try:
        with (
            _cbreak() as keys,
            Live(
                watch_view(frame),
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stderr=False,
            ) as live,
        ):
            while True:
                if _wait_for_quit(interval, keys):
                    break
                _fetch(client, frame)
                live.update(watch_view(frame), refresh=True)
    except KeyboardInterrupt:
        pass
    sys.exit(EXIT_OK)


# -- report ------------------------------------------------------------------------------

GROUPS = ("day", "hour", "tier", "model")
FORMATS = ("table", "json", "csv")
_FIELDS = ("cost_usd", "requests", "tokens", "cache_hits", "events")


def _moment(value: str, now: datetime, zone: tzinfo, option: str) -> datetime:
    try:
        return parse_moment(value, now, zone)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use {FORMS}", param_hint=option) from None


def report_rows(rows: Sequence[Any], by: str) -> list[dict[str, Any]]:
    """Sum store aggregate rows (``AggregateRow``) by day, hour, tier or model."""
    grouped: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row.label if by in ("day", "hour") else getattr(row, by)
        entry = grouped.setdefault(key, {by: key, **dict.fromkeys(_FIELDS, 0)})
        for name in _FIELDS:
            entry[name] += getattr(row, name)
    result = list(grouped.values())
    if by in ("tier", "model"):
        result.sort(key=lambda item: (-item["cost_usd"], item[by]))
    return result


def _totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {name: sum(row[name] for row in rows) for name in _FIELDS}


@click.command()
@location_options
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help=f"Start: {FORMS}.",
)
@click.option("--until", default="now", show_default=True, help="End (exclusive), same forms.")
@click.option("--by", "by", type=click.Choice(GROUPS), default="day", show_default=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def report(since: str, until: str, by: str, fmt: str, **options: Any) -> None:
    """Spend history from the database (read-only; works whether or not the daemon runs).

    Times are bucketed in the configured time zone; --since is rounded down to the start of
    its day (--by day) or hour (otherwise).
    """
    from cco_cost_monitor.errors import StoreError  # noqa: PLC0415
    from cco_cost_monitor.store import Store  # noqa: PLC0415

    loaded, _ = _load(options, lenient=True)
    settings = loaded.settings
    zone = settings.zone
    now = datetime.now(UTC)
    start = _moment(since, now, zone, "--since").astimezone(zone)
    end = _moment(until, now, zone, "--until")
    start = start.replace(minute=0, second=0, microsecond=0)
    if by == "day":
        start = start.replace(hour=0)
    if end <= start:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    path: Path = settings.db_path
    if not path.exists():
        click.echo(
            f"cco-monitor: no database at {path} (has the monitor run with this --state-dir?)",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    try:
        with Store.open(path, readonly=True, zone=zone) as store:
            raw = store.daily_rows(start, end) if by == "day" else store.hourly_rows(start, end)
    except StoreError as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    from cco_cost_monitor.rounding import tidy  # noqa: PLC0415

    rows = tidy(report_rows(raw, by))
    totals = tidy(_totals(rows))
    if fmt == "json":
        import json  # noqa: PLC0415

        click.echo(
            json.dumps(
                {
                    "since": start.isoformat(),
                    "until": end.isoformat(),
                    "by": by,
                    "currency": "USD",
                    "rows": rows,
                    "totals": totals,
                },
                indent=2,
            )
        )
    elif fmt == "csv":
        import csv  # noqa: PLC0415

        writer = csv.DictWriter(sys.stdout, fieldnames=[by, *_FIELDS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_report_table(rows, totals, by, start, end)


def _print_report_table(
    rows: Sequence[Mapping[str, Any]],
    totals: Mapping[str, Any],
    by: str,
    start: datetime,
    end: datetime,
) -> None:
    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from cco_cost_monitor.render import count, money  # noqa: PLC0415

    title = (
        f"Spend by {by}, {start.isoformat(timespec='minutes')} → "
        f"{end.astimezone(start.tzinfo).isoformat(timespec='minutes')}"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_footer=bool(rows))
    table.add_column(by, footer="total")
    for name, label in (
        ("cost_usd", "cost"),
        ("requests", "requests"),
        ("tokens", "tokens"),
        ("cache_hits", "cache hits"),
        ("events", "events"),
    ):
        footer = money(totals[name]) if name == "cost_usd" else count(totals[name])
        table.add_column(label, justify="right", footer=footer)
    for row in rows:
        table.add_row(
            str(row[by]),
            money(row["cost_usd"]),
            count(row["requests"]),
            count(row["tokens"]),
            count(row["cache_hits"]),
            count(row["events"]),
        )
    if not rows:
        table.add_row("(no spend recorded in this range)", "", "", "", "", "")
    _console().print(table)
